#include "train/plot.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"

namespace lasp {

void plot_metrics(const std::string& metrics_path, const std::string& png_path) {
  std::ifstream in(metrics_path);
  LASP_CHECK(in.good(), "plot: cannot read {}", metrics_path);
  const std::string data = png_path + ".data." + std::to_string(getpid());
  std::ofstream out(data);
  std::string line;
  int rows = 0, line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json r;
    try {
      r = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      std::remove(data.c_str());
      throw Error("plot: " + metrics_path + " line " + std::to_string(line_no) + " is not JSON: " + e.what());
    }
    LASP_CHECK(r.contains("step") && r.contains("loss"), "plot: {} line {} has no \"step\" and \"loss\"", metrics_path,
               line_no);
    out << r["step"].get<double>() << ' ' << r["loss"].get<double>() << ' '
        << (r.contains("val_loss") ? std::to_string(r["val_loss"].get<double>()) : "NaN") << '\n';
    ++rows;
  }
  out.close();
  LASP_CHECK(rows > 0, "plot: {} holds no steps", metrics_path);
  const std::string script = "set terminal png size 900,540\nset output '" + png_path +
                             "'\nset xlabel 'step'\nset ylabel 'cross-entropy (nats per token)'\nset grid\n"
                             "set title 'lasp training'\nset datafile missing 'NaN'\n"
                             "plot '" + data + "' using 1:2 with lines lw 2 title 'training loss', '" + data +
                             "' using 1:3 with linespoints lw 2 pt 7 title 'validation loss'\n";
  FILE* gp = popen("gnuplot 2>&1", "w");
  LASP_CHECK(gp, "plot: cannot start gnuplot (scripts/setup.sh installs gnuplot-nox)");
  std::fwrite(script.data(), 1, script.size(), gp);
  const int status = pclose(gp);
  std::remove(data.c_str());
  LASP_CHECK(status == 0, "plot: gnuplot failed (status {}); is gnuplot-nox installed?", status);
}

}  // namespace lasp
