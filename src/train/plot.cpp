#include "train/plot.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/file.h"

namespace lasp {

void gnuplot_png(const std::string& script, const std::string& png_path) {
  std::remove(png_path.c_str());  // so that an old picture cannot pass for the new one
  // gnuplot reports errors on stderr, sometimes with exit status 0: keep its words for the error.
  const std::string log = png_path + ".gnuplot." + std::to_string(getpid());
  FILE* gp = popen(("gnuplot > '" + log + "' 2>&1").c_str(), "w");
  LASP_CHECK(gp, "cannot start gnuplot for {} (scripts/setup.sh installs gnuplot-nox)", png_path);
  std::fwrite(script.data(), 1, script.size(), gp);
  const int status = pclose(gp);
  std::string said;
  try {
    said = read_file(log);
  } catch (const Error&) {
  }
  std::remove(log.c_str());
  struct stat st {};
  const bool written = ::stat(png_path.c_str(), &st) == 0 && st.st_size > 0;
  LASP_CHECK(status == 0 && written, "gnuplot could not write {} (exit status {}){}{}", png_path, status,
             said.empty() ? "" : ": ", said.substr(0, 400));
}

void plot_metrics(const std::string& metrics_path, const std::string& png_path) {
  std::ifstream in(metrics_path);
  LASP_CHECK(in.good(), "plot: cannot read {}", metrics_path);
  std::string rows_text, line;
  int rows = 0, line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json r;
    try {
      r = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error("plot: " + metrics_path + " line " + std::to_string(line_no) + " is not JSON: " + e.what());
    }
    LASP_CHECK(r.is_object() && r.contains("step") && r.contains("loss") && r["step"].is_number() &&
                   r["loss"].is_number(),
               "plot: {} line {} has no numbers \"step\" and \"loss\"", metrics_path, line_no);
    rows_text += std::to_string(r["step"].get<double>()) + ' ' + std::to_string(r["loss"].get<double>()) + ' ' +
                 (r.contains("val_loss") && r["val_loss"].is_number() ? std::to_string(r["val_loss"].get<double>())
                                                                       : "NaN") + '\n';
    ++rows;
  }
  LASP_CHECK(rows > 0, "plot: {} holds no steps", metrics_path);
  const std::string data = png_path + ".data." + std::to_string(getpid());
  write_file_atomic(data, rows_text);
  const std::string script = "set terminal png size 900,540\nset output '" + png_path +
                             "'\nset xlabel 'step'\nset ylabel 'cross-entropy (nats per token)'\nset grid\n"
                             "set title 'lasp training'\nset datafile missing 'NaN'\n"
                             "plot '" + data + "' using 1:2 with lines lw 2 title 'training loss', '" + data +
                             "' using 1:3 with linespoints lw 2 pt 7 title 'validation loss'\n";
  try {
    gnuplot_png(script, png_path);
  } catch (...) {
    std::remove(data.c_str());
    throw;
  }
  std::remove(data.c_str());
}

}  // namespace lasp
