#ifndef TAOTOKEN_POSTGRES_RECORDER_H
#define TAOTOKEN_POSTGRES_RECORDER_H

/// @file
/// Usage records in PostgreSQL (component `taotoken::postgres`): one
/// database shared by a fleet of processes.

#include <memory>
#include <string>
#include <vector>

#include "taotoken/sqlite_recorder.h"  // UsageQuery, DatabaseRecorderOptions
#include "taotoken/usage.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Writes records to PostgreSQL (libpq) from a worker thread, one `COPY`
/// per batch. A record the server refuses as data (SQLSTATE class 22 or 23)
/// is dropped, counted in `dropped()` and reported; the rest of its batch
/// lands; any other failure keeps the whole batch queued for a retry, so no
/// row is lost or written twice. The schema (same columns as SQLite) is
/// created and migrated under an advisory lock, so many processes may start
/// against one database at once. When the server goes away, records stay
/// in the bounded queue and the recorder reconnects with backoff (100 ms
/// doubling to 5 s); requests are never affected. Thread-safe.
class PostgresRecorder final : public UsageRecorder {
 public:
  /// `conninfo`: a libpq connection string ("host=… dbname=… user=…") or URI.
  explicit PostgresRecorder(std::string conninfo, DatabaseRecorderOptions options = {});
  ~PostgresRecorder() override;
  void record(const RequestRecord& record) override;
  void flush() override;
  std::size_t dropped() const;

  static Result<std::vector<RequestRecord>> recent(const std::string& conninfo, std::size_t limit);
  static Result<UsageSummary> summarize(const std::string& conninfo, const UsageQuery& query = {});

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_POSTGRES_RECORDER_H
