// tokens.json: the manifest of `lasp tokenize`'s output folder. It is that folder's marker (core/folder.h:
// written last, so only a complete output has one) and lists every shard with its token count, so that
// train and eval can tell a complete shard set from a partial one.
//   {"format": "lasp tokens", "version": 1, "tokenizer": "tokenizer.model", "vocab_size": V, "bos": B,
//    "documents": D, "bytes": N, "tokens": T, "shards": [{"file": "tokens_000000.bin", "tokens": n}, ...]}
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/folder.h"

namespace lasp {

// tokenize --out: its marker tokens.json, tokenizer.model and the shards the manifest lists.
const FolderKind& tokens_folder();

struct ShardFile {
  std::string path;
  int64_t tokens = 0;  // as its header says
};

// Checks shards (the files a --data pattern matched) against the manifests of their folders: where a folder
// holds a tokens.json, the shards a glob takes from it must be exactly the ones it lists (a file named alone
// must be one of them), with its token counts;
// a folder with a tokenizer.model but no tokens.json is an incomplete tokenize output. Throws lasp::Error
// naming the pattern, the folder and what is missing or extra.
void check_shard_set(const std::string& pattern, const std::vector<ShardFile>& shards);

}  // namespace lasp
