// Always-on contract checks. A failed check throws lasp::Error whose message says what was expected and what
// was found; main() prints it and exits non-zero (under MPI it aborts all ranks). Where the check stands in
// the source (file:line) travels beside the message, for `lasp --verbose`: users see no build paths.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace lasp {

struct Error : std::runtime_error {
  explicit Error(const std::string& what, std::string where = "") : std::runtime_error(what), where(std::move(where)) {}
  std::string where;  // "file:line" of the failed LASP_CHECK; empty for errors thrown directly
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  throw Error(what, fmt::format("{}:{}", file, line));
}

}  // namespace lasp

// LASP_CHECK(cond, "fmt", args...): the message should say what was expected and what was found.
#define LASP_CHECK(cond, ...)                                            \
  do {                                                                   \
    if (!(cond)) ::lasp::fail(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)
