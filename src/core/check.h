// Always-on contract checks. A failed check throws lasp::Error whose message names where it happened,
// what was expected and what was found; main() prints it and exits non-zero (under MPI it aborts all ranks).
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace lasp {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  throw Error(fmt::format("{}:{}: {}", file, line, what));
}

}  // namespace lasp

// LASP_CHECK(cond, "fmt", args...): the message should say what was expected and what was found.
#define LASP_CHECK(cond, ...)                                            \
  do {                                                                   \
    if (!(cond)) ::lasp::fail(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)
