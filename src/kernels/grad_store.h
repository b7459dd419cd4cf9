// How a backward kernel stores an input gradient: `add` (the default, llm.c's convention) adds into the
// buffer, for gradients that several paths sum into; `overwrite` writes it, which spares the caller the
// memory pass that zeroes the buffer first.
#pragma once

namespace lasp {

enum class GradStore { add, overwrite };

// dst += v or dst = v, chosen at compile time inside the kernels' loops.
template <GradStore S>
inline void store_grad(float& dst, float v) {
  if constexpr (S == GradStore::add) dst += v;
  else dst = v;
}

}  // namespace lasp
