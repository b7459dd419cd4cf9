// The SentencePiece tokenizer lasp trains (train/tokenizer.h): every byte round-trips, per-piece byte counts
// add up to the decoded text, and generated text is handed out only in whole characters.
#include <gtest/gtest.h>

#include <sentencepiece_trainer.h>

#include <numeric>
#include <random>
#include <string>
#include <unordered_map>

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

// A tokenizer as SentencePiece trains one by default (Python's defaults: NFKC, a dummy prefix, extra
// whitespace removed), with byte pieces: the start-of-text rule drops the first piece's space.
Tokenizer trained_with_dummy_prefix(const lasp::testing::TempDir& dir) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "word" + std::to_string(i % 17) + " and  more words, line " + std::to_string(i) + "\n";
  write_file_atomic(dir.file("dummy.txt"), text);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir.file("dummy.txt") + " --model_prefix=" + dir.file("dummy") +
      " --vocab_size=320 --byte_fallback=true --minloglevel=2");
  EXPECT_TRUE(status.ok()) << status.ToString();
  return Tokenizer::load(dir.file("dummy.model"));
}

// DecodeStream decodes a bounded tail; for random token sequences (ordinary pieces, spaces at the start, BOS,
// EOS and unknown pieces, characters split into byte pieces, bytes that are not UTF-8, characters cut off at
// the end) what it hands out is at every step a prefix of the decode of the tokens so far, holds back at most
// one incomplete character, and ends as decode(all ids) exactly.
TEST(Tokenizer, DecodeStreamEqualsDecodeOfAllIds) {
  lasp::testing::TempDir dir;
  for (const Tokenizer& tok : {trained(dir), trained_with_dummy_prefix(dir)}) {
    std::unordered_map<int, int> byte_piece;  // byte -> its piece
    std::vector<int> ordinary, spaced, special;
    for (int id = 0; id < tok.vocab_size(); ++id) {
      const std::string alone = tok.decode({id});
      if (tok.byte_value(id) >= 0) byte_piece[tok.byte_value(id)] = id;
      else if (tok.bytes_of(id) > 0) ordinary.push_back(id);
      else special.push_back(id);  // BOS, EOS, unknown
      // a piece that starts with a space (dropped at the start of a text with a dummy prefix)
      if (tok.bytes_of(id) > 0 && (alone[0] == ' ' || tok.bytes_of(id) > int(alone.size()))) spaced.push_back(id);
    }
    ASSERT_EQ(byte_piece.size(), 256u);
    ASSERT_FALSE(special.empty() || spaced.empty());
    std::mt19937 rng(7);
    auto pick = [&](const std::vector<int>& v) { return v[rng() % v.size()]; };
    const std::vector<std::string> chars = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xe4\xb8\xad", "\xef\xbf\xbd"};
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<int> ids;
      const int length = 1 + int(rng() % 40);
      while (int(ids.size()) < length) {
        const unsigned kind = rng() % 10;
        if (kind < 4) ids.push_back(pick(ordinary));
        else if (kind < 6) for (char c : chars[rng() % chars.size()]) ids.push_back(byte_piece.at((unsigned char)c));
        else if (kind < 7) ids.push_back(byte_piece.at(int(rng() % 256)));  // often not UTF-8
        else if (kind < 8) ids.push_back(pick(special));
        else if (kind < 9) ids.push_back(pick(spaced));  // also at the start
        else ids.push_back(byte_piece.at((unsigned char)chars[rng() % 3][0]));  // a character cut off
      }
      DecodeStream stream(tok);
      std::string out;
      for (size_t k = 0; k < ids.size(); ++k) {
        out += stream.push(ids[k]);
        const std::string so_far = tok.decode(std::vector<int>(ids.begin(), ids.begin() + std::ptrdiff_t(k) + 1));
        ASSERT_EQ(so_far.compare(0, out.size(), out), 0) << "trial " << trial << " step " << k << ": handed out text "
                                                          << "that is not a prefix of the decode so far";
        ASSERT_LE(so_far.size() - out.size(), 9u) << "trial " << trial << " step " << k << ": held back too much";
      }
      out += stream.finish();
      ASSERT_EQ(out, tok.decode(ids)) << "trial " << trial;
    }
    // The cost per token is bounded: generate used to decode every id again for each new one (10,000 tokens:
    // 50 million ids).
    DecodeStream stream(tok);
    std::string out;
    std::vector<int> ids;
    for (int k = 0; k < 20000; ++k) {
      ids.push_back(k % 5 == 0 ? byte_piece.at(0xe2) : k % 5 == 1 ? byte_piece.at(0x82) : k % 5 == 2 ? byte_piece.at(0xac)
                                                                                    : pick(ordinary));
      out += stream.push(ids.back());
    }
    out += stream.finish();
    EXPECT_LE(stream.decoded_ids(), 6 * 20000);
    EXPECT_EQ(out, tok.decode(ids));
  }
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
