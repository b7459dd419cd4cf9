// Comm pieces common to every implementation, and the single-process Comm (a world of one rank: every
// collective is a copy, nothing crosses a network, so every byte count stays 0; calls are still counted).
#include "comm/comm.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "core/check.h"

namespace lasp {

const char* to_string(CommKind kind) {
  switch (kind) {
    case CommKind::all_gather: return "all_gather";
    case CommKind::reduce_scatter: return "reduce_scatter";
    case CommKind::all_reduce: return "all_reduce";
    case CommKind::send_recv: return "send_recv";
    case CommKind::all_to_all: return "all_to_all";
    case CommKind::scan: return "scan";
  }
  return "unknown";
}

uint64_t CommStats::total_sent() const {
  uint64_t total = 0;
  for (int k = 0; k < kCommKinds; ++k) total += bytes_sent[k];
  return total;
}

uint64_t CommStats::total_received() const {
  uint64_t total = 0;
  for (int k = 0; k < kCommKinds; ++k) total += bytes_received[k];
  return total;
}

void Comm::take_stats(Comm& helper) {
  for (int k = 0; k < kCommKinds; ++k) {
    stats_.bytes_sent[k] += helper.stats_.bytes_sent[k];
    stats_.bytes_received[k] += helper.stats_.bytes_received[k];
    stats_.calls[k] += helper.stats_.calls[k];
  }
  stats_.seconds += helper.stats_.seconds;
  helper.reset_stats();
}

void Comm::count(CommKind kind, uint64_t sent, uint64_t received) {
  const int k = static_cast<int>(kind);
  stats_.bytes_sent[k] += sent;
  stats_.bytes_received[k] += received;
  stats_.calls[k] += 1;
}

namespace {

// memmove: the caller may pass the same buffer (in place).
void copy_floats(float* dst, const float* src, size_t count) {
  if (count != 0 && dst != src) std::memmove(dst, src, count * sizeof(float));
}

class DoneRequest final : public CommRequest {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SingleComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

  void all_gather(const float* send, float* recv, size_t count) override {
    copy_floats(recv, send, count);
    count_zero(CommKind::all_gather);
  }
  std::unique_ptr<CommRequest> all_gather_start(const float* send, float* recv, size_t count) override {
    all_gather(send, recv, count);
    return std::make_unique<DoneRequest>();
  }
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    copy_floats(recv, send, count);
    count_zero(CommKind::reduce_scatter);
  }
  std::unique_ptr<CommRequest> reduce_scatter_start(const float* send, float* recv, size_t count) override {
    reduce_scatter(send, recv, count);
    return std::make_unique<DoneRequest>();
  }
  void all_reduce(float* data, size_t count) override { count_zero(CommKind::all_reduce); }
  void all_reduce(double* data, size_t count) override { count_zero(CommKind::all_reduce); }
  std::unique_ptr<CommRequest> all_reduce_start(float* data, size_t count) override {
    all_reduce(data, count);
    return std::make_unique<DoneRequest>();
  }
  void send_recv(const float* send, size_t send_count, int dest, float* recv, size_t recv_count,
                 int source) override {
    LASP_CHECK(dest == -1 || dest == 0, "send_recv: dest must be -1 or 0 in a world of 1 rank, got {}", dest);
    LASP_CHECK(source == -1 || source == 0, "send_recv: source must be -1 or 0 in a world of 1 rank, got {}",
               source);
    LASP_CHECK(dest == source, "send_recv to self: dest ({}) and source ({}) must both be 0 or both -1", dest,
               source);
    if (dest == 0) {
      LASP_CHECK(send_count == recv_count, "send_recv to self: send_count ({}) must equal recv_count ({})",
                 send_count, recv_count);
      copy_floats(recv, send, send_count);
    }
    count_zero(CommKind::send_recv);
  }
  std::unique_ptr<CommRequest> send_recv_start(const float* send, size_t send_count, int dest, float* recv,
                                               size_t recv_count, int source) override {
    send_recv(send, send_count, dest, recv, recv_count, source);
    return std::make_unique<DoneRequest>();
  }
  void all_to_all(const float* send, float* recv, size_t count) override {
    copy_floats(recv, send, count);
    count_zero(CommKind::all_to_all);
  }
  std::unique_ptr<CommRequest> all_to_all_start(const float* send, float* recv, size_t count) override {
    all_to_all(send, recv, count);
    return std::make_unique<DoneRequest>();
  }
  std::unique_ptr<CommRequest> exscan_start(const float*, float* recv, size_t count, const ScanOperator& op) override {
    for (size_t i = 0; i < count; ++i) op.identity(recv + i * op.floats());
    count_zero(CommKind::scan);
    return std::make_unique<DoneRequest>();
  }
  void barrier() override {}

  std::unique_ptr<Comm> split(int color, int key) override {
    LASP_CHECK(color >= 0, "split: color must be >= 0, got {}", color);
    return std::make_unique<SingleComm>();
  }

  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fflush(stdout);
    std::cout.flush();
    std::fprintf(stderr, "lasp: %s\n", message.c_str());
    std::fflush(stderr);
    std::_Exit(code);
  }

 private:
  void count_zero(CommKind kind) { count(kind, 0, 0); }
};

}  // namespace

std::unique_ptr<Comm> make_single_comm() { return std::make_unique<SingleComm>(); }

}  // namespace lasp
