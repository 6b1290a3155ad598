#include "taotoken/sqlite_recorder.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include <atomic>
#include <cstdio>
#include <utility>
#include <vector>
#include <memory>

#include "batch_queue.h"
#include "record_sql.h"

TAOTOKEN_BEGIN_NAMESPACE

namespace {

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

std::string errmsg(sqlite3* db, std::string_view what) {
  return fmt::format("{}: {}", what, db ? sqlite3_errmsg(db) : "out of memory");
}

// Runs SQL without results; empty string on success.
std::string exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) return {};
  std::string out = err ? err : "unknown error";
  sqlite3_free(err);
  return out;
}

// Version 1 had no time-to-first-token, reasoning tokens, upstream cost or
// request summary columns; each migration moves one version forward.
// `id` is a plain rowid alias: ids grow with each insert (rows are never
// deleted by the library). Files made by 0.1.0 have AUTOINCREMENT, which
// behaves the same here and costs a sqlite_sequence update per statement.
constexpr const char* kCreateV1 = R"sql(
CREATE TABLE IF NOT EXISTS taotoken_requests (
  id INTEGER PRIMARY KEY,
  request_id TEXT NOT NULL, upstream_request_id TEXT, started_at TEXT NOT NULL, started_ms INTEGER NOT NULL,
  endpoint TEXT, requested_model TEXT, model TEXT, provider TEXT, streamed INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL, http_status INTEGER, error_kind TEXT, error_message TEXT,
  attempts INTEGER, attempts_json TEXT, latency_ms INTEGER,
  prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER, cached_tokens INTEGER,
  estimated_cost REAL, tags_json TEXT);
CREATE INDEX IF NOT EXISTS taotoken_requests_started_ms ON taotoken_requests(started_ms);
CREATE INDEX IF NOT EXISTS taotoken_requests_model ON taotoken_requests(model);
)sql";

constexpr const char* kMigrateV1toV2 = R"sql(
ALTER TABLE taotoken_requests ADD COLUMN ttft_ms INTEGER;
ALTER TABLE taotoken_requests ADD COLUMN reasoning_tokens INTEGER;
ALTER TABLE taotoken_requests ADD COLUMN upstream_cost REAL;
ALTER TABLE taotoken_requests ADD COLUMN request_summary TEXT;
)sql";

int read_version(sqlite3* db) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT version FROM taotoken_schema LIMIT 1", -1, &raw, nullptr) != SQLITE_OK) return 0;
  Stmt st(raw);
  return sqlite3_step(st.get()) == SQLITE_ROW ? sqlite3_column_int(st.get(), 0) : 0;
}

// Opens the file and brings its schema to kSchemaVersion; empty on success.
std::string open_db(const std::string& path, Db& db, bool create) {
  sqlite3* raw = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  db.reset(raw);
  if (rc != SQLITE_OK) return errmsg(raw, fmt::format("cannot open SQLite database '{}'", path));
  sqlite3_busy_timeout(raw, 5000);
  if (auto e = exec(raw, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"); !e.empty())
    return fmt::format("'{}': {}", path, e);
  if (auto e = exec(raw, "BEGIN IMMEDIATE"); !e.empty()) return fmt::format("'{}': {}", path, e);
  std::string err = exec(raw, "CREATE TABLE IF NOT EXISTS taotoken_schema (version INTEGER NOT NULL)");
  int version = err.empty() ? read_version(raw) : 0;
  if (err.empty() && version == 0) {
    err = exec(raw, kCreateV1);
    if (err.empty()) err = exec(raw, "INSERT INTO taotoken_schema(version) VALUES (1)");
    version = 1;
  }
  if (err.empty() && version == 1) {
    err = exec(raw, kMigrateV1toV2);
    if (err.empty()) err = exec(raw, "UPDATE taotoken_schema SET version = 2");
    version = 2;
  }
  if (err.empty()) err = detail::newer_schema_error(version);
  if (!err.empty()) {
    exec(raw, "ROLLBACK");
    return fmt::format("'{}': {}", path, err);
  }
  if (auto e = exec(raw, "COMMIT"); !e.empty()) return fmt::format("'{}': {}", path, e);
  return {};
}

// Runs the SELECT and hands each row to `fn`, one at a time (a window of
// millions of rows is never held in memory at once).
template <typename Fn>
std::optional<Error> for_each_row(const std::string& path, const std::string& where,
                                  const std::vector<std::int64_t>& args, const char* tail, Fn&& fn) {
  Db db;
  if (auto e = open_db(path, db, false); !e.empty()) return Error(ErrorKind::invalid_argument, e);
  std::string cols;
  for (const char* c : detail::kRecordColumns) cols += std::string(cols.empty() ? "" : ", ") + c;
  const std::string sql = fmt::format("SELECT {} FROM taotoken_requests {} {}", cols, where, tail);
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db.get(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK)
    return Error(ErrorKind::invalid_argument, errmsg(db.get(), "query failed"));
  Stmt st(raw);
  for (std::size_t i = 0; i < args.size(); ++i) sqlite3_bind_int64(st.get(), static_cast<int>(i + 1), args[i]);
  detail::SqlValues row(detail::kRecordColumns.size());
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    for (int i = 0; i < static_cast<int>(row.size()); ++i)
      detail::set_value(row[static_cast<std::size_t>(i)],
                        reinterpret_cast<const char*>(sqlite3_column_text(st.get(), i)));
    fn(row);
  }
  if (rc != SQLITE_DONE) return Error(ErrorKind::invalid_argument, errmsg(db.get(), "query failed"));
  return std::nullopt;
}

}  // namespace

class SqliteRecorder::Impl {
 public:
  Impl(std::string path, DatabaseRecorderOptions o)
      : path_(std::move(path)),
        on_error_(detail::error_hook_or_stderr(o.on_error)),
        drain_timeout_(o.drain_timeout),
        queue_("sqlite",
               detail::BatchQueueOptions{o.queue_capacity, o.batch_size, o.full_queue_wait, o.drain_timeout,
                                         std::chrono::seconds(5)},
               [this](detail::RecordSpan batch) { return write(batch); }, on_error_) {}

  detail::BatchQueue& queue() { return queue_; }
  // Records SQLite refused as data (dropped and reported).
  std::size_t refused() const { return refused_.load(); }
  std::chrono::milliseconds drain_timeout() const { return drain_timeout_; }

 private:
  // Rows per INSERT statement: one statement for many rows runs the
  // statement machinery once for all of them (about a third of the cost of
  // a row with one statement each).
  static constexpr std::size_t kRowsPerInsert = 16;

  // Runs on the queue's worker thread only.
  // A batch is one transaction of 16-row INSERTs. If SQLite refuses a row
  // as data (a constraint, a value too big), the rows go in one at a time
  // in one transaction: the refused ones are dropped, counted and reported,
  // the rest commit. Any other failure keeps the batch for a retry.
  std::string write(detail::RecordSpan batch) {
    if (!db_) {
      if (auto e = open_db(path_, db_, true); !e.empty()) {
        db_.reset();
        return e;
      }
      if (auto e = prepare_insert(kRowsPerInsert, insert_many_); !e.empty()) return reset_with(e);
      if (auto e = prepare_insert(1, insert_one_); !e.empty()) return reset_with(e);
    }
    if (auto e = exec(db_.get(), "BEGIN IMMEDIATE"); !e.empty()) return reset_with(e);
    std::size_t i = 0;
    int rc = SQLITE_OK;
    while (rc == SQLITE_OK && i < batch.size()) {
      const std::size_t rows = batch.size() - i >= kRowsPerInsert ? kRowsPerInsert : 1;
      rc = insert(detail::RecordSpan{&batch[i], rows});
      i += rows;
    }
    std::string err = rc == SQLITE_OK ? exec(db_.get(), "COMMIT") : errmsg(db_.get(), "insert");
    if (err.empty()) return {};
    exec(db_.get(), "ROLLBACK");
    if (!is_data_error(rc)) return reset_with(err);
    return insert_one_by_one(batch, err);
  }

  // What a retry will not change: the row itself is refused.
  static bool is_data_error(int rc) {
    const int primary = rc & 0xff;
    return primary == SQLITE_CONSTRAINT || primary == SQLITE_TOOBIG || primary == SQLITE_MISMATCH;
  }

  std::string insert_one_by_one(detail::RecordSpan batch, const std::string& batch_err) {
    std::vector<std::pair<std::size_t, std::string>> refused;
    std::vector<bool> skip(batch.size(), false);
    // A refusal usually backs out only its statement (ABORT, FAIL), but a
    // trigger's RAISE(ROLLBACK) or an ON CONFLICT ROLLBACK constraint ends
    // the whole transaction: then the pass starts over without the rows
    // refused so far (each pass refuses one more, so this ends).
    for (bool again = true; again;) {
      again = false;
      if (auto e = exec(db_.get(), "BEGIN IMMEDIATE"); !e.empty()) return reset_with(e);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (skip[i]) continue;
        const int rc = insert(detail::RecordSpan{&batch[i], 1});
        if (rc == SQLITE_OK) continue;
        const std::string why = sqlite3_errmsg(db_.get());
        if (!is_data_error(rc)) {
          exec(db_.get(), "ROLLBACK");
          return reset_with("insert: " + why);
        }
        skip[i] = true;
        refused.emplace_back(i, why);
        if (sqlite3_get_autocommit(db_.get())) {  // the transaction is gone
          again = true;
          break;
        }
      }
    }
    if (auto e = exec(db_.get(), "COMMIT"); !e.empty()) {
      exec(db_.get(), "ROLLBACK");
      return reset_with(e);
    }
    refused_ += detail::report_refused(on_error_, "sqlite", batch, refused, batch_err);
    return {};
  }

  // One INSERT of `rows` (16 or 1 of them): SQLITE_OK, or the error code.
  int insert(detail::RecordSpan rows) {
    sqlite3_stmt* st = rows.size() == kRowsPerInsert ? insert_many_.get() : insert_one_.get();
    sqlite3_reset(st);
    int rc = SQLITE_OK;
    for (std::size_t row = 0; rc == SQLITE_OK && row < rows.size(); ++row) rc = bind_row(st, row, rows[row]);
    if (rc == SQLITE_OK && sqlite3_step(st) != SQLITE_DONE) rc = sqlite3_extended_errcode(db_.get());
    // The bindings point into the records and the scratch buffers.
    sqlite3_clear_bindings(st);
    return rc;
  }

  std::string prepare_insert(std::size_t rows, Stmt& out) {
    std::string sql = "INSERT INTO taotoken_requests (" + detail::insert_column_list() + ") VALUES ";
    for (std::size_t r = 0; r < rows; ++r) {
      sql += r ? ",(" : "(";
      for (std::size_t c = 0; c < kColumns; ++c) sql += c ? ",?" : "?";
      sql += ')';
    }
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db_.get(), sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK)
      return errmsg(db_.get(), "prepare insert");
    out.reset(raw);
    return {};
  }

  // Typed values, text bound in place (SQLITE_STATIC: the record and the
  // row's scratch buffers outlive the step): no copies, no conversions.
  // The first failing bind's code (SQLITE_TOOBIG for a value over
  // SQLite's length limit), else SQLITE_OK.
  int bind_row(sqlite3_stmt* st, std::size_t row, const RequestRecord& r) {
    detail::record_columns(r, scratch_[row], columns_);
    for (std::size_t c = 0; c < kColumns; ++c) {
      const int idx = static_cast<int>(row * kColumns + c + 1);
      const detail::SqlValue& v = columns_[c];
      int rc = SQLITE_OK;
      switch (v.type) {
        case detail::SqlValue::null: rc = sqlite3_bind_null(st, idx); break;
        case detail::SqlValue::integer: rc = sqlite3_bind_int64(st, idx, v.i); break;
        case detail::SqlValue::real: rc = sqlite3_bind_double(st, idx, v.d); break;
        case detail::SqlValue::text:
          rc = sqlite3_bind_text64(st, idx, v.s.data(), v.s.size(), SQLITE_STATIC, SQLITE_UTF8);
          break;
      }
      if (rc != SQLITE_OK) return rc;
    }
    return SQLITE_OK;
  }

  std::string reset_with(std::string e) {
    insert_many_.reset();
    insert_one_.reset();
    db_.reset();
    return e;
  }

  std::string path_;
  RecorderErrorHook on_error_;
  std::chrono::milliseconds drain_timeout_;
  std::atomic<std::size_t> refused_{0};
  Db db_;
  static constexpr std::size_t kColumns = detail::kRecordColumns.size() + 1;
  // Worker only:
  Stmt insert_many_, insert_one_;
  detail::RecordScratch scratch_[kRowsPerInsert];  // one per row of a statement
  detail::RecordColumns columns_;
  detail::BatchQueue queue_;  // last: its worker uses the members above
};

SqliteRecorder::SqliteRecorder(std::string path, DatabaseRecorderOptions options)
    : impl_(std::make_unique<Impl>(std::move(path), std::move(options))) {}
SqliteRecorder::~SqliteRecorder() = default;
void SqliteRecorder::record(const RequestRecord& record) { impl_->queue().push(record); }
void SqliteRecorder::flush() { impl_->queue().flush(impl_->drain_timeout()); }
std::size_t SqliteRecorder::dropped() const { return impl_->queue().dropped() + impl_->refused(); }
int SqliteRecorder::schema_version() noexcept { return detail::kSchemaVersion; }

Result<std::vector<RequestRecord>> SqliteRecorder::recent(const std::string& path, std::size_t limit) {
  std::vector<RequestRecord> out;
  detail::RowReader reader;
  auto err = for_each_row(path, "", {static_cast<std::int64_t>(limit)}, "ORDER BY id DESC LIMIT ?",
                          [&](const detail::SqlValues& row) { reader.read(row, out.emplace_back()); });
  if (err) return std::move(*err);
  return out;
}

Result<UsageSummary> SqliteRecorder::summarize(const std::string& path, const UsageQuery& query) {
  const auto window = detail::window_clause(query, [](int) { return std::string("?"); });
  detail::RowReader reader;
  RequestRecord record;  // one, reused for every row
  SummaryBuilder summary;
  auto err = for_each_row(path, window.where, window.args, "ORDER BY id", [&](const detail::SqlValues& row) {
    reader.read(row, record);
    summary.add(record);
  });
  if (err) return std::move(*err);
  return summary.build();
}

TAOTOKEN_END_NAMESPACE
