#ifndef TAOTOKEN_RECORDERS_H
#define TAOTOKEN_RECORDERS_H

/// @file
/// Built-in recorders of the core library: memory, JSONL file, callback.
/// (SQLite: taotoken/sqlite_recorder.h; PostgreSQL: taotoken/postgres_recorder.h.)

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "taotoken/usage.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Keeps the most recent records in a bounded ring and a running summary of
/// everything it has seen (what the proxy's admin view shows). Memory stays
/// bounded: totals are exact; percentiles are exact up to 10 000 requests per
/// group and estimated from a reservoir after; at most 1 000 groups per
/// breakdown (more go to "(other)").
/// Thread-safe.
class MemoryRecorder final : public UsageRecorder {
 public:
  explicit MemoryRecorder(std::size_t capacity = 1000);
  void record(const RequestRecord& record) override;
  /// Up to `n` records, newest first.
  std::vector<RequestRecord> recent(std::size_t n) const;
  /// The summary of every record seen since construction.
  UsageSummary summary() const;
  std::size_t count() const;

 private:
  mutable std::mutex mu_;
  std::size_t capacity_;
  std::vector<RequestRecord> ring_;  // when full, ring_[next_] is the oldest
  std::size_t next_ = 0;
  SummaryBuilder summary_;
  std::size_t count_ = 0;
};

/// Calls a function for each record (on the calling thread). Thread-safe if
/// the function is.
class CallbackRecorder final : public UsageRecorder {
 public:
  explicit CallbackRecorder(std::function<void(const RequestRecord&)> fn) : fn_(std::move(fn)) {}
  void record(const RequestRecord& record) override { fn_(record); }

 private:
  std::function<void(const RequestRecord&)> fn_;
};

/// Settings of a `JsonlRecorder`.
struct JsonlOptions {
  /// Rotate when the file would grow past this many bytes (0: never).
  std::size_t max_bytes = std::size_t{64} << 20;
  /// Rotate when the UTC day changes.
  bool daily = true;
  /// Rotated files kept: path.1 (newest) … path.N; older ones are deleted.
  int keep = 7;
  /// The clock used for daily rotation (tests inject one).
  std::function<std::chrono::system_clock::time_point()> now = [] { return std::chrono::system_clock::now(); };
  /// Lines waiting for the writer thread, in bytes, beyond which `record()`
  /// waits up to `full_queue_wait`, then drops the record, counts it
  /// (`dropped()`) and reports it (a disk that stopped taking writes).
  std::size_t max_pending_bytes = std::size_t{16} << 20;
  std::chrono::milliseconds full_queue_wait{50};
  /// How long `flush()` (and so destruction) waits for a writer stuck in
  /// a write.
  std::chrono::milliseconds drain_timeout{std::chrono::seconds(30)};
};

/// Appends one JSON object per line to a file, rotating by size and by day.
/// Only a regular file rotates: a FIFO, a device, a symbolic link
/// (`/dev/stdout` is one) or any other non-regular path is written to and
/// never renamed.
///
/// `record()` formats the line on the calling thread and appends it to a
/// buffer; a writer thread hands the buffer to the OS (`write(2)`) once it
/// holds 64 KiB or at least every 200 ms, and does the rotations, so a slow
/// or full disk never blocks or fails a request. `flush()` waits until
/// everything recorded so far is written (bounded by `drain_timeout`); the
/// client flushes its recorders when its last handle goes, so a clean
/// shutdown loses nothing; a crash may lose the last 200 ms. After
/// `record()` returns, the line (and a rotation it caused) reaches the file
/// within 200 ms, or at `flush()`. Write failures go to the error hook and
/// count the lost lines in `dropped()`; a line cut by a failed write is
/// truncated away (regular files) or ended before the next one, so every
/// line in the file parses. The hook runs on the writer thread or the
/// recording thread, one call at a time, and is never called once the
/// destructor has returned; a hook that records or flushes on the same
/// recorder is not called again from inside itself, and `flush()` from the
/// writer thread returns at once.
/// Thread-safe.
class JsonlRecorder final : public UsageRecorder {
 public:
  /// Opens (creates) the file. Throws `Error` (`invalid_argument`) when it
  /// cannot be opened.
  explicit JsonlRecorder(std::string path, JsonlOptions options = {}, RecorderErrorHook on_error = {});
  ~JsonlRecorder() override;
  JsonlRecorder(const JsonlRecorder&) = delete;
  JsonlRecorder& operator=(const JsonlRecorder&) = delete;
  void record(const RequestRecord& record) override;
  void flush() override;
  /// Records lost: the pending buffer was full, or their write failed.
  std::size_t dropped() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;  // shared with its writer thread
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_RECORDERS_H
