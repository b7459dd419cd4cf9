#include "train/token_manifest.h"

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/check.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

bool lists(const nlohmann::json& manifest, const std::string& name) {
  const auto shards = manifest.find("shards");
  if (shards == manifest.end() || !shards->is_array()) return false;
  for (const auto& s : *shards)
    if (s.is_object() && s.value("file", nlohmann::json()) == name) return true;
  return false;
}

// "a, b, c and 4 more"
std::string some_of(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 3; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 3) out += fmt::format(" and {} more", names.size() - 3);
  return out;
}

}  // namespace

const FolderKind& tokens_folder() {
  static const FolderKind kind = {"tokenize: --out", "lasp tokenize output", "tokens.json", "lasp tokens", "tokenize", 1,
                                  [](const nlohmann::json& manifest, const std::string& name) {
                                    return name == "tokenizer.model" || lists(manifest, name);
                                  }};
  return kind;
}

void check_shard_set(const std::string& pattern, const std::vector<ShardFile>& shards) {
  std::map<std::string, std::map<std::string, int64_t>> by_folder;  // folder -> file name -> header tokens
  for (const ShardFile& s : shards) {
    const fs::path p(s.path);
    by_folder[p.parent_path().empty() ? "." : p.parent_path().string()][p.filename().string()] = s.tokens;
  }
  for (const auto& [folder, taken] : by_folder) {
    const nlohmann::json manifest = read_marker(tokens_folder(), folder);
    if (manifest.is_null()) {
      std::error_code ec;
      LASP_CHECK(!fs::exists(folder + "/tokenizer.model", ec), "--data {}: {} holds a tokenizer.model but no "
                 "tokens.json, the manifest that lasp tokenize writes last: it is an incomplete (interrupted) "
                 "tokenize output, or one of an older lasp. Run lasp tokenize again", pattern, folder);
      continue;  // llm.c shards of another tool
    }
    const auto listed = manifest.find("shards");
    LASP_CHECK(listed != manifest.end() && listed->is_array(), "{}/tokens.json: expected a \"shards\" array", folder);
    std::vector<std::string> missing;
    for (const auto& entry : *listed) {
      LASP_CHECK(entry.is_object() && entry.contains("file") && entry["file"].is_string() && entry.contains("tokens") &&
                     entry["tokens"].is_number_integer(),
                 "{}/tokens.json: each shard must be {{\"file\": NAME, \"tokens\": COUNT}}, found {}", folder,
                 entry.dump());
      const std::string name = entry["file"].get<std::string>();
      const auto it = taken.find(name);
      if (it == taken.end()) {
        missing.push_back(name);
        continue;
      }
      LASP_CHECK(it->second == entry["tokens"].get<int64_t>(), "--data {}: {}/{} holds {} tokens, but tokens.json "
                 "lists it with {}: the shard was changed or replaced after tokenize wrote it", pattern, folder, name,
                 it->second, entry["tokens"].get<int64_t>());
    }
    const bool pattern_given = pattern.find_first_of("*?[") != std::string::npos;  // a named file is taken alone
    LASP_CHECK(missing.empty() || !pattern_given, "--data {}: {} of the {} shards that {}/tokens.json lists are missing (or not "
               "matched by the pattern): {}. A partial shard set would train on part of the data", pattern,
               missing.size(), listed->size(), folder, some_of(missing));
    for (const auto& [name, tokens] : taken)
      LASP_CHECK(lists(manifest, name), "--data {}: {}/{} is not one of the shards that {}/tokens.json lists (it "
                 "was not written by that tokenize)", pattern, folder, name, folder);
  }
}

}  // namespace lasp
