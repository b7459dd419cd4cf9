// Scratch memory handed to a kernel by its caller (kernels never allocate). Each kernel that needs one
// has a `*_workspace_floats(...)` function that says how many floats to pass for a given shape and
// thread count; the kernel checks the size it receives.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace lasp {

// v as a buffer of n floats, zeroed when its size changes (kept as it is otherwise): state carried between calls.
inline std::vector<float>& sized(std::vector<float>& v, size_t n) {
  if (v.size() != n) v.assign(n, 0.f);
  return v;
}

struct Workspace {
  float* data = nullptr;
  size_t floats = 0;
};

// Hands out pieces of one buffer in whole cache lines (16 floats): a first pass with base == null counts
// what a layout needs, a second with the buffer assigns the same pieces. Saturates instead of wrapping, so
// that an absurd count reads as "too big" to the caller's memory check.
struct Carver {
  float* base = nullptr;
  size_t used = 0;
  float* take(size_t n) {
    float* part = base ? base + used : nullptr;
    const size_t lines = (n + 15) / 16 * 16;
    used = lines > SIZE_MAX / 8 - used ? SIZE_MAX / 8 : used + lines;
    return part;
  }
};

// Owns a workspace buffer (for tests, benchmarks and callers without an arena).
struct WorkspaceBuffer {
  std::vector<float> storage;
  explicit WorkspaceBuffer(size_t floats) : storage(floats) {}
  Workspace view() { return {storage.data(), storage.size()}; }
};

}  // namespace lasp
