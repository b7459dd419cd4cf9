// Folders that lasp writes whole: checkpoints (--save) and token data (tokenize --out). Each is built at
// NAME.tmp.HOST.PID beside its place and swapped in by one atomic exchange, so that the place holds the old
// folder or the complete new one at every instant, never a mix, never an empty one after a failed run. A
// folder is replaced only when it is empty or when a marker file that only lasp writes (its kind and format
// version, written last) says it is lasp's own of that kind, and it holds nothing its kind does not: any
// other folder is the user's, and an error says so before any work is done.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/check.h"

namespace lasp {

class OpenedFolder;

struct FolderKind {
  std::string option;  // the option that names such a folder, for messages: "--save", "tokenize: --out"
  std::string what;    // its kind, for messages: "lasp checkpoint", "lasp tokenize output"
  std::string marker;  // the marker file's name
  std::string format;  // the marker's "format": "lasp checkpoint", "lasp tokens"
  std::string action;  // what writes it, for messages: "save", "tokenize"
  int version = 1;     // the newest format version; a marker of a newer one is not replaced
  // The files a folder of this kind may hold besides its marker, given the marker's JSON.
  std::function<bool(const nlohmann::json& marker, const std::string& name)> holds;
};

// "ckpt/" and "ckpt" name the same folder; the temporary one sits beside it, not inside.
std::string without_trailing_slashes(std::string dir);

// Throws lasp::Error, naming the folder and what is in the way, unless dir is absent, an empty folder, or a
// folder of this kind (its marker, and nothing else than what its kind holds).
void check_replaceable(const FolderKind& kind, const std::string& dir);

// The marker's JSON if dir holds a valid one of this kind, else a null JSON value.
nlohmann::json read_marker(const FolderKind& kind, const std::string& dir);
nlohmann::json read_marker(const FolderKind& kind, const OpenedFolder& dir);

// One run at a time writes a folder: an exclusive lock (flock) on NAME.lock beside it, which holds the holder's
// PID and host. A second run is refused with a message naming the folder and the holder. The lock goes with
// the object (the file is removed; a killed run's stale file is simply taken over, flock being released by
// the kernel).
class FolderLock {
 public:
  FolderLock() = default;
  FolderLock(const FolderKind& kind, const std::string& dir);  // throws lasp::Error when another run holds it
  ~FolderLock();
  FolderLock(FolderLock&& other) noexcept;
  FolderLock& operator=(FolderLock&& other) noexcept;
  bool held() const { return fd_ >= 0; }

 private:
  void release();
  int fd_ = -1;
  std::string path_;
};

// Before long work: takes dir's lock (held by the object returned, for the whole run), checks that dir is
// replaceable, the folder it goes in exists, and a folder can be created there. Removes the temporary folders
// of earlier writes on this host whose process is gone (a killed run leaves one).
[[nodiscard]] FolderLock check_folder_target(const FolderKind& kind, const std::string& dir);

// A folder read as one: the folder and the files it holds of the given names are opened at once (the folder's
// path checked to still lead to it afterwards, else opened again), and every read goes through those
// descriptors. A write that swaps a new folder in at the path meanwhile (write_folder, from another run)
// cannot mix two folders: what is read is the folder as it was when opened, whole.
class OpenedFolder {
 public:
  // Throws lasp::Error naming dir when it is not a folder that can be read.
  OpenedFolder(const std::string& dir, const std::vector<std::string>& names);
  ~OpenedFolder();
  OpenedFolder(const OpenedFolder&) = delete;
  OpenedFolder& operator=(const OpenedFolder&) = delete;

  const std::string& path() const { return dir_; }  // as given, for messages
  std::string shown(const std::string& name) const { return dir_ + "/" + name; }
  bool has(const std::string& name) const { return files_.count(name) != 0; }
  std::string read(const std::string& name) const;  // the file's bytes; throws naming dir/name when it is absent
  // A path that leads to the opened file (/proc/self/fd/N), for readers that take a path; throws when absent.
  std::string fd_path(const std::string& name) const;
  // Runs f; a lasp::Error it throws names dir/name where it said fd_path(name).
  template <class F>
  auto named(F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      throw Error(rename_fd_paths(e.what()), e.where);
    }
  }

 private:
  std::string rename_fd_paths(std::string message) const;
  std::string dir_;
  int dir_fd_ = -1;
  std::map<std::string, int> files_;  // name -> descriptor
};

// Writes dir whole: creates NAME.tmp.HOST.PID beside it, lets fill write its files there (fill returns the
// marker's own fields, merged into {"format": format, "version": version}), writes the marker last, checks
// that dir is still replaceable and swaps the new folder in; the old one is then removed. On failure (fill's
// exceptions included) the temporary folder is removed, dir is untouched, and the error propagates.
void write_folder(const FolderKind& kind, const std::string& dir,
                  const std::function<nlohmann::json(const std::string& tmp)>& fill);

}  // namespace lasp
