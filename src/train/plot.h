// `lasp plot`: the loss curve of a --metrics file (training loss per step, validation loss where
// measured) as a PNG, drawn by gnuplot.
#pragma once
#include <string>

namespace lasp {

void plot_metrics(const std::string& metrics_path, const std::string& png_path);

}  // namespace lasp
