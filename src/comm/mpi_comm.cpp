// Comm over MPI (Open MPI). Errors inside MPI are fatal (MPI_ERRORS_ARE_FATAL): a failing call ends the
// whole job instead of returning a code nobody checks. Contract violations (counts that do not fit in
// an int, ranks out of range) throw lasp::Error before anything is sent.
//
// Byte accounting follows comm.h: logical volumes times sizeof(element), counted when a call starts.
// send_recv counts send_count when dest is a real rank and recv_count when source is one; a message to or
// from this same rank crosses no network and counts 0 bytes (so a world of 1 rank counts 0 everywhere,
// like make_single_comm()).
// The C API only: Open MPI's deprecated C++ bindings warn under -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <vector>

#include "comm/comm.h"
#include "core/check.h"

namespace lasp {

namespace {

int to_mpi_count(size_t count, const char* op) {
  LASP_CHECK(count <= static_cast<size_t>(INT_MAX),
             "{}: count {} does not fit in an MPI count (int, at most {}); split the operation", op, count,
             INT_MAX);
  return static_cast<int>(count);
}

// The logical volume of a gather/scatter-like collective: (W-1) * count elements.
uint64_t peer_bytes(int world, size_t count, size_t element) {
  return static_cast<uint64_t>(world - 1) * count * element;
}

// A ring all-reduce: 2 (W-1) / W * count elements each way.
uint64_t all_reduce_bytes(int world, size_t count, size_t element) {
  return 2 * static_cast<uint64_t>(world - 1) * count * element / static_cast<uint64_t>(world);
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

// Adds the wall time of a scope to a counter: the time a rank spends communicating.
struct ScopedTimer {
  double& total;
  double start = MPI_Wtime();
  ~ScopedTimer() { total += MPI_Wtime() - start; }
};

class MpiRequest final : public CommRequest {
 public:
  // done: runs once when the operation has completed (the request's own clean-up and finishing touches).
  explicit MpiRequest(double& seconds, std::function<void()> done = {}) : seconds_(seconds), on_done_(std::move(done)) {}
  MpiRequest(const MpiRequest&) = delete;
  MpiRequest& operator=(const MpiRequest&) = delete;
  ~MpiRequest() override {
    // The buffers belong to the caller: never leave MPI writing into them after the request is gone.
    if (!done_ && !mpi_finalized()) wait();
  }

  MPI_Request* add() {
    LASP_CHECK(n_ < 2, "MpiRequest holds at most 2 MPI requests");
    requests_[n_] = MPI_REQUEST_NULL;
    return &requests_[n_++];
  }

  void wait() override {
    if (done_) return;
    const ScopedTimer timer{seconds_};
    MPI_Waitall(n_, requests_, MPI_STATUSES_IGNORE);
    finish();
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    const ScopedTimer timer{seconds_};
    MPI_Testall(n_, requests_, &flag, MPI_STATUSES_IGNORE);
    if (flag) finish();
    return done_;
  }

 private:
  void finish() {
    done_ = true;
    if (on_done_) on_done_();
  }
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  int n_ = 0;
  bool done_ = false;
  double& seconds_;
  std::function<void()> on_done_;
};

// The ScanOperator of each exscan in flight, by its datatype (a contiguous run of op.floats() floats, made for
// that exscan and freed when it completes): MPI's reduction functions get no other context.
std::mutex scan_operators_mutex;
std::map<MPI_Datatype, const ScanOperator*> scan_operators;

// MPI's reduction function for exscan: inout = in then inout, element by element.
void compose_elements(void* in, void* inout, int* len, MPI_Datatype* type) {
  const ScanOperator* op = nullptr;
  {
    const std::lock_guard<std::mutex> lock(scan_operators_mutex);
    const auto it = scan_operators.find(*type);
    if (it != scan_operators.end()) op = it->second;
  }
  if (!op) MPI_Abort(MPI_COMM_WORLD, 1);  // never: every exscan's datatype is registered until it completes
  const size_t n = op->floats();
  for (int i = 0; i < *len; ++i)
    op->compose(static_cast<const float*>(in) + i * n, static_cast<float*>(inout) + i * n);
}

MPI_Op scan_op() {
  static MPI_Op op = [] {
    MPI_Op made;
    MPI_Op_create(compose_elements, /*commute=*/0, &made);
    return made;
  }();
  return op;
}

class MpiComm final : public Comm {
 public:
  // owns: free the communicator on destruction (communicators made by split).
  MpiComm(MPI_Comm comm, bool owns) : comm_(comm), owns_(owns) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  ~MpiComm() override {
    if (owns_ && comm_ != MPI_COMM_NULL && !mpi_finalized()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // ---- all_gather: recv (W * count) <- every rank's send (count), in rank order.
  void all_gather(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_gather");
    count_peer(CommKind::all_gather, count);
    MPI_Allgather(gather_send(send, recv, count), n, MPI_FLOAT, recv, n, MPI_FLOAT, comm_);
  }
  std::unique_ptr<CommRequest> all_gather_start(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_gather_start");
    count_peer(CommKind::all_gather, count);
    auto request = std::make_unique<MpiRequest>(stats_.seconds);
    MPI_Iallgather(gather_send(send, recv, count), n, MPI_FLOAT, recv, n, MPI_FLOAT, comm_, request->add());
    return request;
  }

  // ---- reduce_scatter: recv (count) = sum over ranks of send[rank * count ..]. send == recv: in place.
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "reduce_scatter");
    count_peer(CommKind::reduce_scatter, count);
    MPI_Reduce_scatter_block(in_place(send, recv), recv, n, MPI_FLOAT, MPI_SUM, comm_);
  }
  std::unique_ptr<CommRequest> reduce_scatter_start(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "reduce_scatter_start");
    count_peer(CommKind::reduce_scatter, count);
    auto request = std::make_unique<MpiRequest>(stats_.seconds);
    MPI_Ireduce_scatter_block(in_place(send, recv), recv, n, MPI_FLOAT, MPI_SUM, comm_, request->add());
    return request;
  }

  // ---- all_reduce: in place sum.
  void all_reduce(float* data, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_reduce");
    tally(CommKind::all_reduce, all_reduce_bytes(size_, count, sizeof(float)),
          all_reduce_bytes(size_, count, sizeof(float)));
    MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_FLOAT, MPI_SUM, comm_);
  }
  void all_reduce(double* data, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_reduce");
    tally(CommKind::all_reduce, all_reduce_bytes(size_, count, sizeof(double)),
          all_reduce_bytes(size_, count, sizeof(double)));
    MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, MPI_SUM, comm_);
  }
  std::unique_ptr<CommRequest> all_reduce_start(float* data, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_reduce_start");
    tally(CommKind::all_reduce, all_reduce_bytes(size_, count, sizeof(float)),
          all_reduce_bytes(size_, count, sizeof(float)));
    auto request = std::make_unique<MpiRequest>(stats_.seconds);
    MPI_Iallreduce(MPI_IN_PLACE, data, n, MPI_FLOAT, MPI_SUM, comm_, request->add());
    return request;
  }

  // ---- send_recv: -1 = nothing to send / receive (MPI_PROC_NULL).
  void send_recv(const float* send, size_t send_count, int dest, float* recv, size_t recv_count,
                 int source) override {
    const ScopedTimer timer{stats_.seconds};
    const int ns = to_mpi_count(send_count, "send_recv (send)");
    const int nr = to_mpi_count(recv_count, "send_recv (recv)");
    const int d = peer(dest, "dest"), s = peer(source, "source");
    count_send_recv(send_count, dest, recv_count, source);
    MPI_Sendrecv(send, ns, MPI_FLOAT, d, kTag, recv, nr, MPI_FLOAT, s, kTag, comm_, MPI_STATUS_IGNORE);
  }
  std::unique_ptr<CommRequest> send_recv_start(const float* send, size_t send_count, int dest, float* recv,
                                               size_t recv_count, int source) override {
    const ScopedTimer timer{stats_.seconds};
    const int ns = to_mpi_count(send_count, "send_recv_start (send)");
    const int nr = to_mpi_count(recv_count, "send_recv_start (recv)");
    const int d = peer(dest, "dest"), s = peer(source, "source");
    count_send_recv(send_count, dest, recv_count, source);
    auto request = std::make_unique<MpiRequest>(stats_.seconds);
    // Post the receive first so a matching send finds it waiting.
    MPI_Irecv(recv, nr, MPI_FLOAT, s, kTag, comm_, request->add());
    MPI_Isend(send, ns, MPI_FLOAT, d, kTag, comm_, request->add());
    return request;
  }

  // ---- exscan: recv on rank r = the composition of ranks 0 .. r-1's elements; rank 0 the identity.
  std::unique_ptr<CommRequest> exscan_start(const float* send, float* recv, size_t elements,
                                            const ScanOperator& op) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(elements, "exscan_start");
    const size_t floats = elements * op.floats();
    LASP_CHECK(op.floats() > 0, "exscan_start: the operator's elements must hold at least one float");
    LASP_CHECK(floats == 0 || send + floats <= recv || recv + floats <= send,
               "exscan_start: send and recv buffers must not overlap ({} floats each)", floats);
    const uint64_t bytes = floats * sizeof(float);
    count(CommKind::scan, rank_ + 1 < size_ ? bytes : 0, rank_ > 0 ? bytes : 0);
    MPI_Datatype element;
    MPI_Type_contiguous(to_mpi_count(op.floats(), "exscan_start"), MPI_FLOAT, &element);
    MPI_Type_commit(&element);
    {
      const std::lock_guard<std::mutex> lock(scan_operators_mutex);
      scan_operators[element] = &op;
    }
    const bool first = rank_ == 0;
    auto request = std::make_unique<MpiRequest>(stats_.seconds, [element, recv, elements, &op, first]() mutable {
      {
        const std::lock_guard<std::mutex> lock(scan_operators_mutex);
        scan_operators.erase(element);
      }
      MPI_Type_free(&element);
      if (first)  // MPI leaves rank 0's result undefined
        for (size_t i = 0; i < elements; ++i) op.identity(recv + i * op.floats());
    });
    MPI_Iexscan(send, recv, n, element, scan_op(), comm_, request->add());
    return request;
  }

  // ---- all_to_all: recv[r * count ..] = rank r's send[rank * count ..]. Buffers must not overlap.
  void all_to_all(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_to_all");
    check_distinct(send, recv, count, "all_to_all");
    count_peer(CommKind::all_to_all, count);
    MPI_Alltoall(send, n, MPI_FLOAT, recv, n, MPI_FLOAT, comm_);
  }
  std::unique_ptr<CommRequest> all_to_all_start(const float* send, float* recv, size_t count) override {
    const ScopedTimer timer{stats_.seconds};
    const int n = to_mpi_count(count, "all_to_all_start");
    check_distinct(send, recv, count, "all_to_all_start");
    count_peer(CommKind::all_to_all, count);
    auto request = std::make_unique<MpiRequest>(stats_.seconds);
    MPI_Ialltoall(send, n, MPI_FLOAT, recv, n, MPI_FLOAT, comm_, request->add());
    return request;
  }

  void barrier() override { MPI_Barrier(comm_); }

  std::unique_ptr<Comm> split(int color, int key) override {
    const ScopedTimer timer{stats_.seconds};
    LASP_CHECK(color >= 0, "split: color must be >= 0, got {}", color);
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split(comm_, color, key, &sub);
    return std::make_unique<MpiComm>(sub, /*owns=*/true);
  }

  [[noreturn]] void abort(const std::string& message, int code) override {
    int world_rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    std::fflush(stdout);
    std::cout.flush();
    std::fprintf(stderr, "lasp: rank %d: %s\n", world_rank, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever does
  }

 private:
  static constexpr int kTag = 7;  // one tag: messages between a pair arrive in the order they were sent

  // all_gather in place: this rank's block already sits at recv + rank * count.
  const void* gather_send(const float* send, float* recv, size_t count) const {
    if (count != 0 && send == recv + static_cast<size_t>(rank_) * count) return MPI_IN_PLACE;
    return send;
  }
  static const void* in_place(const float* send, float* recv) {
    return send == recv ? MPI_IN_PLACE : static_cast<const void*>(send);
  }
  void check_distinct(const float* send, float* recv, size_t count, const char* op) const {
    const size_t n = static_cast<size_t>(size_) * count;
    const bool overlap = n != 0 && send < recv + n && recv < send + n;
    LASP_CHECK(!overlap, "{}: send and recv buffers must not overlap ({} floats each)", op, n);
  }
  int peer(int r, const char* what) const {
    LASP_CHECK(r >= -1 && r < size_, "send_recv: {} must be -1 or a rank in [0, {}), got {}", what, size_, r);
    return r == -1 ? MPI_PROC_NULL : r;
  }
  // Comm::count under another name: the parameters called count hide it.
  void tally(CommKind kind, uint64_t sent, uint64_t received) { Comm::count(kind, sent, received); }
  void count_peer(CommKind kind, size_t count) {
    const uint64_t bytes = peer_bytes(size_, count, sizeof(float));
    tally(kind, bytes, bytes);
  }
  void count_send_recv(size_t send_count, int dest, size_t recv_count, int source) {
    const uint64_t sent = (dest >= 0 && dest != rank_) ? send_count * sizeof(float) : 0;
    const uint64_t received = (source >= 0 && source != rank_) ? recv_count * sizeof(float) : 0;
    tally(CommKind::send_recv, sent, received);
  }

  MPI_Comm comm_;
  bool owns_;
  int rank_ = 0, size_ = 1;
};

void finalize_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized && !mpi_finalized()) MPI_Finalize();
}

}  // namespace

// Started by mpirun, srun or another PMI launcher? Without one, lasp is a single process and does not start
// MPI at all (a singleton MPI_Init costs ~100 ms and writes PMIx session files, which fail under a file-size
// limit and are left behind when the process is killed).
bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(var)) return true;
  return false;
}

Comm& comm_world() {
  if (!launched_by_mpi()) {
    static const std::unique_ptr<Comm> single = make_single_comm();
    return *single;
  }
  // Function-local statics: initialised once, thread-safe. MPI_Finalize is registered before the
  // MpiComm is constructed, so at exit the MpiComm goes first and MPI_Finalize after it.
  static const bool initialised = [] {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
      // exscan in log depth: Open MPI's non-blocking exscan is otherwise a chain of W-1 dependent hops
      // (libnbc's default, "linear"). A value set by the user is kept.
      setenv("OMPI_MCA_coll_libnbc_iexscan_algorithm", "recursive_doubling", 0);
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      LASP_CHECK(provided >= MPI_THREAD_FUNNELED, "MPI_Init_thread: needed MPI_THREAD_FUNNELED, got level {}",
                 provided);
      std::atexit(finalize_mpi);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    return true;
  }();
  (void)initialised;
  static MpiComm world(MPI_COMM_WORLD, /*owns=*/false);
  return world;
}

std::string mpi_library_version() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string v(version, size_t(length));
  const size_t cut = v.find_first_of(",\n");  // the first clause names the library and its version
  return cut == std::string::npos ? v : v.substr(0, cut);
}

}  // namespace lasp
