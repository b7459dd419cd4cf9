// Corpora in every format give the same documents (train/corpus.h), and `lasp tokenize` the same shards from
// them: plain text, gzip (one or several members), zstd (one or several frames), JSON Lines, compressed or not,
// with separators and with documents that cross the reader's 1 MB pieces. Bad input is an error naming the file
// and the line (or a counted skip), the shards do not depend on the thread count, and memory does not grow with
// the size of the corpus.
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/file.h"
#include "testing.h"
#include "train/corpus.h"

namespace {

using lasp::CorpusDocument;
using lasp::CorpusOptions;
using lasp::CorpusReader;
using lasp::TempDir;
using lasp::testing::CommandResult;
using lasp::testing::run_command;

const std::string kLasp = LASP_BINARY;
const std::string kSeparator = "\n%\n";

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// gzip of bytes as `members` members one after another (what `cat a.gz b.gz` gives).
std::string gzip(const std::string& bytes, int members = 1) {
  std::string out;
  for (int m = 0; m < members; ++m) {
    const size_t begin = bytes.size() * size_t(m) / size_t(members), end = bytes.size() * size_t(m + 1) / size_t(members);
    z_stream z{};
    EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string part(deflateBound(&z, uLong(end - begin)) + 64, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data() + begin));
    z.avail_in = uInt(end - begin);
    z.next_out = reinterpret_cast<Bytef*>(&part[0]);
    z.avail_out = uInt(part.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    part.resize(z.total_out);
    deflateEnd(&z);
    out += part;
  }
  return out;
}

// zstd of bytes as `frames` frames one after another.
std::string zstd(const std::string& bytes, int frames = 1) {
  std::string out;
  for (int f = 0; f < frames; ++f) {
    const size_t begin = bytes.size() * size_t(f) / size_t(frames), end = bytes.size() * size_t(f + 1) / size_t(frames);
    std::string part(ZSTD_compressBound(end - begin), '\0');
    const size_t n = ZSTD_compress(&part[0], part.size(), bytes.data() + begin, end - begin, 3);
    EXPECT_FALSE(ZSTD_isError(n));
    part.resize(n);
    out += part;
  }
  return out;
}

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// Documents of every kind: ASCII words, 2- to 4-byte characters, JSON's escapes (quotes, backslashes, control
// characters), indentation, a '%' that is no separator, lengths from 1 byte to 2.5 MB (over two reader pieces).
std::vector<std::string> documents() {
  const std::vector<std::string> words = {"the", "cat", "sat", "on", "a", "mat", "caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87",
                                          "\xf0\x9f\x99\x82", "\"quoted\"", "back\\slash", "tab\there", "100%", "\n",
                                          "\n\n", "\t-- Author", "\x01"};
  std::mt19937 rng(7);
  std::vector<std::string> docs = {"x", "%", "ends with a newline\n", "\nstarts with one"};
  for (size_t size : {10, 100, 1000, 5000, 70000, 2500000}) {
    std::string d;
    while (d.size() < size) d += words[rng() % words.size()] + (rng() % 3 ? " " : "");
    docs.push_back(d);
  }
  return docs;
}

std::string jsonl(const std::vector<std::string>& docs) {
  std::string out;
  for (size_t i = 0; i < docs.size(); ++i) out += nlohmann::json{{"id", i}, {"text", docs[i]}}.dump() + "\n";
  return out;
}

std::string joined(const std::vector<std::string>& docs) {
  std::string out;
  for (const std::string& d : docs) out += d + kSeparator;
  return out;
}

std::vector<CorpusDocument> read_all(const std::vector<std::string>& files, const CorpusOptions& options = {}) {
  CorpusReader reader(files, options);
  std::vector<CorpusDocument> docs;
  for (CorpusDocument d; reader.next(d);) docs.push_back(d);
  EXPECT_EQ(reader.bytes_read(), reader.bytes_total());
  return docs;
}

// The error that reading the files gives ("" when none).
std::string read_error(const std::vector<std::string>& files, const CorpusOptions& options = {}) {
  try {
    read_all(files, options);
  } catch (const lasp::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Corpus, EveryFormatGivesTheSameDocuments) {
  TempDir tmp("lasp_corpus");
  const std::vector<std::string> docs = documents();
  std::vector<std::string> plain;
  for (size_t i = 0; i < docs.size(); ++i) {
    plain.push_back(tmp.file("doc" + std::to_string(i) + ".txt"));
    write(plain.back(), docs[i]);
  }
  const std::string lines = jsonl(docs), text = joined(docs);
  write(tmp.file("c.jsonl"), lines);
  write(tmp.file("c.jsonl.gz"), gzip(lines, 3));
  write(tmp.file("c.jsonl.zst"), zstd(lines, 2));
  write(tmp.file("c.txt"), text);
  write(tmp.file("c.txt.gz"), gzip(text));
  write(tmp.file("c.txt.zst"), zstd(text, 3));
  const auto expect_docs = [&](const std::vector<std::string>& files, const CorpusOptions& options, bool by_line) {
    const std::vector<CorpusDocument> got = read_all(files, options);
    ASSERT_EQ(got.size(), docs.size()) << files[0];
    int64_t line = 1;
    for (size_t i = 0; i < docs.size(); ++i) {
      EXPECT_EQ(got[i].text, docs[i]) << files[0] << " document " << i;
      EXPECT_EQ(got[i].file, files.size() == 1 ? files[0] : files[i]);
      EXPECT_EQ(got[i].line, by_line ? int64_t(i) + 1 : files.size() == 1 ? line : 1) << files[0] << " document " << i;
      line += std::count(docs[i].begin(), docs[i].end(), '\n') + 2;  // the separator holds two newlines
    }
  };
  expect_docs(plain, {}, false);
  for (const char* name : {"c.jsonl", "c.jsonl.gz", "c.jsonl.zst"}) expect_docs({tmp.file(name)}, {}, true);
  CorpusOptions separated;
  separated.separator = kSeparator;
  for (const char* name : {"c.txt", "c.txt.gz", "c.txt.zst"}) expect_docs({tmp.file(name)}, separated, false);
  // A plain file compressed: one document, whatever the compression.
  write(tmp.file("big.gz"), gzip(docs.back(), 2));
  write(tmp.file("big.zst"), zstd(docs.back()));
  for (const char* name : {"big.gz", "big.zst"}) {
    const std::vector<CorpusDocument> got = read_all({tmp.file(name)});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].text, docs.back());
  }
  // Another text field; blank lines hold no document; a last line without its newline is read.
  write(tmp.file("body.jsonl"), "{\"body\": \"one\", \"text\": 5}\n\n  \r\n{\"body\": \"two\"}");
  CorpusOptions body;
  body.text_field = "body";
  const std::vector<CorpusDocument> got = read_all({tmp.file("body.jsonl")}, body);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].text, "two");
  EXPECT_EQ(got[1].line, 4);
}

TEST(Corpus, BadInputNamesTheFileAndTheLine) {
  TempDir tmp("lasp_corpus");
  const std::string good = "{\"text\": \"fine\"}\n";
  struct Case {
    std::string name, bytes, says;
    bool skippable;  // --skip-bad-lines passes over it
  };
  const std::string licence = lasp::read_file("/usr/share/common-licenses/GPL-3");
  std::string corrupt = gzip(licence);
  for (size_t i = corrupt.size() / 2; i < corrupt.size() / 2 + 64; ++i) corrupt[i] = char(~corrupt[i]);
  const std::vector<Case> cases = {
      {"a.jsonl", good + "not json\n", "a.jsonl line 2 is not JSON (at byte 2 of the line: syntax error", true},
      {"b.jsonl", good + good + "{\"text\": \"cut", "b.jsonl line 3 is not JSON", true},
      {"b2.jsonl", good + "{\"text\": \"x\", \"id\": 20e9222}\n",  // fuzz_jsonl: nlohmann's out_of_range escaped
       "b2.jsonl line 2 is not JSON (number overflow parsing '20e9222')", true},
      {"c.jsonl", good + "{\"body\": \"x\", \"id\": 1}\n", "c.jsonl line 2 has no \"text\" field (its fields: body, id;", true},
      {"d.jsonl", good + "{\"text\": 3}\n", "d.jsonl line 2: its \"text\" field is a number, not a string", true},
      {"e.jsonl", good + "{\"text\": null}\n", "e.jsonl line 2: its \"text\" field is null, not a string", true},
      {"f.jsonl", good + "[\"text\"]\n", "f.jsonl line 2 is an array in JSON, not an object", true},
      {"g.jsonl", good + "{\"text\": \"\"}\n", "empty document in " + tmp.file("g.jsonl") + " line 2", true},
      {"h.txt", "", "empty document in " + tmp.file("h.txt") + ": the file holds no text", true},
      {"i.jsonl.gz", gzip(jsonl({licence, licence})).substr(0, 9000),
       "i.jsonl.gz: the gzip data is cut short (a truncated file?): its text stops in line 1", false},
      {"j.txt.zst", zstd(licence + licence).substr(0, 9000), "j.txt.zst: the zstd data is cut short", false},
      {"k.txt.gz", corrupt, "k.txt.gz: corrupt gzip data at byte", false},
      {"l.gz", "plain text", "l.gz: corrupt gzip data at byte", false},
      {"m.zst", "", "m.zst: the file is empty: no zstd data", false},
      {"n.jsonl", good + good + "{\"text\": \"caf\xe9\"}\n",
       "n.jsonl is not UTF-8 text: the byte at offset 47 (line 3), 0xe9, is not part of a valid character (1 such byte "
       "in this line)", false},
      {"o.txt.gz", gzip("first\ncaf\xe9\n"), "the byte at offset 9 (line 2) of its decompressed text, 0xe9", false},
      {"p.jsonl", gzip(good), "p.jsonl is not UTF-8 text (its bytes look like gzip data: name it *.gz)", false},
  };
  CorpusOptions skip;
  skip.skip_bad_lines = true;
  for (const Case& c : cases) {
    const std::string path = tmp.file(c.name);
    write(path, c.bytes);
    const std::string error = read_error({path});
    EXPECT_TRUE(contains(error, c.says)) << "expected '" << c.says << "', got '" << error << "'";
    EXPECT_TRUE(contains(error, path)) << error;
    if (!c.skippable) {
      EXPECT_EQ(read_error({path}, skip), error);  // no line to skip: an error still
      continue;
    }
    CorpusReader reader({path}, skip);
    int64_t n = 0;
    for (CorpusDocument d; reader.next(d);) EXPECT_EQ(d.text, "fine") << ++n;
    EXPECT_EQ(reader.skipped(), 1) << c.name;
    EXPECT_EQ(reader.first_skipped(), error);
  }
  // Separated documents: an empty one names its line.
  write(tmp.file("sep.txt"), "one\n%\n\n%\ntwo");
  CorpusOptions separated;
  separated.separator = kSeparator;
  EXPECT_TRUE(contains(read_error({tmp.file("sep.txt")}, separated),
                       "empty document in " + tmp.file("sep.txt") + " line 3: two separators follow each other"));
  // --invalid-utf8 replace: the byte is U+FFFD, counted, in every format.
  CorpusOptions replace;
  replace.replace_invalid_utf8 = true;
  for (const char* name : {"n.jsonl", "o.txt.gz"}) {
    CorpusReader reader({tmp.file(name)}, replace);
    std::string all;
    for (CorpusDocument d; reader.next(d);) all += d.text;
    EXPECT_TRUE(contains(all, "caf\xef\xbf\xbd")) << name;
    EXPECT_EQ(reader.replaced(), 1) << name;
  }
  // Globs: sorted matches; one that matches nothing is named.
  EXPECT_EQ(lasp::corpus_files({tmp.file("[ab].jsonl")}), (std::vector<std::string>{tmp.file("a.jsonl"), tmp.file("b.jsonl")}));
  try {
    lasp::corpus_files({tmp.file("*.none")});
    ADD_FAILURE() << "no error";
  } catch (const lasp::Error& e) {
    EXPECT_TRUE(contains(e.what(), "no file matches --input " + tmp.file("*.none"))) << e.what();
  }
}

// The tokenizer and shards of tokenize on the files (the output folder's bytes, less the manifest).
std::string tokenize(const TempDir& tmp, const std::string& name, const std::string& args) {
  const std::string out = tmp.file(name);
  const CommandResult r = run_command(kLasp + " " + args + " --out " + out);
  EXPECT_EQ(r.status, 0) << args << "\n" << r.output;
  std::string bytes = lasp::read_file(out + "/tokenizer.model");
  for (int k = 0; std::ifstream(out + fmt::format("/tokens_{:06d}.bin", k)); ++k)
    bytes += lasp::read_file(out + fmt::format("/tokens_{:06d}.bin", k));
  return bytes;
}

TEST(Corpus, TokenizeGivesTheSameShardsFromEveryFormatAndThreadCount) {
  TempDir tmp("lasp_corpus");
  std::vector<std::string> docs, plain;
  for (const char* licence : {"Apache-2.0", "Artistic", "GPL-3", "MPL-2.0"}) {  // in name order, as a glob gives
    docs.push_back(lasp::read_file(std::string("/usr/share/common-licenses/") + licence));
    plain.push_back(tmp.file(std::string(licence) + ".txt"));
    write(plain.back(), docs.back());
  }
  std::string files;
  for (const std::string& p : plain) files += " " + p;
  write(tmp.file("c.jsonl.zst"), zstd(jsonl(docs), 2));
  write(tmp.file("c.jsonl.gz"), gzip(jsonl(docs)));
  write(tmp.file("c.txt.gz"), gzip(joined(docs), 2));
  const std::string train = " --vocab-size 700 --shard-tokens 30000";
  const std::string expected = tokenize(tmp, "plain", "tokenize --input" + files + train);
  ASSERT_GT(expected.size(), 60000u);
  EXPECT_EQ(tokenize(tmp, "zst", "tokenize --input " + tmp.file("c.jsonl.zst") + train), expected);
  EXPECT_EQ(tokenize(tmp, "gz", "tokenize --input " + tmp.file("c.jsonl.gz") + train), expected);
  EXPECT_EQ(tokenize(tmp, "sep", "tokenize --input " + tmp.file("c.txt.gz") + " --separator '" + kSeparator + "'" + train),
            expected);
  EXPECT_EQ(tokenize(tmp, "glob", "tokenize --input '" + tmp.file("*.txt") + "'" + train), expected)
      << "the glob's files in name order";
  // Many batches of documents (over 1 MB each), encoded on 1 and 2 threads: the same shards.
  std::vector<std::string> many;
  for (int i = 0; i < 60; ++i) many.push_back(docs[size_t(i) % docs.size()].substr(size_t(i) * 97 % 5000));
  write(tmp.file("many.jsonl"), jsonl(many));
  const std::string model = " --model " + tmp.file("plain/tokenizer.model") + " --input " + tmp.file("many.jsonl");
  const std::string one = tokenize(tmp, "t1", "--threads 1 tokenize" + model);
  EXPECT_EQ(tokenize(tmp, "t2", "--threads 2 tokenize" + model), one);
  EXPECT_EQ(tokenize(tmp, "t3", "--threads 3 tokenize" + model), one);
}

// The peak resident memory (KB) of a lasp command, as /usr/bin/time measures it. (Not the ru_maxrss of a child
// this process forks: Linux keeps the forked copy's peak, this test's own, across the exec.)
long peak_rss_kb(const std::string& args) {
  const CommandResult r = run_command("/usr/bin/time -f 'peak RSS %M KB' " + kLasp + " " + args);
  EXPECT_EQ(r.status, 0) << args << "\n" << r.output;
  const size_t at = r.output.rfind("peak RSS ");
  return at == std::string::npos ? -1 : std::stol(r.output.substr(at + 9));
}

// Streaming: tokenize's peak memory does not grow with the corpus (2 MB and 12 MB of text in documents of 4-5 KB;
// the README gives the peak for 2 GB). Not in the sanitized runs (scripts/sanitize.sh): there RSS is ASan's.
TEST(Corpus, TokenizeMemoryDoesNotGrowWithTheCorpus) {
  TempDir tmp("lasp_corpus");
  const std::string licence = lasp::read_file("/usr/share/common-licenses/GPL-3");
  std::vector<std::string> docs;
  for (int i = 0; i < 40; ++i) docs.push_back(licence.substr(size_t(i) * 701 % 20000, 4000 + size_t(i) * 37));
  std::string lines = jsonl(docs);  // ~190 KB
  std::string small, large;
  while (small.size() < (size_t(2) << 20)) small += lines;
  while (large.size() < (size_t(12) << 20)) large += lines;
  write(tmp.file("small.jsonl.zst"), zstd(small));
  write(tmp.file("large.jsonl.zst"), zstd(large));
  small = large = lines = {};
  write(tmp.file("sample.txt"), licence);
  ASSERT_EQ(run_command(kLasp + " tokenize --input " + tmp.file("sample.txt") + " --vocab-size 500 --out " +
                        tmp.file("tok")).status, 0);
  const std::string model = "tokenize --model " + tmp.file("tok/tokenizer.model") + " --shard-tokens 2000000 --input ";
  const long small_kb = peak_rss_kb(model + tmp.file("small.jsonl.zst") + " --out " + tmp.file("s"));
  const long large_kb = peak_rss_kb(model + tmp.file("large.jsonl.zst") + " --out " + tmp.file("l"));
  std::printf("peak RSS: %ld KB for 2 MB of text, %ld KB for 12 MB\n", small_kb, large_kb);
  EXPECT_GT(small_kb, 0);
  EXPECT_LT(large_kb, small_kb + 4 * 1024) << "10 MB more text held " << (large_kb - small_kb) << " KB more";
}

}  // namespace
