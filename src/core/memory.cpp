#include "core/memory.h"

#include <unistd.h>

#include "core/check.h"
#include "core/parse.h"

namespace lasp {

uint64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

void check_fits_in_memory(double bytes, std::string_view what) {
  const uint64_t memory = physical_memory_bytes();
  if (memory > 0 && bytes > double(memory))
    throw Error(fmt::format("{} needs {}, more than this machine's {} of memory", what, human_bytes(bytes),
                            human_bytes(double(memory))));
}

}  // namespace lasp
