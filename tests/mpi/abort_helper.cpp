// A tiny MPI program for tests/mpi/abort_test.sh: rank 1 fails while the other ranks wait in a
// collective, and the whole job must end. Modes:
//   throw   rank 1 throws lasp::Error; main catches it and calls Comm::abort (what lasp's main does)
//   kill    rank 1 raises SIGKILL (a crash nobody can catch)
//   exit    rank 1 returns 1 from main without Comm::abort. The job HANGS (not run by abort_test.sh):
//           rank 1's MPI_Finalize (at exit) waits for the others, which wait in all_reduce for rank 1.
//           It shows why a failing rank must call Comm::abort instead of returning.
//   single  no MPI: make_single_comm()->abort("...", 3) must exit with code 3
//   ok      every rank takes part in the collective and returns 0
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "comm/comm.h"
#include "core/check.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "single") lasp::make_single_comm()->abort("single-process abort", 3);
  if (mode != "throw" && mode != "kill" && mode != "exit" && mode != "ok") {
    std::fprintf(stderr, "usage: lasp_abort_helper throw|kill|exit|single|ok\n");
    return 2;
  }
  lasp::Comm& world = lasp::comm_world();
  try {
    if (world.rank() == 1 && mode == "throw") LASP_CHECK(false, "rank 1 fails on purpose ({})", mode);
    if (world.rank() == 1 && mode == "kill") std::raise(SIGKILL);
    if (world.rank() == 1 && mode == "exit") return 1;
    float x = 1.f;
    world.all_reduce(&x, 1);  // the other ranks wait here for rank 1, which never comes
    if (x != float(world.size())) LASP_CHECK(false, "all_reduce: expected {}, found {}", world.size(), x);
  } catch (const std::exception& e) {
    world.abort(e.what(), 5);
  }
  return 0;
}
