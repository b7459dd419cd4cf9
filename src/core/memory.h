// Refusing absurd sizes before allocating them: a clear error with the memory a shape would need, instead
// of std::bad_alloc or an overcommitted machine swapping itself to death.
#pragma once
#include <cstdint>
#include <string_view>

namespace lasp {

// This machine's physical memory in bytes (sysconf), or 0 if unknown.
uint64_t physical_memory_bytes();
// The memory a new process may still take without swapping: MemAvailable of /proc/meminfo, else the
// physical memory.
uint64_t available_memory_bytes();
// Peak resident memory of this process so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

// Throws lasp::Error "<what> needs <bytes>, more than this machine's <memory>" when bytes (a double, so that
// no size overflows on its way here) exceed the physical memory.
void check_fits_in_memory(double bytes, std::string_view what);

}  // namespace lasp
