// Strict text -> number conversions for user input (command-line values, data specs, state files): the
// whole text must be one number in the given range, or lasp::Error says what was expected and what was
// found ("pairs must be an integer in [1, 2147483647], got '4x'"). No silent truncation, wrap or default.
#pragma once
#include <cstdint>
#include <vector>
#include <string>
#include <string_view>

namespace lasp {

// A decimal integer (optional leading '-'), nothing before or after it.
int64_t parse_int(std::string_view text, std::string_view what, int64_t lo, int64_t hi);
uint64_t parse_uint(std::string_view text, std::string_view what, uint64_t lo = 0, uint64_t hi = UINT64_MAX);

// Multiplies non-negative sizes; throws naming `what` when the product does not fit in 63 bits.
int64_t checked_product(const std::vector<int64_t>& factors, std::string_view what);

// Bytes as a short human-readable size: "512 B", "3.2 MiB", "1.5 GiB".
std::string human_bytes(double bytes);

}  // namespace lasp
