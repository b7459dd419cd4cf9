#include "core/memory.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "core/check.h"
#include "core/parse.h"

namespace lasp {

uint64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

uint64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);)
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoull(line.substr(13)) * 1024;  // "...  123 kB"
  return physical_memory_bytes();
}

uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return uint64_t(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

void check_fits_in_memory(double bytes, std::string_view what) {
  const uint64_t memory = physical_memory_bytes();
  if (memory > 0 && bytes > double(memory))
    throw Error(fmt::format("{} needs {}, more than this machine's {} of memory", what, human_bytes(bytes),
                            human_bytes(double(memory))));
}

}  // namespace lasp
