// The database recorders' write path on its own (detail::BatchQueue): every
// record written exactly once and in order, through failures, backlogs far
// larger than a batch and a full queue; slots recycled without holding on to
// large buffers. (With real SQLite files and PostgreSQL: tests/integration.)
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "batch_queue.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {
RequestRecord numbered(int i) {
  RequestRecord r;
  r.request_id = "req_" + std::to_string(i);
  r.model = "m";
  return r;
}

// A writer that keeps what it was given and fails while `failing` is set.
struct Sink {
  std::mutex mu;
  std::vector<std::string> ids;
  std::vector<std::size_t> batch_sizes;
  std::atomic<int> failing{0};
  std::atomic<int> calls{0};
  std::string write(detail::RecordSpan batch) {
    ++calls;
    if (failing > 0) {
      --failing;
      return "database unreachable";
    }
    std::lock_guard<std::mutex> lock(mu);
    batch_sizes.push_back(batch.size());
    for (const auto& r : batch) ids.push_back(r.request_id);
    return {};
  }
};

detail::BatchQueueOptions fast(std::size_t capacity, std::size_t batch) {
  detail::BatchQueueOptions o;
  o.capacity = capacity;
  o.batch_size = batch;
  o.full_wait = 1ms;
  o.max_backoff = 5ms;
  o.linger = 1ms;
  return o;
}
}  // namespace

TEST_CASE("batch queue: every record written once, in order, from many threads") {
  Sink sink;
  std::vector<std::string> errors;
  {
    detail::BatchQueue q("t", fast(100000, 7), [&](detail::RecordSpan b) { return sink.write(b); },
                         [&](std::string_view, std::string_view m) { errors.emplace_back(m); });
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 500; ++i) q.push(numbered(t * 1000 + i));
      });
    for (auto& th : threads) th.join();
    CHECK(q.flush(10s));
    CHECK(q.pending() == 0);
  }
  CHECK(errors.empty());
  REQUIRE(sink.ids.size() == 2000);
  for (std::size_t b : sink.batch_sizes) CHECK(b <= 7);
  // Per thread, its records arrive in the order it pushed them.
  for (int t = 0; t < 4; ++t) {
    int last = -1;
    for (const auto& id : sink.ids) {
      const int n = std::stoi(id.substr(4));
      if (n / 1000 != t) continue;
      CHECK(n % 1000 == last + 1);
      last = n % 1000;
    }
    CHECK(last == 499);
  }
}

TEST_CASE("batch queue: a failing writer keeps the batch and retries it; nothing lost, nothing doubled") {
  Sink sink;
  std::atomic<int> reported{0};
  detail::BatchQueue q("t", fast(100000, 10), [&](detail::RecordSpan b) { return sink.write(b); },
                       [&](std::string_view, std::string_view) { ++reported; });
  sink.failing = 3;
  for (int i = 0; i < 95; ++i) q.push(numbered(i));
  // A backlog while the writer fails (many batches, far more than a batch).
  for (int i = 95; i < 1000; ++i) q.push(numbered(i));
  // flush gives up after two failures; later ones succeed.
  while (!q.flush(10s)) {
  }
  CHECK(reported == 3);
  REQUIRE(sink.ids.size() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(sink.ids[static_cast<std::size_t>(i)] == "req_" + std::to_string(i));
  // Recycled slots: a second round is written just the same.
  for (int i = 1000; i < 1100; ++i) q.push(numbered(i));
  CHECK(q.flush(10s));
  REQUIRE(sink.ids.size() == 1100);
  CHECK(sink.ids.back() == "req_1099");
  CHECK(q.dropped() == 0);
}

TEST_CASE("batch queue: a full queue drops and reports; destruction with the database away reports the rest") {
  Sink sink;
  sink.failing = 1 << 30;  // never reachable
  std::vector<std::string> errors;
  std::mutex mu;
  {
    detail::BatchQueue q("t", fast(5, 2), [&](detail::RecordSpan b) { return sink.write(b); },
                         [&](std::string_view, std::string_view m) {
                           std::lock_guard<std::mutex> lock(mu);
                           errors.emplace_back(m);
                         });
    for (int i = 0; i < 8; ++i) q.push(numbered(i));
    CHECK(q.dropped() == 3);  // capacity 5: taken-but-unwritten records count too
    CHECK(q.pending() == 5);
    CHECK_FALSE(q.flush(50ms));
  }
  CHECK(sink.ids.empty());
  std::size_t full = 0, lost = 0;
  for (const auto& e : errors) {
    if (e.find("queue full") != std::string::npos) ++full;
    if (e.find("5 records not written") != std::string::npos) ++lost;
  }
  CHECK(full == 3);
  CHECK(lost == 1);
}

TEST_CASE("batch queue: slots do not keep a large request summary or error message") {
  Sink sink;
  std::vector<std::size_t> caps;  // per record written: its buffers' capacity
  detail::BatchQueue q(
      "t", fast(1000, 4),
      [&](detail::RecordSpan b) {
        for (const auto& r : b)
          caps.push_back((r.request_summary ? r.request_summary->capacity() : 0) + r.error_message.capacity());
        return sink.write(b);
      },
      {});
  RequestRecord big = numbered(0);
  big.request_summary = std::string(1 << 20, 'x');
  big.error_message = std::string(1 << 20, 'e');
  q.push(big);
  CHECK(q.flush(10s));
  // Slots go back and forth between the producers and the writer: after a
  // few rounds a small record has been copied into the slot that held the
  // big one, and must not have inherited its megabytes.
  RequestRecord small = numbered(1);
  small.request_summary = std::string("{}");
  for (int round = 0; round < 4; ++round) {
    q.push(small);
    CHECK(q.flush(10s));
  }
  REQUIRE(caps.size() == 5);
  CHECK(caps[0] >= (2u << 20));
  for (std::size_t i = 1; i < caps.size(); ++i) CHECK(caps[i] < 4096);
}

TEST_CASE("batch queue: flush() is not satisfied by records a full queue refused") {
  // The writer is held until released, so nothing can be written.
  std::mutex gate;
  gate.lock();
  std::atomic<int> written{0};
  detail::BatchQueue q(
      "t", fast(4, 4),
      [&](detail::RecordSpan b) {
        std::lock_guard<std::mutex> hold(gate);
        written += static_cast<int>(b.size());
        return std::string();
      },
      [](std::string_view, std::string_view) {});
  for (int i = 0; i < 4; ++i) q.push(numbered(i));  // accepted; the writer is stuck on them
  // A flush waits for those 4; meanwhile 4 more are refused (the queue is
  // full). The refusals must not count as progress.
  auto flushed = std::async(std::launch::async, [&] { return q.flush(300ms); });
  for (int i = 4; i < 8; ++i) q.push(numbered(i));
  CHECK(q.dropped() == 4);
  CHECK_FALSE(flushed.get());  // nothing was written
  gate.unlock();
  CHECK(q.flush(10s));
  CHECK(written == 4);
}

TEST_CASE("batch queue: a writer that throws (anything, or an empty message) has its batch retried, not counted") {
  std::atomic<int> calls{0};
  std::vector<std::string> ids;
  std::vector<std::string> errors;
  std::mutex mu;
  {
    detail::BatchQueue q(
        "t", fast(100, 10),
        [&](detail::RecordSpan b) -> std::string {
          const int c = calls++;
          if (c == 0) throw std::runtime_error("");
          if (c == 1) throw 42;
          std::lock_guard<std::mutex> lock(mu);
          for (const auto& r : b) ids.push_back(r.request_id);
          return {};
        },
        [&](std::string_view, std::string_view m) {
          std::lock_guard<std::mutex> lock(mu);
          errors.emplace_back(m);
        });
    for (int i = 0; i < 3; ++i) q.push(numbered(i));
    while (!q.flush(10s)) {
    }
  }
  REQUIRE(ids.size() == 3);
  CHECK(ids[0] == "req_0");
  REQUIRE(errors.size() == 2);
  CHECK(errors[0] == "the writer failed");
  CHECK(errors[1] == "the writer failed");
}
