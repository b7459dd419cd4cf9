#include "core/folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/file.h"
#include "core/parse.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

std::string parent_of(const std::string& dir) {
  const fs::path parent = fs::path(dir).parent_path();
  return parent.empty() ? "." : parent.string();
}

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof name - 1) != 0 || !*name) return "localhost";
  for (char* c = name; *c; ++c)
    if (*c == '/') *c = '_';
  return name;
}

// NAME.tmp.HOST.PID: the host keeps ranks of a cluster that share a filesystem from judging each other's PIDs.
std::string temporary_name(const std::string& dir) {
  return fmt::format("{}.tmp.{}.{}", dir, host_name(), long(getpid()));
}

// Removes NAME.tmp.HOST.PID folders (and NAME.tmp.PID of earlier lasp versions) left on this host by writes
// whose process is gone: a killed run leaves one, and nothing else would ever remove it.
void remove_stale_temporaries(const FolderKind& kind, const std::string& dir) {
  const std::string prefix = fs::path(dir).filename().string() + ".tmp.", host = host_name();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent_of(dir), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || !entry.is_directory()) continue;
    const std::string rest = name.substr(prefix.size());
    const size_t dot = rest.rfind('.');
    const std::string owner_host = dot == std::string::npos ? host : rest.substr(0, dot);
    const std::string pid_text = dot == std::string::npos ? rest : rest.substr(dot + 1);
    long pid = 0;
    try {
      pid = long(parse_int(pid_text, "pid", 1, INT_MAX));
    } catch (const Error&) {
      continue;  // not one of ours
    }
    if (owner_host != host || pid == long(getpid()) || kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove_all(entry.path(), rm);
    if (!rm) std::fprintf(stderr, "lasp: removed %s, left by an interrupted %s (process %ld is gone)\n",
                          entry.path().c_str(), kind.action.c_str(), pid);
  }
}

// The marker's JSON from its text (none: the folder has no marker file), or null with why it is not one.
nlohmann::json marker_json(const FolderKind& kind, const std::string* text, std::string* why) {
  if (!text) {
    *why = fmt::format("it has no {}, the marker that lasp writes into every {}", kind.marker, kind.what);
    return nullptr;
  }
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  const bool ours = j.is_object() && j.value("format", nlohmann::json()) == kind.format;
  if (!ours) {
    *why = fmt::format("its {} does not say \"format\": \"{}\"", kind.marker, kind.format);
    return nullptr;
  }
  const auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() < 1 ||
      version->get<int64_t>() > kind.version) {
    *why = fmt::format("its {} has format version {}, and this lasp knows versions 1 to {}", kind.marker,
                       version == j.end() ? std::string("none") : version->dump(), kind.version);
    return nullptr;
  }
  return j;
}

// The marker at path (not a link, not a folder), or null with why not.
nlohmann::json marker_at(const FolderKind& kind, const std::string& path, std::string* why) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec))) return marker_json(kind, nullptr, why);
  const std::string text = read_file(path);
  return marker_json(kind, &text, why);
}

}  // namespace

std::string without_trailing_slashes(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

nlohmann::json read_marker(const FolderKind& kind, const std::string& dir) {
  std::string why;
  return marker_at(kind, dir + "/" + kind.marker, &why);
}

nlohmann::json read_marker(const FolderKind& kind, const OpenedFolder& dir) {
  std::string why;
  if (!dir.has(kind.marker)) return marker_json(kind, nullptr, &why);
  const std::string text = dir.read(kind.marker);
  return marker_json(kind, &text, &why);
}

void check_replaceable(const FolderKind& kind, const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (!fs::exists(st)) return;
  LASP_CHECK(fs::is_directory(st), "{} {}: it exists and is not a folder; lasp replaces only a previous {} (or an "
             "empty folder). Choose another path", kind.option, dir, kind.what);
  if (fs::is_empty(dir, ec)) return;
  std::string why;
  const nlohmann::json marker = marker_at(kind, dir + "/" + kind.marker, &why);
  LASP_CHECK(!marker.is_null(), "{} {}: the folder exists and is not a {} ({}). lasp does not replace it: choose "
             "another path, or move it away", kind.option, dir, kind.what, why);
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name == kind.marker) continue;
    const bool regular = fs::is_regular_file(fs::symlink_status(entry.path(), ec));  // not a link, not a folder
    LASP_CHECK(regular && kind.holds(marker, name),
               "{} {}: the folder is a {} but also holds '{}', which lasp did not write there. lasp does not replace "
               "it: move that file away, or choose another path", kind.option, dir, kind.what, name);
  }
}

FolderLock check_folder_target(const FolderKind& kind, const std::string& dir_in) {
  const std::string dir = without_trailing_slashes(dir_in), parent = parent_of(dir);
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (fs::exists(st) && !fs::is_directory(st)) check_replaceable(kind, dir);  // the message for "not a folder"
  LASP_CHECK(fs::is_directory(parent, ec), "{} {}: the folder {} it goes in does not exist", kind.option, dir, parent);
  FolderLock lock(kind, dir);  // first: a second run is refused before it looks at (or removes) anything
  check_replaceable(kind, dir);
  remove_stale_temporaries(kind, dir);
  const std::string tmp = temporary_name(dir);
  fs::remove_all(tmp, ec);
  LASP_CHECK(::mkdir(tmp.c_str(), 0755) == 0, "{} {}: cannot create a folder in {}: {}", kind.option, dir, parent,
             std::strerror(errno));
  ::rmdir(tmp.c_str());
  return lock;
}

// ---- FolderLock ----

FolderLock::FolderLock(const FolderKind& kind, const std::string& dir_in) {
  const std::string dir = without_trailing_slashes(dir_in);
  path_ = dir + ".lock";
  for (int attempt = 0;; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    LASP_CHECK(fd >= 0, "{} {}: cannot create its lock file {}: {}", kind.option, dir, path_, std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char holder[256] = {};
      const ssize_t n = ::pread(fd, holder, sizeof holder - 1, 0);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        std::string who(holder, n > 0 ? size_t(n) : 0);
        while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
        throw Error(fmt::format("{} {}: another lasp run ({}) is writing this {} now: it holds {}. Two runs writing "
                                "one folder would replace each other's work; wait for that run to end, or choose "
                                "another path", kind.option, dir, who.empty() ? "process unknown" : who, kind.what,
                                path_));
      }
      if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {  // a filesystem without locks: go on, and say so
        std::fprintf(stderr, "lasp: warning: %s %s: this filesystem cannot lock %s (%s); nothing keeps a second run "
                     "from writing the same folder\n", kind.option.c_str(), dir.c_str(), path_.c_str(), std::strerror(err));
        ::unlink(path_.c_str());
        return;
      }
      throw Error(fmt::format("{} {}: cannot lock {}: {}", kind.option, dir, path_, std::strerror(err)));
    }
    // A run that was releasing may have removed the file between our open and our lock: ours must be the file
    // at the path now, else another run could lock a new one there too.
    struct stat ours {}, there {};
    if (::fstat(fd, &ours) == 0 && ::stat(path_.c_str(), &there) == 0 && ours.st_dev == there.st_dev &&
        ours.st_ino == there.st_ino) {
      fd_ = fd;
      break;
    }
    ::close(fd);
    LASP_CHECK(attempt < 100, "{} {}: cannot take its lock {}: the file keeps changing", kind.option, dir, path_);
  }
  const std::string who = fmt::format("process {} on {}", long(getpid()), host_name());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, who.data(), who.size(), 0) != ssize_t(who.size())) {
    const std::string why = std::strerror(errno);
    release();
    throw Error(fmt::format("{} {}: cannot write its lock file {}: {}", kind.option, dir, path_, why));
  }
}

void FolderLock::release() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still held: a run waiting on this file sees it replaced and tries again
  ::close(fd_);
  fd_ = -1;
}

FolderLock::~FolderLock() { release(); }

FolderLock::FolderLock(FolderLock&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }

FolderLock& FolderLock::operator=(FolderLock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = other.fd_, path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

// ---- OpenedFolder ----

OpenedFolder::OpenedFolder(const std::string& dir, const std::vector<std::string>& names)
    : dir_(without_trailing_slashes(dir)) {
  for (int attempt = 0;; ++attempt) {
    dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    LASP_CHECK(dir_fd_ >= 0, "{}: cannot open the folder: {}", dir_, std::strerror(errno));
    for (const std::string& name : names) {
      const int fd = ::openat(dir_fd_, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      struct stat st {};
      if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) files_[name] = fd;
      else if (fd >= 0) ::close(fd);
    }
    // Still the folder at the path: no save has swapped it out (and begun removing it) while it was opened.
    struct stat opened {}, there {};
    if (::fstat(dir_fd_, &opened) == 0 && ::stat(dir_.c_str(), &there) == 0 && opened.st_dev == there.st_dev &&
        opened.st_ino == there.st_ino)
      return;
    for (const auto& [name, fd] : files_) ::close(fd);
    files_.clear();
    ::close(dir_fd_);
    dir_fd_ = -1;
    LASP_CHECK(attempt < 100, "{}: the folder keeps being replaced while it is opened", dir_);
  }
}

OpenedFolder::~OpenedFolder() {
  for (const auto& [name, fd] : files_) ::close(fd);
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

std::string OpenedFolder::fd_path(const std::string& name) const {
  const auto it = files_.find(name);
  LASP_CHECK(it != files_.end(), "{}: no file {} there", dir_, name);
  return "/proc/self/fd/" + std::to_string(it->second);
}

std::string OpenedFolder::read(const std::string& name) const {
  const std::string path = fd_path(name);
  return named([&] { return read_file(path); });
}

std::string OpenedFolder::rename_fd_paths(std::string message) const {
  for (const auto& [name, fd] : files_) {
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    for (size_t at = message.find(path); at != std::string::npos; at = message.find(path, at)) {
      const size_t end = at + path.size();
      if (end < message.size() && std::isdigit(static_cast<unsigned char>(message[end]))) {  // another descriptor
        at = end;
        continue;
      }
      message.replace(at, path.size(), shown(name));
      at += shown(name).size();
    }
  }
  return message;
}

void write_folder(const FolderKind& kind, const std::string& dir_in,
                  const std::function<nlohmann::json(const std::string& tmp)>& fill) {
  const std::string dir = without_trailing_slashes(dir_in);
  check_replaceable(kind, dir);
  remove_stale_temporaries(kind, dir);
  const std::string tmp = temporary_name(dir);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  LASP_CHECK(::mkdir(tmp.c_str(), 0755) == 0, "{} {}: cannot create the folder {}: {}", kind.option, dir, tmp,
             std::strerror(errno));
  try {
    nlohmann::json marker = {{"format", kind.format}, {"version", kind.version}};
    marker.update(fill(tmp));
    write_file_atomic(tmp + "/" + kind.marker, marker.dump(2) + "\n");
    check_replaceable(kind, dir);  // again: the folder may have changed since the work began
    // One atomic exchange (the old folder then sits at tmp and is removed), or one rename when there was none.
    if (fs::exists(fs::symlink_status(dir))) {
      LASP_CHECK(renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0,
                 "cannot swap the new {} {} into {}: {}", kind.what, tmp, dir, std::strerror(errno));
    } else {
      LASP_CHECK(::rename(tmp.c_str(), dir.c_str()) == 0, "cannot rename {} to {}: {}", tmp, dir, std::strerror(errno));
    }
  } catch (...) {
    fs::remove_all(tmp, ec);  // the new, incomplete folder; dir is untouched
    throw;
  }
  fs::remove_all(tmp, ec);  // the old folder, after the exchange
}

}  // namespace lasp
