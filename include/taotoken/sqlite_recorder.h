#ifndef TAOTOKEN_SQLITE_RECORDER_H
#define TAOTOKEN_SQLITE_RECORDER_H

/// @file
/// Usage records in a SQLite file (component `taotoken::sqlite`).

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "taotoken/usage.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Settings of the database recorders.
struct DatabaseRecorderOptions {
  /// Records waiting to be written; when full, `record()` waits up to
  /// `full_queue_wait`, then drops the record, counts it (`dropped()`) and
  /// reports it through `on_error`.
  std::size_t queue_capacity = 100000;
  std::chrono::milliseconds full_queue_wait{50};
  /// Records written per transaction.
  std::size_t batch_size = 256;
  /// How long the destructor (and the client's shutdown) waits for the
  /// queue to drain when the database is unreachable.
  std::chrono::milliseconds drain_timeout{std::chrono::seconds(30)};
  /// Failures (cannot open, write errors, drops). Default: stderr.
  RecorderErrorHook on_error;
};

/// Writes records to one SQLite file (WAL mode) from a worker thread, in
/// batches. The schema is versioned (table `taotoken_schema`) and migrated on
/// open; indexes on time and model. `record()` only enqueues; when the file
/// cannot be opened or written (missing or read-only directory, disk full),
/// the error goes to `on_error`, records stay queued and are retried with
/// backoff. A record SQLite refuses as data (a constraint, a value too big)
/// is dropped, counted in `dropped()` and reported; the rest of its batch
/// lands. Thread-safe.
class SqliteRecorder final : public UsageRecorder {
 public:
  explicit SqliteRecorder(std::string path, DatabaseRecorderOptions options = {});
  ~SqliteRecorder() override;
  void record(const RequestRecord& record) override;
  /// Blocks until everything recorded so far is written (or drain_timeout).
  void flush() override;
  /// Records dropped because the queue was full (or unwritable at shutdown).
  std::size_t dropped() const;

  /// The newest `limit` records of the file, newest first.
  static Result<std::vector<RequestRecord>> recent(const std::string& path, std::size_t limit);
  /// A summary of the records in the window (by model, day and tag).
  static Result<UsageSummary> summarize(const std::string& path, const UsageQuery& query = {});
  /// The schema version this library writes.
  static int schema_version() noexcept;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SQLITE_RECORDER_H
