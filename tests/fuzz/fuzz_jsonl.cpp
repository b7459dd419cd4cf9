// The corpus reader of `lasp tokenize --input` (train/corpus.h) on arbitrary bytes, JSON Lines first. The first
// byte picks how the rest is read: as x.jsonl; as x.jsonl.gz or x.jsonl.zst (the decompressors meet any bytes);
// gzip- or zstd-compressed by the harness, whole (the documents must equal those of the same bytes read as plain
// x.jsonl, errors alike) or cut in half (an error that says so); or as text between separators. The second byte's
// bits skip bad lines, replace invalid UTF-8 and name another text field. Every document handed out must be
// non-empty valid UTF-8, and bytes_read() must reach bytes_total() at the end.
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/corpus.h"
#include "train/tokenizer.h"

namespace {

char g_dir[] = "/dev/shm/lasp-fuzz-jsonl-XXXXXX";
const char* const kNames[] = {"x.jsonl", "x.jsonl.gz", "x.jsonl.zst", "x.txt"};

void remove_dir() {
  for (const char* name : kNames) ::unlink((std::string(g_dir) + "/" + name).c_str());
  ::rmdir(g_dir);
}

std::string path_of(const char* name) {
  static const bool made = ::mkdtemp(g_dir) && std::atexit(remove_dir) == 0;
  if (!made) std::abort();
  const std::string path = std::string(g_dir) + "/" + name;
  return path;
}

std::string write(const char* name, const std::string& bytes) {
  const std::string path = path_of(name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  if (!out.flush()) std::abort();
  return path;
}

std::string gzip(const std::string& bytes) {
  z_stream z{};
  if (deflateInit2(&z, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::string out(deflateBound(&z, uLong(bytes.size())) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  z.avail_in = uInt(bytes.size());
  z.next_out = reinterpret_cast<Bytef*>(&out[0]);
  z.avail_out = uInt(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string zstd(const std::string& bytes) {
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  const size_t n = ZSTD_compress(&out[0], out.size(), bytes.data(), bytes.size(), 1);
  if (ZSTD_isError(n)) std::abort();
  out.resize(n);
  return out;
}

struct Result {
  std::vector<std::string> docs;
  std::string error;  // with the file's path as "F"
};

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

Result read(const std::string& path, const lasp::CorpusOptions& options) {
  Result r;
  lasp::CorpusReader reader({path}, options);
  try {
    for (lasp::CorpusDocument d; reader.next(d);) {
      if (d.text.empty() || lasp::find_invalid_utf8(d.text).count != 0 || d.file != path || d.line < 1) std::abort();
      r.docs.push_back(d.text);
    }
    if (reader.bytes_read() != reader.bytes_total()) std::abort();
  } catch (const lasp::Error& e) {
    if (std::string(e.what()).find(path) == std::string::npos) std::abort();  // every error names the file
    r.error = replaced(e.what(), path, "F");
  }
  if (reader.skipped() > 0 && (!options.skip_bad_lines || reader.first_skipped().empty())) std::abort();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int mode = data[0] % 8, flags = data[1];
  const std::string payload(reinterpret_cast<const char*>(data) + 2, size - 2);
  lasp::CorpusOptions o;
  o.skip_bad_lines = flags & 1;
  o.replace_invalid_utf8 = flags & 2;
  if (flags & 4) o.text_field = "t";
  switch (mode) {
    case 0: read(write("x.jsonl", payload), o); break;
    case 1: read(write("x.jsonl.gz", payload), o); break;
    case 2: read(write("x.jsonl.zst", payload), o); break;
    case 3:
    case 4: {  // transparent: the same documents and errors as the plain file
      const Result plain = read(write("x.jsonl", payload), o);
      const Result packed = read(write(mode == 3 ? "x.jsonl.gz" : "x.jsonl.zst", mode == 3 ? gzip(payload) : zstd(payload)), o);
      // A UTF-8 error says "of its decompressed text" of a compressed file, and of a plain one whether its bytes
      // look compressed (only there: the input's own bytes may hold the same words, in a quoted JSON error)
      std::string expected = plain.error, got = packed.error;
      if (expected.rfind("F is not UTF-8 text", 0) == 0) {
        for (const char* hint : {" (its bytes look like gzip data: name it *.gz)", " (its bytes look like zstd data: name it *.zst)"})
          if (expected.find(hint) == 19) expected.erase(19, std::string(hint).size());
        const size_t at = got.find(" of its decompressed text");
        if (at != std::string::npos) got.erase(at, 25);
      }
      if (packed.docs != plain.docs || got != expected) std::abort();
      break;
    }
    case 5:
    case 6: {  // cut in half: an error that says so, whatever the documents before it
      const std::string packed = mode == 5 ? gzip(payload) : zstd(payload);
      const Result cut = read(write(mode == 5 ? "x.jsonl.gz" : "x.jsonl.zst", packed.substr(0, packed.size() / 2)), o);
      if (cut.error.find("cut short") == std::string::npos && cut.error.find("the file is empty") == std::string::npos &&
          cut.error.find("not UTF-8") == std::string::npos && cut.error.find("JSON") == std::string::npos &&
          cut.error.find("document") == std::string::npos && cut.error.find("field") == std::string::npos)
        std::abort();
      break;
    }
    default:
      o.separator = flags & 8 ? "\n%\n" : "%";
      read(write("x.txt", payload), o);
      break;
  }
  return 0;
}
