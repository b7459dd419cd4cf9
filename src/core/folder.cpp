#include "core/folder.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

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

nlohmann::json marker_json(const FolderKind& kind, const std::string& path, std::string* why) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec))) {
    *why = fmt::format("it has no {}, the marker that lasp writes into every {}", kind.marker, kind.what);
    return nullptr;
  }
  nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
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

}  // namespace

std::string without_trailing_slashes(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

nlohmann::json read_marker(const FolderKind& kind, const std::string& dir) {
  std::string why;
  return marker_json(kind, dir + "/" + kind.marker, &why);
}

void check_replaceable(const FolderKind& kind, const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (!fs::exists(st)) return;
  LASP_CHECK(fs::is_directory(st), "{} {}: it exists and is not a folder; lasp replaces only a previous {} (or an "
             "empty folder). Choose another path", kind.option, dir, kind.what);
  if (fs::is_empty(dir, ec)) return;
  std::string why;
  const nlohmann::json marker = marker_json(kind, dir + "/" + kind.marker, &why);
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

void check_folder_target(const FolderKind& kind, const std::string& dir_in) {
  const std::string dir = without_trailing_slashes(dir_in), parent = parent_of(dir);
  check_replaceable(kind, dir);
  std::error_code ec;
  LASP_CHECK(fs::is_directory(parent, ec), "{} {}: the folder {} it goes in does not exist", kind.option, dir, parent);
  remove_stale_temporaries(kind, dir);
  const std::string tmp = temporary_name(dir);
  fs::remove_all(tmp, ec);
  LASP_CHECK(::mkdir(tmp.c_str(), 0755) == 0, "{} {}: cannot create a folder in {}: {}", kind.option, dir, parent,
             std::strerror(errno));
  ::rmdir(tmp.c_str());
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
