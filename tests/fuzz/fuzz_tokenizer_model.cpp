// Tokenizer::from_bytes (a tokenizer.model: tokenize --model, a checkpoint's or the one beside token shards) on
// arbitrary bytes. A model it accepts must work: every id's byte count and byte value are sane, and text
// encodes, decodes, and streams (DecodeStream) exactly as decode of all ids.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/tokenizer.h"

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "accepted tokenizer: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::vector<lasp::Tokenizer> loaded;
  try {
    loaded.push_back(lasp::Tokenizer::from_bytes(bytes, "tokenizer.model"));
  } catch (const lasp::Error&) {
    return 0;
  }
  const lasp::Tokenizer& tok = loaded.front();
  const int n = tok.vocab_size();
  check(n >= 0, "negative vocabulary");
  check(tok.bos() >= -1 && tok.bos() < n, "BOS outside the vocabulary");
  for (int id = 0; id < n && id < 70000; ++id) {
    check(tok.bytes_of(id) >= 0, "a piece of negative length");
    check(tok.byte_value(id) >= -1 && tok.byte_value(id) < 256, "a byte piece outside 0..255");
  }
  // Text through it: encode (SentencePiece may refuse; that is a lasp::Error), decode, stream.
  try {
    const std::string text = "Once upon a time, caf\xc3\xa9 \xe2\x82\xac 10\n\t  spaces\n";
    std::vector<int> ids = tok.encode(text);
    for (int id : ids) check(id >= 0 && id < n, "encode gave an id outside the vocabulary");
    if (n > 0)  // and some ids of its own choosing: bytes, controls, whatever the model holds
      for (size_t i = 0; i < 32; ++i) ids.push_back(int((size + 7 * i) % size_t(n)));
    const std::string whole = tok.decode(ids);
    lasp::DecodeStream stream(tok);
    std::string streamed;
    for (int id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    if (streamed != whole) {
      std::fprintf(stderr, "DecodeStream gave %zu bytes, decode of all ids %zu\n", streamed.size(), whole.size());
      std::abort();
    }
  } catch (const lasp::Error&) {
  }
  return 0;
}
