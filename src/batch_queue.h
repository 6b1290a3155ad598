#ifndef TAOTOKEN_SRC_BATCH_QUEUE_H
#define TAOTOKEN_SRC_BATCH_QUEUE_H

// The write path of the database recorders: record() enqueues and returns;
// one worker thread takes batches and writes them. A batch that cannot be
// written (the database went away) stays queued and is retried with
// backoff, so nothing is lost while the queue has room. A full queue makes
// record() wait briefly, then drop the record, count it and report it.
// Destruction writes everything queued (a slow database is waited for);
// with the database unreachable it stops after drain_timeout or two failed
// attempts and reports what was lost.
//
// No allocation per record: records are copied into recycled slots (a
// slot's strings and vectors keep their capacity), and the writer takes
// everything queued at once by swapping the producers' slot vector with
// its own. So in the steady state no memory is allocated on one thread and
// freed on the other; only an oversized buffer (shed) or a slot vector
// grown by a backlog (trim) is freed by the writer.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
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

// A run of records handed to the writer (valid during the call).
struct RecordSpan {
  const RequestRecord* first = nullptr;
  std::size_t count = 0;
  std::size_t size() const noexcept { return count; }
  const RequestRecord& operator[](std::size_t i) const noexcept { return first[i]; }
  const RequestRecord* begin() const noexcept { return first; }
  const RequestRecord* end() const noexcept { return first + count; }
};

// Calls a recorder's error hook, if any; what it throws is swallowed (a
// hook must not take a writer down).
inline void call_error_hook(const RecorderErrorHook& hook, std::string_view who,
                            std::string_view message) noexcept {
  if (!hook) return;
  try {
    hook(who, message);
  } catch (...) {
  }
}

// After a batch went in row by row because the database refused it:
// reports each row it refused as data (index into `batch`, the reason) and
// returns how many. A pass that refused none means the batch's failure is
// not explained by its rows, which is reported too.
inline std::size_t report_refused(const RecorderErrorHook& hook, std::string_view who, RecordSpan batch,
                                  const std::vector<std::pair<std::size_t, std::string>>& refused,
                                  const std::string& batch_error) {
  for (const auto& [i, why] : refused)
    call_error_hook(hook, who, "record " + batch[i].request_id + " dropped: " + why);
  if (refused.empty())
    call_error_hook(hook, who, "the batch was refused, but each of its rows went in on its own: " + batch_error);
  return refused.size();
}

class BatchQueue {
 public:
  // write returns an empty string on success, else the error (the batch is
  // then retried after a backoff).
  using Writer = std::function<std::string(RecordSpan)>;

  BatchQueue(std::string name, BatchQueueOptions options, Writer writer, RecorderErrorHook on_error)
      : name_(std::move(name)), opts_(options), writer_(std::move(writer)), on_error_(std::move(on_error)) {
    if (opts_.batch_size == 0) opts_.batch_size = 1;
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
    if (queued_locked() >= opts_.capacity &&
        !space_cv_.wait_for(lock, opts_.full_wait, [this] { return queued_locked() < opts_.capacity; })) {
      ++dropped_;
      lock.unlock();
      report("queue full: a usage record was dropped (raise the queue capacity or fix the database)");
      return;
    }
    // Copy-assigning into a used slot reuses its buffers.
    if (incoming_n_ < incoming_.size()) incoming_[incoming_n_] = r;
    else incoming_.push_back(r);
    ++incoming_n_;
    ++accepted_;
    // Wake the writer when there is something to start on or a full batch;
    // in between it is lingering for the batch to fill anyway.
    if (incoming_n_ == 1 || incoming_n_ == opts_.batch_size) cv_.notify_all();
  }

  // Waits until everything queued so far is written, or the timeout passes,
  // or the database failed twice meanwhile (an unreachable database must not
  // hold a shutdown for the whole timeout); true when the queue was drained.
  bool flush(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    // Everything accepted so far must be written (or lost at a stop);
    // records refused by a full queue were never accepted.
    const std::uint64_t target = accepted_;
    const std::uint64_t failures_before = failures_;
    ++flushing_;
    cv_.notify_all();
    struct Done {
      BatchQueue* q;
      ~Done() { --q->flushing_; }
    } done{this};
    return done_cv_.wait_for(lock, timeout, [&] {
      return finished_locked() >= target || failures_ >= failures_before + 2;
    }) && finished_locked() >= target;
  }

  std::size_t dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_;
  }
  std::size_t pending() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_locked();
  }

 private:
  // Records accepted and not yet written or dropped.
  std::size_t queued_locked() const { return incoming_n_ + (work_n_ - work_pos_); }
  // Accepted records that are done with: written, or lost at a stop.
  std::uint64_t finished_locked() const { return written_ + lost_; }

  void report(const std::string& message) { call_error_hook(on_error_, name_, message); }

  // After a drain, a slot vector that grew far beyond a batch (a backlog
  // while the database was away) gives its memory back.
  void trim(std::vector<RequestRecord>& slots) const {
    if (slots.size() > 4 * opts_.batch_size) {
      slots.resize(opts_.batch_size);
      slots.shrink_to_fit();
    }
  }

  // A written slot keeps its buffers for the next record, but not a large
  // one (a request summary with message text, a long error message): the
  // slots would otherwise hold the largest record ever seen, many times.
  static void shed(RequestRecord& r) {
    constexpr std::size_t kKeep = 4096;
    if (r.request_summary && r.request_summary->capacity() > kKeep) r.request_summary.reset();
    if (r.error_message.capacity() > kKeep) std::string().swap(r.error_message);
    if (r.tags.capacity() > 64) decltype(r.tags)().swap(r.tags);
  }

  void run() {
    std::chrono::milliseconds backoff{100};
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (work_pos_ == work_n_) {
        // Everything taken is written: take what the producers queued.
        cv_.wait(lock, [this] { return stopping_ || incoming_n_ > 0; });
        if (incoming_n_ == 0) return;  // stopping and drained
        if (incoming_n_ < opts_.batch_size && !stopping_ && flushing_ == 0)
          cv_.wait_for(lock, opts_.linger,
                       [this] { return incoming_n_ >= opts_.batch_size || stopping_ || flushing_ > 0; });
        trim(work_);
        std::swap(work_, incoming_);
        work_n_ = incoming_n_;
        work_pos_ = 0;
        incoming_n_ = 0;
      }
      const std::size_t n = std::min(work_n_ - work_pos_, opts_.batch_size);
      const RecordSpan batch{work_.data() + work_pos_, n};
      lock.unlock();
      std::string err;
      try {
        err = writer_(batch);
      } catch (const std::exception& e) {
        err = e.what();
        if (err.empty()) err = "the writer failed";
      } catch (...) {
        err = "the writer failed";
      }
      if (err.empty())
        for (std::size_t i = 0; i < n; ++i) shed(work_[work_pos_ + i]);
      lock.lock();
      if (err.empty()) {
        work_pos_ += n;
        written_ += n;
        backoff = std::chrono::milliseconds(100);
        space_cv_.notify_all();
        done_cv_.notify_all();
        continue;
      }
      // The batch stays where it is, in order, and is retried later.
      ++failures_;
      done_cv_.notify_all();
      lock.unlock();
      report(err);
      lock.lock();
      cv_.wait_for(lock, backoff, [this] { return stopping_; });
      if (stopping_) {
        const std::size_t lost = queued_locked();
        dropped_ += lost;
        lost_ += lost;
        work_pos_ = work_n_;
        incoming_n_ = 0;
        if (lost > 0) {
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
  // Producers copy into incoming_[0, incoming_n_); the writer swaps the
  // vector with work_ and writes work_[work_pos_, work_n_) in batches. Both
  // are guarded by mu_ (the writer reads its slots unlocked while it alone
  // owns them).
  std::vector<RequestRecord> incoming_, work_;
  std::size_t incoming_n_ = 0, work_n_ = 0, work_pos_ = 0;
  std::uint64_t accepted_ = 0;  // records taken by push()
  std::uint64_t written_ = 0;
  std::uint64_t lost_ = 0;      // accepted, then lost at a stop with the database away
  std::size_t dropped_ = 0;     // lost_ plus the records a full queue refused
  std::uint64_t failures_ = 0;
  int flushing_ = 0;  // flush() callers waiting: the writer does not linger
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif
