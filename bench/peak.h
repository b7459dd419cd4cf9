// Measures the machine's FP32 FMA peak: independent vector FMAs on registers, no memory traffic.
#pragma once

namespace lasp {

// GFLOP/s of `threads` threads running FMAs at once (best of a few short runs).
double fma_peak_gflops(int threads);

}  // namespace lasp
