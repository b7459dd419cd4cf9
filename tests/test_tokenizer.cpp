// The SentencePiece tokenizer lasp trains (train/tokenizer.h): every byte round-trips, per-piece byte counts
// add up to the decoded text, and generated text is handed out only in whole characters.
#include <gtest/gtest.h>

#include <numeric>
#include <string>

#include "core/check.h"
#include "core/file.h"
#include "testing.h"
#include "train/tokenizer.h"

using namespace lasp;

namespace {

Tokenizer trained(const lasp::testing::TempDir& dir) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "line " + std::to_string(i) + ": the quick brown fox jumps over the lazy dog\n";
  write_file_atomic(dir.file("text.txt"), text);
  TokenizeOptions o;
  o.inputs = {dir.file("text.txt")};
  o.out_dir = dir.file("tok");
  o.vocab_size = 300;
  tokenize(o);
  return Tokenizer::load(dir.file("tok/tokenizer.model"));
}

TEST(Tokenizer, EveryByteRoundTripsAndCountsAddUp) {
  lasp::testing::TempDir dir;
  const Tokenizer tok = trained(dir);
  // Characters the training text never had (byte fallback), newlines, tabs, runs of spaces, a NUL byte.
  const std::string text = std::string("caf\xc3\xa9 \xe2\x82\xac 10\n\tindented   spaces\n") + std::string(1, '\0') + "end";
  const std::vector<int> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  int bytes = 0;
  for (int id : ids) bytes += tok.bytes_of(id);
  EXPECT_EQ(bytes, int(text.size()));
  EXPECT_EQ(tok.bytes_of(tok.bos()), 0);
  EXPECT_THROW(tok.decode({tok.vocab_size()}), Error);
}

TEST(Tokenizer, DecodeStreamHoldsIncompleteCharacters) {
  lasp::testing::TempDir dir;
  const Tokenizer tok = trained(dir);
  const std::string text = "\xc3\xa9" "a\xe2\x82\xac" "b";  // e-acute, a, euro sign, b: byte pieces for the non-ASCII
  const std::vector<int> ids = tok.encode(text);
  ASSERT_EQ(ids.size(), 7u) << "expected byte pieces for the 2- and 3-byte characters";
  DecodeStream stream(tok);
  std::vector<std::string> out;
  for (int id : ids) out.push_back(stream.push(id));
  EXPECT_EQ(out, (std::vector<std::string>{"", "\xc3\xa9", "a", "", "", "\xe2\x82\xac", "b"}));
  EXPECT_EQ(stream.finish(), "");
  DecodeStream cut(tok);  // a character cut off at the end comes out as it decodes
  EXPECT_EQ(cut.push(ids[0]), "");
  EXPECT_EQ(cut.finish(), "\xef\xbf\xbd");
}

// The UTF-8 rule tokenize checks before encoding is SentencePiece's own: each byte it counts as invalid is
// one U+FFFD in decode(encode(text)), and everything else comes back (overlong forms, surrogates, code points
// past U+10FFFF, stray continuation bytes, a character cut off at the end).
TEST(Tokenizer, InvalidUtf8IsWhatSentencePieceReplaces) {
  lasp::testing::TempDir dir;
  const Tokenizer tok = trained(dir);
  const std::vector<std::pair<std::string, int>> cases = {
      {"plain ascii", 0}, {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 0}, {"latin1 caf\xe9", 1},
      {"overlong \xc0\x80 \xe0\x80\xaf", 5}, {"surrogate \xed\xa0\x80", 3}, {"too big \xf4\x90\x80\x80", 4},
      {"stray \x80\xbf", 2}, {"cut \xe2\x82", 2}, {"\xff\xfe", 2}, {"\xef\xbf\xbd is a real U+FFFD", 0}};
  for (const auto& [text, invalid] : cases) {
    const InvalidUtf8 found = find_invalid_utf8(text);
    EXPECT_EQ(found.count, invalid) << text;
    EXPECT_EQ(found.first >= 0, invalid > 0) << text;
    EXPECT_EQ(tok.decode(tok.encode(text)), replace_invalid_utf8(text)) << text;
    EXPECT_EQ(replace_invalid_utf8(text) == text, invalid == 0) << text;
  }
  EXPECT_EQ(find_invalid_utf8("ab\xe9").first, 2);
}

}  // namespace
