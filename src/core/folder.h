// Folders that lasp writes whole: checkpoints (--save) and token data (tokenize --out). Each is built at
// NAME.tmp.HOST.PID beside its place and swapped in by one atomic exchange, so that the place holds the old
// folder or the complete new one at every instant, never a mix, never an empty one after a failed run. A
// folder is replaced only when it is empty or when a marker file that only lasp writes (its kind and format
// version, written last) says it is lasp's own of that kind, and it holds nothing its kind does not: any
// other folder is the user's, and an error says so before any work is done.
#pragma once
#include <functional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace lasp {

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

// Before long work: dir is replaceable, the folder it goes in exists, and a folder can be created there.
// Removes the temporary folders of earlier writes on this host whose process is gone (a killed run leaves one).
void check_folder_target(const FolderKind& kind, const std::string& dir);

// Writes dir whole: creates NAME.tmp.HOST.PID beside it, lets fill write its files there (fill returns the
// marker's own fields, merged into {"format": format, "version": version}), writes the marker last, checks
// that dir is still replaceable and swaps the new folder in; the old one is then removed. On failure (fill's
// exceptions included) the temporary folder is removed, dir is untouched, and the error propagates.
void write_folder(const FolderKind& kind, const std::string& dir,
                  const std::function<nlohmann::json(const std::string& tmp)>& fill);

}  // namespace lasp
