// Whole-file I/O with errors that name the path. Writes are atomic: a crash never leaves a half-written file.
#pragma once
#include <string>
#include <vector>

namespace lasp {

// The file's bytes. Throws lasp::Error naming the path and strerror if it cannot be opened or read.
std::string read_file(const std::string& path);

// Writes bytes to path + ".tmp.<pid>", fsyncs it, then renames it over path (and fsyncs the folder, best
// effort). On failure the temporary file is removed and lasp::Error names the path and strerror.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Checks, before long work, that a file can be created at path: creates and removes a probe file beside it.
// Throws lasp::Error naming the path and strerror (a missing folder, a read-only mount, no permission).
void check_can_create(const std::string& path);

// A file that lines are appended to (metrics), every write checked: a full disk or a failing device is a
// lasp::Error naming the path and strerror, never a silently short or empty file.
class AppendFile {
 public:
  explicit AppendFile(const std::string& path);  // creates the file if absent; throws if it cannot be opened
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void append(const std::string& bytes);  // all bytes, or a lasp::Error

 private:
  std::string path_;
  int fd_ = -1;
};

// A fresh folder under $TMPDIR (or /tmp), named prefix_XXXXXX, removed with its contents when the object
// goes. Throws lasp::Error naming the template and strerror if it cannot be created.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "lasp");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return path + "/" + name; }
  std::vector<std::string> entries() const;  // names in the folder, sorted

  std::string path;
};

}  // namespace lasp
