// Cross-entropy over a vocabulary of V logits per position, numerically stable (max-subtracted,
// double log-sum-exp). Target -1 means "no target here" (ignored); any other target must be in [0, V).
#pragma once

namespace lasp {

// losses (T), may be null: -log softmax(logits[t])[targets[t]], 0 for ignored positions.
// Returns the SUM of the losses over positions with a target.
double cross_entropy_forward(float* losses, const float* logits, const int* targets, int T, int V);

// Accumulates: dlogits[t] += dloss * (softmax(logits[t]) - onehot(targets[t])) for positions with a target;
// dloss is dL/dloss_t, the same for every position (e.g. 1 / number of targets).
void cross_entropy_backward(float* dlogits, const float* logits, const int* targets, int T, int V, float dloss);

}  // namespace lasp
