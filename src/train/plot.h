// `lasp plot`: the loss curve of a --metrics file (training loss per step, validation loss where
// measured) as a PNG, drawn by gnuplot.
#pragma once
#include <string>

namespace lasp {

void plot_metrics(const std::string& metrics_path, const std::string& png_path);

// Runs gnuplot on a script that writes png_path; throws lasp::Error with gnuplot's own message when gnuplot is
// missing, fails, or leaves no PNG there.
void gnuplot_png(const std::string& script, const std::string& png_path);

}  // namespace lasp
