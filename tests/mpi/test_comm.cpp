// Comm over MPI, run under mpirun with 1..4 ranks (CTest comm_mpi_np*): exact values (integers held in
// floats), blocking and non-blocking forms, sub-groups, and the byte accounting of comm.h. Also the
// single-process Comm. Every rank runs every test; expectations are EXPECT_* (not ASSERT_*) around
// collectives so a failing rank never skips a collective the others are waiting in.
#include <gtest/gtest.h>

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "core/check.h"

namespace lasp {
namespace {

constexpr int kGather = static_cast<int>(CommKind::all_gather);
constexpr int kScatter = static_cast<int>(CommKind::reduce_scatter);
constexpr int kReduce = static_cast<int>(CommKind::all_reduce);
constexpr int kSendRecv = static_cast<int>(CommKind::send_recv);
constexpr int kAllToAll = static_cast<int>(CommKind::all_to_all);

// Awkward sizes: empty, one, odd, a few hundred.
const size_t kCounts[] = {0, 1, 3, 10, 257};

uint64_t peer_bytes(int w, size_t count) { return uint64_t(w - 1) * count * sizeof(float); }
uint64_t all_reduce_bytes(int w, size_t count, size_t element) { return 2 * uint64_t(w - 1) * count * element / w; }

// Something to do while a request is in flight.
double busy_work() {
  volatile double x = 0;
  for (int i = 0; i < 20000; ++i) x = x + 1e-3 * i;
  return x;
}

void expect_only_kind(const CommStats& s, int kind, uint64_t sent, uint64_t received, uint64_t calls) {
  for (int k = 0; k < kCommKinds; ++k) {
    const char* name = to_string(static_cast<CommKind>(k));
    EXPECT_EQ(s.bytes_sent[k], k == kind ? sent : 0) << name;
    EXPECT_EQ(s.bytes_received[k], k == kind ? received : 0) << name;
    EXPECT_EQ(s.calls[k], k == kind ? calls : 0) << name;
  }
  EXPECT_EQ(s.total_sent(), sent);
  EXPECT_EQ(s.total_received(), received);
}

TEST(CommStats, NamesAndTotals) {
  EXPECT_STREQ(to_string(CommKind::all_gather), "all_gather");
  EXPECT_STREQ(to_string(CommKind::reduce_scatter), "reduce_scatter");
  EXPECT_STREQ(to_string(CommKind::all_reduce), "all_reduce");
  EXPECT_STREQ(to_string(CommKind::send_recv), "send_recv");
  EXPECT_STREQ(to_string(CommKind::all_to_all), "all_to_all");
  EXPECT_STREQ(to_string(CommKind::scan), "scan");
  CommStats s;
  EXPECT_EQ(s.total_sent(), 0u);
  for (int k = 0; k < kCommKinds; ++k) s.bytes_sent[k] = 1u << k, s.bytes_received[k] = 10u * k;
  EXPECT_EQ(s.total_sent(), 63u);
  EXPECT_EQ(s.total_received(), 150u);
}

// ---------------------------------------------------------------- all_gather
void check_gather(const std::vector<float>& recv, int w, size_t count) {
  for (int r = 0; r < w; ++r)
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(recv[r * count + i], float(r * 1000 + i)) << "r " << r << " i " << i;
}

TEST(CommMpi, AllGather) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  for (size_t count : kCounts) {
    std::vector<float> send(count), recv(w * count, -1.f);
    for (size_t i = 0; i < count; ++i) send[i] = float(me * 1000 + i);
    c.reset_stats();
    c.all_gather(send.data(), recv.data(), count);
    check_gather(recv, w, count);
    expect_only_kind(c.stats(), kGather, peer_bytes(w, count), peer_bytes(w, count), 1);

    // In place: this rank's block already in recv.
    std::vector<float> inplace(w * count, -1.f);
    for (size_t i = 0; i < count; ++i) inplace[me * count + i] = float(me * 1000 + i);
    c.all_gather(inplace.data() + me * count, inplace.data(), count);
    check_gather(inplace, w, count);
  }
  // The example of comm.h on round numbers: 10 floats gathered on W ranks send 4 * 10 * (W - 1) bytes.
  std::vector<float> s10(10, float(me)), r10(10 * w);
  c.reset_stats();
  c.all_gather(s10.data(), r10.data(), 10);
  EXPECT_EQ(c.stats().bytes_sent[kGather], uint64_t(4 * 10 * (w - 1)));
}

TEST(CommMpi, AllGatherStart) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  for (size_t count : kCounts) {
    std::vector<float> send(count), recv(w * count, -1.f);
    for (size_t i = 0; i < count; ++i) send[i] = float(me * 1000 + i);
    c.reset_stats();
    auto req = c.all_gather_start(send.data(), recv.data(), count);
    // Counted at start.
    expect_only_kind(c.stats(), kGather, peer_bytes(w, count), peer_bytes(w, count), 1);
    busy_work();
    (void)req->test();
    req->wait();
    req->wait();  // idempotent
    EXPECT_TRUE(req->test());
    check_gather(recv, w, count);
  }
}

// ---------------------------------------------------------------- reduce_scatter
void fill_scatter(std::vector<float>& send, int me, int w, size_t count) {
  for (size_t j = 0; j < w * count; ++j) send[j] = float(me + j);
}
void check_scatter(const float* recv, int me, int w, size_t count) {
  // sum over r of (r + me * count + i)
  for (size_t i = 0; i < count; ++i)
    EXPECT_EQ(recv[i], float(w * (w - 1) / 2 + w * (me * count + i))) << "i " << i;
}

TEST(CommMpi, ReduceScatter) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  for (size_t count : kCounts) {
    std::vector<float> send(w * count), recv(count, -1.f);
    fill_scatter(send, me, w, count);
    c.reset_stats();
    c.reduce_scatter(send.data(), recv.data(), count);
    check_scatter(recv.data(), me, w, count);
    expect_only_kind(c.stats(), kScatter, peer_bytes(w, count), peer_bytes(w, count), 1);

    // In place: send == recv, the result lands in the first count floats.
    std::vector<float> inplace(w * count);
    fill_scatter(inplace, me, w, count);
    c.reduce_scatter(inplace.data(), inplace.data(), count);
    check_scatter(inplace.data(), me, w, count);

    std::vector<float> recv2(count, -1.f);
    auto req = c.reduce_scatter_start(send.data(), recv2.data(), count);
    EXPECT_EQ(c.stats().calls[kScatter], 3u);
    EXPECT_EQ(c.stats().bytes_sent[kScatter], 3 * peer_bytes(w, count));
    busy_work();
    (void)req->test();
    req->wait();
    check_scatter(recv2.data(), me, w, count);
  }
}

// ---------------------------------------------------------------- all_reduce
TEST(CommMpi, AllReduce) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  for (size_t count : kCounts) {
    std::vector<float> f(count);
    std::vector<double> d(count);
    for (size_t i = 0; i < count; ++i) f[i] = float(me * i + 1), d[i] = double(me) * 1e9 + i;  // d: beyond float
    c.reset_stats();
    c.all_reduce(f.data(), count);
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(f[i], float(i * (w * (w - 1) / 2) + w)) << "i " << i;
    expect_only_kind(c.stats(), kReduce, all_reduce_bytes(w, count, 4), all_reduce_bytes(w, count, 4), 1);

    c.reset_stats();
    c.all_reduce(d.data(), count);
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(d[i], double(w * (w - 1) / 2) * 1e9 + double(w) * i) << "i " << i;
    expect_only_kind(c.stats(), kReduce, all_reduce_bytes(w, count, 8), all_reduce_bytes(w, count, 8), 1);

    for (size_t i = 0; i < count; ++i) f[i] = float(me + 2 * i);
    c.reset_stats();
    auto req = c.all_reduce_start(f.data(), count);
    expect_only_kind(c.stats(), kReduce, all_reduce_bytes(w, count, 4), all_reduce_bytes(w, count, 4), 1);
    busy_work();
    while (!req->test()) {
    }
    req->wait();
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(f[i], float(w * (w - 1) / 2 + 2 * w * i)) << "i " << i;
  }
  // The formula on round numbers: 12 floats, W ranks: 2 (W-1) / W * 48 bytes.
  std::vector<float> x(12, 1.f);
  c.reset_stats();
  c.all_reduce(x.data(), 12);
  EXPECT_EQ(c.stats().bytes_sent[kReduce], uint64_t(2 * (w - 1) * 48 / w));
  EXPECT_EQ(x[0], float(w));
}

// Several requests in flight at once, completed out of order; a request destroyed while pending waits.
TEST(CommMpi, OverlappingRequests) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  const size_t count = 33;
  std::vector<float> send(count), gathered(w * count), sum(count, float(me));
  for (size_t i = 0; i < count; ++i) send[i] = float(me * 1000 + i);
  auto a = c.all_gather_start(send.data(), gathered.data(), count);
  auto b = c.all_reduce_start(sum.data(), count);
  busy_work();
  b->wait();
  a->wait();
  check_gather(gathered, w, count);
  for (size_t i = 0; i < count; ++i) EXPECT_EQ(sum[i], float(w * (w - 1) / 2));

  std::vector<float> sum2(count, 1.f);
  { auto pending = c.all_reduce_start(sum2.data(), count); }  // destructor waits
  for (size_t i = 0; i < count; ++i) EXPECT_EQ(sum2[i], float(w));
}

// ---------------------------------------------------------------- send_recv
TEST(CommMpi, SendRecvRing) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  const int next = (me + 1) % w, prev = (me - 1 + w) % w;
  for (size_t count : kCounts) {
    std::vector<float> send(count), recv(count, -1.f);
    for (size_t i = 0; i < count; ++i) send[i] = float(me * 100 + i);
    c.reset_stats();
    c.send_recv(send.data(), count, next, recv.data(), count, prev);
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(recv[i], float(prev * 100 + i));
    // A world of 1 sends to itself: nothing crosses the network.
    const uint64_t bytes = w > 1 ? count * 4 : 0;
    expect_only_kind(c.stats(), kSendRecv, bytes, bytes, 1);

    std::vector<float> recv2(count, -1.f);
    auto req = c.send_recv_start(send.data(), count, prev, recv2.data(), count, next);  // the other way round
    busy_work();
    (void)req->test();
    req->wait();
    EXPECT_TRUE(req->test());
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(recv2[i], float(next * 100 + i));
    expect_only_kind(c.stats(), kSendRecv, 2 * bytes, 2 * bytes, 2);
  }
}

TEST(CommMpi, SendRecvChainWithNoPeer) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  const int dest = me + 1 < w ? me + 1 : -1, source = me > 0 ? me - 1 : -1;
  // Different send and receive sizes: rank r sends r + 2 floats, receives (r - 1) + 2.
  const size_t send_count = me + 2, recv_count = source >= 0 ? source + 2 : 5;
  std::vector<float> send(send_count), recv(recv_count, -7.f);
  for (size_t i = 0; i < send_count; ++i) send[i] = float(me * 10 + i);
  for (int blocking = 1; blocking >= 0; --blocking) {
    std::fill(recv.begin(), recv.end(), -7.f);
    c.reset_stats();
    if (blocking) {
      c.send_recv(send.data(), send_count, dest, recv.data(), recv_count, source);
    } else {
      auto req = c.send_recv_start(send.data(), send_count, dest, recv.data(), recv_count, source);
      busy_work();
      req->wait();
    }
    for (size_t i = 0; i < recv_count; ++i) EXPECT_EQ(recv[i], source >= 0 ? float(source * 10 + i) : -7.f);
    expect_only_kind(c.stats(), kSendRecv, dest >= 0 ? send_count * 4 : 0, source >= 0 ? recv_count * 4 : 0, 1);
  }
  // Both -1: nothing at all.
  c.reset_stats();
  c.send_recv(nullptr, 0, -1, nullptr, 0, -1);
  expect_only_kind(c.stats(), kSendRecv, 0, 0, 1);
}

TEST(CommMpi, SendRecvBadPeerThrows) {
  Comm& c = comm_world();
  float x = 0;
  EXPECT_THROW(c.send_recv(&x, 1, c.size(), &x, 1, -1), Error);
  EXPECT_THROW(c.send_recv(&x, 1, -1, &x, 1, -2), Error);
  EXPECT_THROW(c.send_recv_start(&x, 1, -1, &x, 1, c.size()), Error);
}

// ---------------------------------------------------------------- all_to_all
void check_all_to_all(const std::vector<float>& recv, int me, int w, size_t count) {
  for (int s = 0; s < w; ++s)
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(recv[s * count + i], float(s * 1000 + me * 10 + i)) << s << " " << i;
}

TEST(CommMpi, AllToAll) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  for (size_t count : kCounts) {
    std::vector<float> send(w * count), recv(w * count, -1.f), recv2(w * count, -1.f);
    for (int d = 0; d < w; ++d)
      for (size_t i = 0; i < count; ++i) send[d * count + i] = float(me * 1000 + d * 10 + i);
    c.reset_stats();
    c.all_to_all(send.data(), recv.data(), count);
    check_all_to_all(recv, me, w, count);
    expect_only_kind(c.stats(), kAllToAll, peer_bytes(w, count), peer_bytes(w, count), 1);

    auto req = c.all_to_all_start(send.data(), recv2.data(), count);
    busy_work();
    (void)req->test();
    req->wait();
    check_all_to_all(recv2, me, w, count);
    expect_only_kind(c.stats(), kAllToAll, 2 * peer_bytes(w, count), 2 * peer_bytes(w, count), 2);
  }
}

// ---------------------------------------------------------------- contracts, barrier
// ---------------------------------------------------------------- exscan
// An affine map kept row by row, (g, s[width]): (g_a, s_a) then (g_b, s_b) = (g_a g_b, g_b s_a + s_b). Not
// commutative, so the scan's order shows.
class AffineRows final : public ScanOperator {
 public:
  explicit AffineRows(int width) : width_(width) {}
  size_t floats() const override { return 1 + size_t(width_); }
  void identity(float* e) const override {
    e[0] = 1.f;
    std::fill(e + 1, e + 1 + width_, 0.f);
  }
  void compose(const float* a, float* b) const override {
    for (int x = 1; x <= width_; ++x) b[x] = b[0] * a[x] + b[x];
    b[0] *= a[0];
  }

 private:
  int width_;
};

// Rank r receives the composition of ranks 0 .. r-1's maps in rank order, checked against a plain double
// fold of every rank's rows (which each rank can make: they come from the rank's seed); rank 0 the identity.
// Bytes: one composition in (ranks > 0) and one out (ranks < W-1).
TEST(CommMpi, ExscanAffineComposesInRankOrder) {
  Comm& c = comm_world();
  const int w = c.size(), r = c.rank();
  for (int width : {0, 1, 5, 64})
    for (size_t rows : {size_t(1), size_t(7), size_t(130)}) {
      auto rows_of = [&](int rank) {
        std::vector<float> x(rows * (1 + width));
        uint32_t state = uint32_t(100 * rank + width + rows) * 2654435761u + 1;
        for (float& v : x) v = float((state = state * 1664525u + 1013904223u) >> 8) / float(1 << 24) * 2.f - 1.f;
        for (size_t i = 0; i < rows; ++i) x[i * (1 + width)] = 0.5f + 0.5f * std::abs(x[i * (1 + width)]);  // gates
        return x;
      };
      std::vector<double> expect(rows * (1 + width), 0.0);
      for (size_t i = 0; i < rows; ++i) expect[i * (1 + width)] = 1.0;
      for (int s = 0; s < r; ++s) {  // (g_a, s_a) then (g_b, s_b) = (g_a g_b, g_b s_a + s_b)
        const std::vector<float> b = rows_of(s);
        for (size_t i = 0; i < rows; ++i) {
          double* a = expect.data() + i * (1 + width);
          const float* y = b.data() + i * (1 + width);
          for (int x = 1; x <= width; ++x) a[x] = y[0] * a[x] + y[x];
          a[0] *= y[0];
        }
      }
      const std::vector<float> mine = rows_of(r);
      std::vector<float> got(mine.size(), NAN);
      c.reset_stats();
      const AffineRows op(width);
      auto request = c.exscan_start(mine.data(), got.data(), rows, op);
      busy_work();
      request->wait();
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expect[i], 1e-5 * (1 + std::abs(expect[i]))) << i;
      const uint64_t bytes = rows * (1 + width) * sizeof(float);
      expect_only_kind(c.stats(), int(CommKind::scan), r + 1 < w ? bytes : 0, r > 0 ? bytes : 0, 1);
    }
}

TEST(CommMpi, CountsBeyondIntThrowBeforeSending) {
  Comm& c = comm_world();
  const size_t huge = size_t(INT_MAX) + 1;
  c.reset_stats();
  EXPECT_THROW(c.all_gather(nullptr, nullptr, huge), Error);
  EXPECT_THROW(c.all_reduce(static_cast<float*>(nullptr), huge), Error);
  EXPECT_THROW(c.all_reduce(static_cast<double*>(nullptr), huge), Error);
  EXPECT_THROW(c.reduce_scatter_start(nullptr, nullptr, huge), Error);
  EXPECT_THROW(c.send_recv(nullptr, huge, -1, nullptr, 0, -1), Error);
  EXPECT_THROW(c.all_to_all_start(nullptr, reinterpret_cast<float*>(64), huge), Error);
  EXPECT_EQ(c.stats().total_sent(), 0u);
  for (int k = 0; k < kCommKinds; ++k) EXPECT_EQ(c.stats().calls[k], 0u);
  try {
    c.all_gather(nullptr, nullptr, huge);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_gather"), std::string::npos) << e.what();
  }
  c.barrier();
}

TEST(CommMpi, WorldMatchesMpi) {
  Comm& c = comm_world();
  int r = -1, s = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  EXPECT_EQ(c.rank(), r);
  EXPECT_EQ(c.size(), s);
  EXPECT_EQ(&comm_world(), &c);
}

// ---------------------------------------------------------------- split
TEST(CommMpi, SplitByParity) {
  Comm& c = comm_world();
  const int w = c.size(), me = c.rank();
  const int color = me % 2;
  // key = -rank: the sub-group is ordered by descending world rank.
  auto sub = c.split(color, -me);
  std::vector<int> members;
  for (int r = w - 1; r >= 0; --r)
    if (r % 2 == color) members.push_back(r);
  const int sw = int(members.size());
  ASSERT_EQ(sub->size(), sw);  // no collective skipped: every rank fails alike
  const int srank = int(std::find(members.begin(), members.end(), me) - members.begin());
  EXPECT_EQ(sub->rank(), srank);

  c.reset_stats();
  std::vector<float> mine{float(me)}, all(sw, -1.f);
  sub->all_gather(mine.data(), all.data(), 1);
  for (int i = 0; i < sw; ++i) EXPECT_EQ(all[i], float(members[i]));

  float sum = float(me);
  auto req = sub->all_reduce_start(&sum, 1);
  busy_work();
  req->wait();
  EXPECT_EQ(sum, float(std::accumulate(members.begin(), members.end(), 0)));

  // Ring inside the sub-group.
  const int next = (srank + 1) % sw, prev = (srank - 1 + sw) % sw;
  float got = -1.f;
  sub->send_recv(mine.data(), 1, next, &got, 1, prev);
  EXPECT_EQ(got, float(members[prev]));

  // The sub-group has its own statistics; the world's stay untouched.
  EXPECT_EQ(sub->stats().calls[kGather], 1u);
  EXPECT_EQ(sub->stats().bytes_sent[kGather], peer_bytes(sw, 1));
  EXPECT_EQ(sub->stats().calls[kReduce], 1u);
  EXPECT_EQ(sub->stats().calls[kSendRecv], 1u);
  for (int k = 0; k < kCommKinds; ++k) EXPECT_EQ(c.stats().calls[k], 0u);

  // A split of the split, and a split where everyone keeps one color (same order as the world).
  auto solo = sub->split(sub->rank(), 0);
  EXPECT_EQ(solo->size(), 1);
  EXPECT_EQ(solo->rank(), 0);
  float v = 3.f;
  solo->all_reduce(&v, 1);
  EXPECT_EQ(v, 3.f);
  EXPECT_EQ(solo->stats().total_sent(), 0u);

  auto whole = c.split(0, me);
  EXPECT_EQ(whole->size(), w);
  EXPECT_EQ(whole->rank(), me);
  double dsum = 1.0;
  whole->all_reduce(&dsum, 1);
  EXPECT_EQ(dsum, double(w));
  whole->barrier();
  sub->barrier();
}

TEST(CommMpi, SplitNegativeColorThrows) {
  EXPECT_THROW(comm_world().split(-1, 0), Error);
}

// ---------------------------------------------------------------- single-process Comm
TEST(CommSingle, Behaviour) {
  auto c = make_single_comm();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> a{1, 2, 3}, b(3, -1.f);
  c->all_gather(a.data(), b.data(), 3);
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), -1.f);
  c->reduce_scatter(a.data(), b.data(), 3);
  EXPECT_EQ(b, a);
  c->all_reduce(b.data(), 3);
  EXPECT_EQ(b, a);
  std::vector<double> d{1.5, 2.5};
  c->all_reduce(d.data(), 2);
  EXPECT_EQ(d, (std::vector<double>{1.5, 2.5}));
  std::fill(b.begin(), b.end(), -1.f);
  c->send_recv(a.data(), 3, 0, b.data(), 3, 0);
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), -1.f);
  c->send_recv(a.data(), 3, -1, b.data(), 3, -1);
  EXPECT_EQ(b, std::vector<float>(3, -1.f));
  EXPECT_THROW(c->send_recv(a.data(), 3, 1, b.data(), 3, -1), Error);
  EXPECT_THROW(c->send_recv(a.data(), 3, -1, b.data(), 3, 1), Error);
  c->all_to_all(a.data(), b.data(), 3);
  EXPECT_EQ(b, a);
  c->barrier();
  std::vector<float> scanned(6, -1.f);
  c->exscan(a.data(), scanned.data(), 2, AffineRows(2));  // one rank: the identity (1, 0, 0) per row
  EXPECT_EQ(scanned, (std::vector<float>{1, 0, 0, 1, 0, 0}));

  std::fill(b.begin(), b.end(), -1.f);
  for (auto& req : {c->all_gather_start(a.data(), b.data(), 3), c->reduce_scatter_start(a.data(), b.data(), 3),
                    c->all_reduce_start(b.data(), 3), c->send_recv_start(a.data(), 3, 0, b.data(), 3, 0),
                    c->all_to_all_start(a.data(), b.data(), 3)}) {
    EXPECT_TRUE(req->test());
    req->wait();
    req->wait();
  }
  EXPECT_EQ(b, a);

  const CommStats& s = c->stats();
  EXPECT_EQ(s.total_sent(), 0u);
  EXPECT_EQ(s.total_received(), 0u);
  EXPECT_EQ(s.calls[kGather], 2u);
  EXPECT_EQ(s.calls[kScatter], 2u);
  EXPECT_EQ(s.calls[kReduce], 3u);
  EXPECT_EQ(s.calls[kSendRecv], 3u);  // the two throwing calls count nothing
  EXPECT_EQ(s.calls[kAllToAll], 2u);
  c->reset_stats();
  EXPECT_EQ(c->stats().calls[kReduce], 0u);

  auto sub = c->split(3, 7);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->stats().calls[kGather], 0u);
}

// On ranks other than 0, print only failures, each tagged with its rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is taken here: UnitTest::current_test_info() inside OnTestPartResult deadlocks
  // (gtest holds its mutex while it reports a part result).
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] FAILED %s at %s:%d\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace
}  // namespace lasp

int main(int argc, char** argv) {
  lasp::Comm& world = lasp::comm_world();  // MPI_Init before anything else
  ::testing::InitGoogleTest(&argc, argv);
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new lasp::RankFailurePrinter(world.rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  // Failing on any rank fails every rank, so mpirun's exit status cannot miss it.
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (world.rank() == 0 && any_failed && !failed) std::fprintf(stderr, "lasp_mpi_tests: a test failed on another rank\n");
  return any_failed;
}
