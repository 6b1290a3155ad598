#ifndef TAOTOKEN_SRC_BATCH_QUEUE_H
#define TAOTOKEN_SRC_BATCH_QUEUE_H

// The write path of the database recorders: record() enqueues and returns;
// one worker thread takes batches and writes them. A batch that cannot be
// written (the database went away) stays queued and is retried with
// backoff, so nothing is lost while the queue has room. A full queue makes
// record() wait briefly, then drop the record, count it and report it.
// Destruction drains the queue (bounded by drain_timeout).

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "taotoken/usage.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

struct BatchQueueOptions {
  std::size_t capacity = 100000;
  std::size_t batch_size = 256;
  std::chrono::milliseconds full_wait{50};
  std::chrono::milliseconds drain_timeout{std::chrono::seconds(30)};
  std::chrono::milliseconds max_backoff{std::chrono::seconds(5)};
  // How long the writer waits for a batch to fill before writing a smaller
  // one: one transaction per record would cost more than the request.
  std::chrono::milliseconds linger{std::chrono::milliseconds(20)};
};

class BatchQueue {
 public:
  // write returns an empty string on success, else the error (the batch is
  // then retried after a backoff).
  using Writer = std::function<std::string(const std::vector<RequestRecord>&)>;

  BatchQueue(std::string name, BatchQueueOptions options, Writer writer, RecorderErrorHook on_error)
      : name_(std::move(name)), opts_(options), writer_(std::move(writer)), on_error_(std::move(on_error)) {
    worker_ = std::thread([this] { run(); });
  }

  ~BatchQueue() {
    flush(opts_.drain_timeout);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void push(const RequestRecord& r) {
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.size() >= opts_.capacity &&
        !space_cv_.wait_for(lock, opts_.full_wait, [this] { return queue_.size() < opts_.capacity; })) {
      ++dropped_;
      lock.unlock();
      report("queue full: a usage record was dropped (raise the queue capacity or fix the database)");
      return;
    }
    queue_.push_back(r);
    // Wake the writer when there is something to start on or a full batch;
    // in between it is lingering for the batch to fill anyway.
    if (queue_.size() == 1 || queue_.size() >= opts_.batch_size) cv_.notify_all();
  }

  // Waits until everything queued so far is written, or the timeout passes,
  // or the database failed twice meanwhile (an unreachable database must not
  // hold a shutdown for the whole timeout); true when the queue was drained.
  bool flush(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    const std::uint64_t target = enqueued_total_locked();
    const std::uint64_t failures_before = failures_;
    ++flushing_;
    cv_.notify_all();
    struct Done {
      BatchQueue* q;
      ~Done() { --q->flushing_; }
    } done{this};
    return done_cv_.wait_for(lock, timeout, [&] {
      return written_ + dropped_ >= target || failures_ >= failures_before + 2;
    }) && written_ + dropped_ >= target;
  }

  std::size_t dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_;
  }
  std::size_t pending() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }

 private:
  std::uint64_t enqueued_total_locked() const { return written_ + dropped_ + queue_.size() + in_flight_; }

  void report(const std::string& message) {
    if (!on_error_) return;
    try {
      on_error_(name_, message);
    } catch (...) {
    }
  }

  void run() {
    std::chrono::milliseconds backoff{100};
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      if (queue_.size() < opts_.batch_size && !stopping_ && flushing_ == 0)
        cv_.wait_for(lock, opts_.linger,
                     [this] { return queue_.size() >= opts_.batch_size || stopping_ || flushing_ > 0; });
      std::vector<RequestRecord> batch;
      const std::size_t n = std::min(queue_.size(), opts_.batch_size);
      batch.reserve(n);
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      in_flight_ = n;
      space_cv_.notify_all();
      lock.unlock();
      std::string err;
      try {
        err = writer_(batch);
      } catch (const std::exception& e) {
        err = e.what();
      }
      lock.lock();
      in_flight_ = 0;
      if (err.empty()) {
        written_ += n;
        backoff = std::chrono::milliseconds(100);
        done_cv_.notify_all();
        continue;
      }
      // Put the batch back in front, in order, and retry later.
      for (auto it = batch.rbegin(); it != batch.rend(); ++it) queue_.push_front(std::move(*it));
      ++failures_;
      done_cv_.notify_all();
      lock.unlock();
      report(err);
      lock.lock();
      cv_.wait_for(lock, backoff, [this] { return stopping_; });
      if (stopping_) {
        dropped_ += queue_.size();
        if (!queue_.empty()) {
          const auto lost = queue_.size();
          queue_.clear();
          lock.unlock();
          report("shutting down with the database unreachable: " + std::to_string(lost) + " records not written");
          lock.lock();
        }
        done_cv_.notify_all();
        return;
      }
      backoff = std::min(backoff * 2, opts_.max_backoff);
    }
  }

  std::string name_;
  BatchQueueOptions opts_;
  Writer writer_;
  RecorderErrorHook on_error_;
  mutable std::mutex mu_;
  std::condition_variable cv_, space_cv_, done_cv_;
  std::deque<RequestRecord> queue_;
  std::size_t in_flight_ = 0;
  std::uint64_t written_ = 0;
  std::size_t dropped_ = 0;
  std::uint64_t failures_ = 0;
  int flushing_ = 0;  // flush() callers waiting: the writer does not linger
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif
