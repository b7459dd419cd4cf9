#include "core/file.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/check.h"

namespace lasp {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes fd on scope exit unless released.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string parent_folder(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::string read_file(const std::string& path) {
  Fd f;
  do f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  while (f.fd < 0 && errno == EINTR);
  if (f.fd < 0) throw Error(fmt::format("cannot open '{}' for reading: {}", path, errno_text(errno)));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw Error(fmt::format("cannot stat '{}': {}", path, errno_text(errno)));
  if (S_ISDIR(st.st_mode)) throw Error(fmt::format("cannot read '{}': {}", path, errno_text(EISDIR)));
  std::string bytes;
  if (S_ISREG(st.st_mode) && st.st_size > 0) bytes.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt::format("cannot read '{}': {}", path, errno_text(errno)));
    }
    if (n == 0) break;
    bytes.append(buf, size_t(n));
  }
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, long(::getpid()));
  auto fail_with = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write '{}' ({} of '{}' failed): {}", path, what, tmp, errno_text(err)));
  };
  {
    Fd f;
    do f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    while (f.fd < 0 && errno == EINTR);
    if (f.fd < 0) throw Error(fmt::format("cannot write '{}' (open of '{}' failed): {}", path, tmp, errno_text(errno)));
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(f.fd, bytes.data() + done, bytes.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_with("write", errno);
      }
      done += size_t(n);
    }
    if (::fsync(f.fd) != 0) fail_with("fsync", errno);
    int fd = f.fd;
    f.fd = -1;
    if (::close(fd) != 0) fail_with("close", errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_with("rename", errno);
  // Make the rename itself durable; a failure here does not lose data already renamed, so ignore it.
  int dir = ::open(parent_folder(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void check_can_create(const std::string& path) {
  const std::string probe = fmt::format("{}.probe.{}", path, long(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("cannot write '{}': {}", path, errno_text(errno)));
  ::close(fd);
  ::unlink(probe.c_str());
}

AppendFile::AppendFile(const std::string& path) : path_(path) {
  do fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) throw Error(fmt::format("cannot open '{}' for appending: {}", path, errno_text(errno)));
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(fmt::format("cannot write to '{}': {}", path_, errno_text(n < 0 ? errno : EIO)));
    done += size_t(n);
  }
}

TempDir::TempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "_XXXXXX";
  LASP_CHECK(mkdtemp(templ.data()), "cannot create a temporary folder {}: {}", templ, errno_text(errno));
  path = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

std::vector<std::string> TempDir::entries() const {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(path)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace lasp
