// core/parse.h: strict integers (the whole text, in range) and 64-bit size products without wrap.
#include <gtest/gtest.h>

#include <climits>
#include <functional>
#include <string>

#include "core/check.h"
#include "core/parse.h"

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lasp::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Parse, IntegersAreStrict) {
  EXPECT_EQ(lasp::parse_int("42", "x", 0, 100), 42);
  EXPECT_EQ(lasp::parse_int("-7", "x", -10, 10), -7);
  EXPECT_EQ(lasp::parse_int("9223372036854775807", "x", 0, INT64_MAX), INT64_MAX);
  EXPECT_EQ(lasp::parse_uint("18446744073709551615", "x"), UINT64_MAX);
  for (const char* bad : {"", " 4", "4 ", "4x", "1e3", "0x10", "+4", "4.0", "--4", "4294967297"})
    EXPECT_EQ(error_of([&] { lasp::parse_int(bad, "pairs", 1, INT_MAX); }),
              std::string("pairs must be an integer in [1, 2147483647], got '") + bad + "'")
        << bad;
  EXPECT_NE(error_of([] { lasp::parse_int("99999999999999999999", "x", 0, INT64_MAX); }), "");
  EXPECT_NE(error_of([] { lasp::parse_uint("-1", "seed"); }), "");
  EXPECT_NE(error_of([] { lasp::parse_int("0", "x", 1, 5); }), "");
}

TEST(Parse, CheckedProductRefusesWrap) {
  EXPECT_EQ(lasp::checked_product({3, 5, 7}, "x"), 105);
  EXPECT_EQ(lasp::checked_product({}, "x"), 1);
  EXPECT_EQ(lasp::checked_product({int64_t(1) << 31, int64_t(1) << 31}, "x"), int64_t(1) << 62);
  EXPECT_NE(error_of([] { lasp::checked_product({int64_t(1) << 32, int64_t(1) << 31}, "tokens"); }).find("tokens"),
            std::string::npos);
  EXPECT_NE(error_of([] { lasp::checked_product({4, -1}, "x"); }), "");
}

TEST(Parse, HumanBytes) {
  EXPECT_EQ(lasp::human_bytes(512), "512 B");
  EXPECT_EQ(lasp::human_bytes(1536), "1.5 KiB");
  EXPECT_EQ(lasp::human_bytes(double(uint64_t(1) << 60)), "1.0 EiB");
}

}  // namespace
