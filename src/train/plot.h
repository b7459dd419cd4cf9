// `lasp plot`: loss curves of --metrics files as a PNG, drawn by gnuplot. One file: its training loss per step
// and its validation loss where measured. Several: one curve per file, its validation loss (its training loss
// if it has none), named by the file's name (runs compared side by side); second_group > 0: the files from that one
// on are a second group, drawn with open points in the first group's colours.
#pragma once
#include <string>
#include <vector>

namespace lasp {

void plot_metrics(const std::vector<std::string>& metrics_paths, const std::string& png_path,
                  std::string title = "lasp training", int second_group = 0);

// Runs gnuplot on a script that writes png_path; throws lasp::Error with gnuplot's own message when gnuplot is
// missing, fails, or leaves no PNG there.
void gnuplot_png(const std::string& script, const std::string& png_path);

}  // namespace lasp
