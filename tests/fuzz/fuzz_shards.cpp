// open_tokens on arbitrary bytes ("shards" and "auto"; text too), then every token read; with the separator
// "LASPSHRD" in the input its parts become several shard files opened by one glob pattern.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "fuzz_util.h"
#include "train/data.h"

namespace {

// Reads every token in uneven chunks; each must be below vocab_size(), and a read past the end must throw.
void read_all(const lasp::TokenSource& src) {
  const int64_t n = src.size();
  if (n <= 0) std::abort();
  const int vocab = src.vocab_size();
  std::vector<int> buf(1024);  // chunks are at most 1003
  for (int64_t begin = 0, chunk = 1; begin < n; begin += chunk, chunk = chunk % 997 + 7) {
    chunk = std::min<int64_t>(chunk, n - begin);
    src.read(begin, chunk, buf.data());
    for (int64_t i = 0; i < chunk; ++i)
      if (buf[i] < 0 || buf[i] >= vocab) std::abort();
  }
  try {
    src.read(n, 1, buf.data());
    std::abort();
  } catch (const lasp::Error&) {
  }
}

void try_open(const std::string& path, const char* format) {
  try {
    read_all(*lasp::open_tokens(path, format));
  } catch (const lasp::Error&) {
  }
}

// A folder in memory (/dev/shm) for the multi-shard case, removed at exit.
char g_dir[] = "/dev/shm/lasp-fuzz-XXXXXX";

void remove_dir() {
  for (int k = 0; k < 4; ++k) ::unlink((std::string(g_dir) + "/s" + std::to_string(k)).c_str());
  ::rmdir(g_dir);
}

std::string shard_dir() {
  static const bool made = ::mkdtemp(g_dir) && std::atexit(remove_dir) == 0;
  if (!made) std::abort();
  return g_dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  for (size_t from = 0;;) {
    size_t at = bytes.find("LASPSHRD", from);
    parts.push_back(bytes.substr(from, at == std::string::npos ? std::string::npos : at - from));
    if (at == std::string::npos || parts.size() == 4) break;
    from = at + 8;
  }
  if (parts.size() == 1) {
    static lasp_fuzz::MemFile file;
    file.write(data, size);
    try_open(file.path(), "shards");
    try_open(file.path(), "auto");
    return 0;
  }
  const std::string dir = shard_dir();
  for (int k = 0; k < 4; ++k) {
    const std::string path = dir + "/s" + std::to_string(k);
    ::unlink(path.c_str());
    if (size_t(k) >= parts.size()) continue;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, parts[k].data(), parts[k].size()) != ssize_t(parts[k].size())) std::abort();
    ::close(fd);
  }
  try_open(dir + "/s*", "shards");
  try_open(dir + "/s*", "auto");
  return 0;
}
