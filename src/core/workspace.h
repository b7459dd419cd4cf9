// Scratch memory handed to a kernel by its caller (kernels never allocate). Each kernel that needs one
// has a `*_workspace_floats(...)` function that says how many floats to pass for a given shape and
// thread count; the kernel checks the size it receives.
#pragma once
#include <cstddef>
#include <vector>

namespace lasp {

struct Workspace {
  float* data = nullptr;
  size_t floats = 0;
};

// Owns a workspace buffer (for tests, benchmarks and callers without an arena).
struct WorkspaceBuffer {
  std::vector<float> storage;
  explicit WorkspaceBuffer(size_t floats) : storage(floats) {}
  Workspace view() { return {storage.data(), storage.size()}; }
};

}  // namespace lasp
