#include "core/parse.h"

#include <charconv>

#include "core/check.h"

namespace lasp {

namespace {

template <class T>
T parse_integer(std::string_view text, std::string_view what, T lo, T hi) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [stop, ec] = std::from_chars(text.data(), end, value);
  const bool whole = !text.empty() && ec == std::errc() && stop == end;
  if (!whole || value < lo || value > hi)
    throw Error(fmt::format("{} must be an integer in [{}, {}], got '{}'", what, lo, hi, text));
  return value;
}

}  // namespace

int64_t parse_int(std::string_view text, std::string_view what, int64_t lo, int64_t hi) {
  return parse_integer<int64_t>(text, what, lo, hi);
}

uint64_t parse_uint(std::string_view text, std::string_view what, uint64_t lo, uint64_t hi) {
  return parse_integer<uint64_t>(text, what, lo, hi);
}

int64_t checked_product(const std::vector<int64_t>& factors, std::string_view what) {
  int64_t p = 1;
  for (int64_t f : factors) {
    LASP_CHECK(f >= 0, "{}: a size is negative ({})", what, f);
    LASP_CHECK(!__builtin_mul_overflow(p, f, &p), "{}: the size does not fit in 64 bits", what);
  }
  return p;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) bytes /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

}  // namespace lasp
