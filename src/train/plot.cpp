#include "train/plot.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

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

namespace {

// The rows of a --metrics file as gnuplot data: "step loss val_loss" (NaN where no validation ran).
struct MetricRows {
  std::string text;
  int rows = 0, val_rows = 0;
};

MetricRows read_metric_rows(const std::string& metrics_path) {
  std::ifstream in(metrics_path);
  LASP_CHECK(in.good(), "plot: cannot read {}", metrics_path);
  MetricRows m;
  std::string line;
  int line_no = 0;
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
    const bool val = r.contains("val_loss") && r["val_loss"].is_number();
    m.text += std::to_string(r["step"].get<double>()) + ' ' + std::to_string(r["loss"].get<double>()) + ' ' +
              (val ? std::to_string(r["val_loss"].get<double>()) : "NaN") + '\n';
    ++m.rows;
    m.val_rows += val;
  }
  LASP_CHECK(m.rows > 0, "plot: {} holds no steps", metrics_path);
  return m;
}

// A run's name in the legend: its file name without folder and extension (underscores would be subscripts).
std::string run_label(const std::string& path) {
  std::string name = path.substr(path.rfind('/') + 1);
  name = name.substr(0, name.rfind('.'));
  for (char& c : name)
    if (c == '_' || c == '\'') c = ' ';
  return name;
}

}  // namespace

void plot_metrics(const std::vector<std::string>& metrics_paths, const std::string& png_path, std::string title,
                  int second_group) {
  for (size_t at = title.find('\''); at != std::string::npos; at = title.find('\'', at + 2))
    title.insert(at, 1, '\'');  // gnuplot's quote inside a quoted string
  LASP_CHECK(!metrics_paths.empty(), "plot: expected one or more metrics files, found none");
  const bool one = metrics_paths.size() == 1;
  std::vector<std::string> data_files;
  std::string plots;
  try {
    for (size_t i = 0; i < metrics_paths.size(); ++i) {
      const MetricRows m = read_metric_rows(metrics_paths[i]);
      const std::string data = png_path + ".data" + std::to_string(i) + "." + std::to_string(getpid());
      write_file_atomic(data, m.text);
      data_files.push_back(data);
      if (!plots.empty()) plots += ", ";
      if (one) {  // training and validation loss of one run
        plots += "'" + data + "' using 1:2 with lines lw 2 title 'training loss', '" + data +
                 "' using 1:3 with linespoints lw 2 pt 7 title 'validation loss'";
      } else {  // one curve per run: its validation loss (its training loss where it has none); the runs from
                // second_group on dashed with open points (the png terminal draws every line solid), their
                // colours starting again: a second group beside the first
        const bool val = m.val_rows > 0, second = second_group > 0 && int(i) >= second_group;
        const int colour = 1 + (second ? int(i) - second_group : int(i)) % 8;
        plots += "'" + data + "' using 1:" + (val ? "3" : "2") + " with " +
                 (val ? (second ? "linespoints pt 6 ps 1.5" : "linespoints pt 7") : "lines") + " lw 2 lc " +
                 std::to_string(colour) + " dt " + (second ? "2" : "1") + " title '" + run_label(metrics_paths[i]) +
                 (val ? "" : " (training)") + "'";
      }
    }
    const std::string script = "set terminal png size " + std::string(one ? "900,540" : "1100,660") +
                               "\nset output '" + png_path +
                               "'\nset xlabel 'step'\nset ylabel '" +
                               (one ? "cross-entropy" : "validation cross-entropy") +
                               " (nats per token)'\nset grid\nset key outside right\nset title '" + title +
                               "'\nset datafile missing 'NaN'\nplot " + plots + "\n";
    gnuplot_png(script, png_path);
  } catch (...) {
    for (const auto& d : data_files) std::remove(d.c_str());
    throw;
  }
  for (const auto& d : data_files) std::remove(d.c_str());
}

}  // namespace lasp
