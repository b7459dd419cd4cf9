// Comm: the collectives lasp's sequence- and data-parallel methods use, on fp32 (and double for
// reductions of losses). One implementation over MPI (mpi_comm.cpp), one for a single process.
// Every call counts the bytes this rank sends and receives, per kind of collective, with the logical
// volume of the operation (what must cross the network whatever algorithm MPI picks):
//   all_gather(count)      sent (W-1)*count, received (W-1)*count        (count = floats this rank owns)
//   reduce_scatter(count)  sent (W-1)*count, received (W-1)*count        (count = floats each rank ends with)
//   all_reduce(count)      sent 2(W-1)/W*count, received the same        (a ring reduce-scatter + all-gather)
//   send_recv              the counts given
//   all_to_all(count)      sent (W-1)*count, received (W-1)*count        (count = floats per destination)
//   exscan(count, op)      sent count*op.floats(), received the same (ranks 0 and W-1: one way only): the
//                          fold of the ranks below arrives once, this rank's fold leaves once, whatever W (a
//                          chain moves exactly that; the recursive doubling lasp asks Open MPI for moves up to
//                          ceil(log2 W) elements each way, in log2 W steps instead of W-1)
// times sizeof(element). A non-blocking call is counted when it starts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lasp {

enum class CommKind { all_gather, reduce_scatter, all_reduce, send_recv, all_to_all, scan };
constexpr int kCommKinds = 6;
const char* to_string(CommKind kind);

struct CommStats {
  uint64_t bytes_sent[kCommKinds] = {}, bytes_received[kCommKinds] = {}, calls[kCommKinds] = {};
  double seconds = 0;  // wall time this rank spent inside communication calls and waits
  uint64_t total_sent() const;
  uint64_t total_received() const;
};

// An associative, not necessarily commutative, operator on elements of floats() floats: what exscan folds
// (LASP-2's affine state pairs, sp/state_passing.h).
class ScanOperator {
 public:
  virtual ~ScanOperator() = default;
  virtual size_t floats() const = 0;
  virtual void identity(float* element) const = 0;
  // then <- first followed by then. first and then do not overlap.
  virtual void compose(const float* first, float* then) const = 0;
};

// A non-blocking operation in flight; wait() completes it (idempotent), test() makes progress.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // recv (size() * count) = the send buffers of all ranks, in rank order.
  virtual void all_gather(const float* send, float* recv, size_t count) = 0;
  virtual std::unique_ptr<CommRequest> all_gather_start(const float* send, float* recv, size_t count) = 0;
  // recv (count) = sum over ranks of their send[rank() * count .. +count); send holds size() * count.
  virtual void reduce_scatter(const float* send, float* recv, size_t count) = 0;
  virtual std::unique_ptr<CommRequest> reduce_scatter_start(const float* send, float* recv, size_t count) = 0;
  // In place sum over ranks.
  virtual void all_reduce(float* data, size_t count) = 0;
  virtual void all_reduce(double* data, size_t count) = 0;
  virtual std::unique_ptr<CommRequest> all_reduce_start(float* data, size_t count) = 0;
  // Sends to dest while receiving from source (either may be -1: nothing to send / receive).
  virtual void send_recv(const float* send, size_t send_count, int dest, float* recv, size_t recv_count,
                         int source) = 0;
  virtual std::unique_ptr<CommRequest> send_recv_start(const float* send, size_t send_count, int dest, float* recv,
                                                       size_t recv_count, int source) = 0;
  // recv[r * count ..] = what rank r sent to this rank from its send[rank() * count ..].
  virtual void all_to_all(const float* send, float* recv, size_t count) = 0;
  virtual std::unique_ptr<CommRequest> all_to_all_start(const float* send, float* recv, size_t count) = 0;
  // Exclusive scan, in rank order, of count elements of op: recv on rank r = element by element the
  // composition of ranks 0 .. r-1's send, in rank order; on rank 0 the identity. send and recv must not
  // overlap; op must outlive the request.
  virtual std::unique_ptr<CommRequest> exscan_start(const float* send, float* recv, size_t count,
                                                    const ScanOperator& op) = 0;
  void exscan(const float* send, float* recv, size_t count, const ScanOperator& op) {
    exscan_start(send, recv, count, op)->wait();
  }
  virtual void barrier() = 0;

  // Ranks with the same color form a new Comm, ordered by key (then by rank here).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
  // Ends the whole job (every rank) with a message; never returns.
  [[noreturn]] virtual void abort(const std::string& message, int code = 1) = 0;

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }
  // Adds a communicator's counts to this one's and resets them there: for a group split off to serve this one
  // (a reversed order for a scan), whose traffic belongs to this one's.
  void take_stats(Comm& helper);

 protected:
  CommStats stats_;
  void count(CommKind kind, uint64_t sent, uint64_t received);
};

// The world of this process: MPI's COMM_WORLD when an MPI launcher started it (MPI_Init on first call;
// MPI_Finalize at exit), else a single-process Comm (MPI is not started at all).
// Under MPI a rank that fails must call abort(), never just return or exit non-zero: at exit it runs
// MPI_Finalize, which waits for every other rank, and if they wait in a collective for it the job hangs
// (tests/mpi/abort_helper.cpp, mode exit). Errors inside MPI calls end the job (MPI_ERRORS_ARE_FATAL).
Comm& comm_world();
// The MPI library's version string (callable before MPI starts), or "none".
std::string mpi_library_version();
std::unique_ptr<Comm> make_single_comm();

}  // namespace lasp
