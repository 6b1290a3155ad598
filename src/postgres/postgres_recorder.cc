#include "taotoken/postgres_recorder.h"

#include <fmt/format.h>
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#include <charconv>
#include <memory>

#include "batch_queue.h"
#include "record_sql.h"

TAOTOKEN_BEGIN_NAMESPACE

namespace {

struct ConnCloser {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using Conn = std::unique_ptr<PGconn, ConnCloser>;
struct ResultClearer {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultClearer>;

std::string conn_error(PGconn* c) {
  std::string m = c ? PQerrorMessage(c) : "out of memory";
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m;
}

// Runs a command; empty on success.
std::string exec(PGconn* c, const char* sql) {
  PgResult r(PQexec(c, sql));
  const auto st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return {};
  return conn_error(c);
}

constexpr const char* kCreateV1 = R"sql(
CREATE TABLE IF NOT EXISTS taotoken_requests (
  id BIGSERIAL PRIMARY KEY,
  request_id TEXT NOT NULL, upstream_request_id TEXT, started_at TEXT NOT NULL, started_ms BIGINT NOT NULL,
  endpoint TEXT, requested_model TEXT, model TEXT, provider TEXT, streamed TEXT NOT NULL DEFAULT '0',
  status TEXT NOT NULL, http_status INTEGER, error_kind TEXT, error_message TEXT,
  attempts INTEGER, attempts_json TEXT, latency_ms BIGINT,
  prompt_tokens BIGINT, completion_tokens BIGINT, total_tokens BIGINT, cached_tokens BIGINT,
  estimated_cost DOUBLE PRECISION, tags_json TEXT);
CREATE INDEX IF NOT EXISTS taotoken_requests_started_ms ON taotoken_requests(started_ms);
CREATE INDEX IF NOT EXISTS taotoken_requests_model ON taotoken_requests(model);
)sql";

constexpr const char* kMigrateV1toV2 = R"sql(
ALTER TABLE taotoken_requests ADD COLUMN IF NOT EXISTS ttft_ms BIGINT;
ALTER TABLE taotoken_requests ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT;
ALTER TABLE taotoken_requests ADD COLUMN IF NOT EXISTS upstream_cost DOUBLE PRECISION;
ALTER TABLE taotoken_requests ADD COLUMN IF NOT EXISTS request_summary TEXT;
)sql";

std::string connect(const std::string& conninfo, Conn& conn) {
  // Defaults first, the caller's conninfo after (it overrides them): a
  // server that silently drops packets must not hang the worker. Then
  // client_encoding, which the conninfo cannot override: records are UTF-8
  // and the COPY text is escaped byte by byte, right only for UTF-8.
  const char* keys[] = {"connect_timeout", "keepalives", "keepalives_idle", "tcp_user_timeout", "dbname",
                        "client_encoding", nullptr};
  const char* values[] = {"5", "1", "30", "30000", conninfo.c_str(), "UTF8", nullptr};
  conn.reset(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    auto e = fmt::format("cannot connect to PostgreSQL: {}", conn_error(conn.get()));
    conn.reset();
    return e;
  }
  PQsetNoticeProcessor(conn.get(), [](void*, const char*) {}, nullptr);  // "already exists, skipping"
  // Migrations run once, whoever gets the lock first; the others wait and
  // then find the schema current.
  std::string err = exec(conn.get(), "BEGIN");
  if (err.empty()) err = exec(conn.get(), "SELECT pg_advisory_xact_lock(7262201)");
  if (err.empty()) err = exec(conn.get(), "CREATE TABLE IF NOT EXISTS taotoken_schema (version INTEGER NOT NULL)");
  int version = 0;
  if (err.empty()) {
    PgResult r(PQexec(conn.get(), "SELECT version FROM taotoken_schema LIMIT 1"));
    if (r && PQresultStatus(r.get()) == PGRES_TUPLES_OK && PQntuples(r.get()) > 0)
      version = std::atoi(PQgetvalue(r.get(), 0, 0));
  }
  if (err.empty() && version == 0) {
    err = exec(conn.get(), kCreateV1);
    if (err.empty()) err = exec(conn.get(), "INSERT INTO taotoken_schema(version) VALUES (1)");
    version = 1;
  }
  if (err.empty() && version == 1) {
    err = exec(conn.get(), kMigrateV1toV2);
    if (err.empty()) err = exec(conn.get(), "UPDATE taotoken_schema SET version = 2");
    version = 2;
  }
  if (err.empty()) err = detail::newer_schema_error(version);
  if (err.empty()) err = exec(conn.get(), "COMMIT");
  if (!err.empty()) {
    conn.reset();
    return "PostgreSQL schema: " + err;
  }
  return {};
}

// Runs the SELECT and hands each row to `fn`, one at a time: libpq's
// single-row mode, so a window of millions of rows is never held in memory
// at once (neither by libpq nor here).
template <typename Fn>
std::optional<Error> for_each_row(const std::string& conninfo, const std::string& where,
                                  const std::vector<std::string>& args, const std::string& tail, Fn&& fn) {
  Conn conn;
  if (auto e = connect(conninfo, conn); !e.empty()) return Error(ErrorKind::connection, e);
  std::string cols;
  for (const char* c : detail::kRecordColumns) cols += std::string(cols.empty() ? "" : ", ") + c + "::text";
  const std::string sql = fmt::format("SELECT {} FROM taotoken_requests {} {}", cols, where, tail);
  std::vector<const char*> params;
  for (const auto& a : args) params.push_back(a.c_str());
  if (!PQsendQueryParams(conn.get(), sql.c_str(), static_cast<int>(params.size()), nullptr, params.data(), nullptr,
                         nullptr, 0) ||
      !PQsetSingleRowMode(conn.get()))
    return Error(ErrorKind::connection, "query failed: " + conn_error(conn.get()));
  detail::SqlValues row(detail::kRecordColumns.size());
  std::optional<Error> failed;
  // Every result is read, also after a failure, so the connection ends clean.
  while (PGresult* raw = PQgetResult(conn.get())) {
    PgResult r(raw);
    const auto st = PQresultStatus(r.get());
    if (st == PGRES_SINGLE_TUPLE && !failed) {
      for (int j = 0; j < static_cast<int>(row.size()); ++j)
        detail::set_value(row[static_cast<std::size_t>(j)],
                          PQgetisnull(r.get(), 0, j) ? nullptr : PQgetvalue(r.get(), 0, j));
      fn(row);
    } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && !failed) {
      failed = Error(ErrorKind::connection, "query failed: " + conn_error(conn.get()));
    }
  }
  return failed;
}

}  // namespace

class PostgresRecorder::Impl {
 public:
  Impl(std::string conninfo, DatabaseRecorderOptions o)
      : conninfo_(std::move(conninfo)),
        on_error_(detail::error_hook_or_stderr(o.on_error)),
        drain_timeout_(o.drain_timeout),
        queue_("postgres",
               // One COPY (one transaction) per batch of at most 2000 rows.
               detail::BatchQueueOptions{o.queue_capacity, std::min<std::size_t>(o.batch_size, 2000), o.full_queue_wait,
                                         o.drain_timeout,
                                         std::chrono::seconds(5)},
               [this](detail::RecordSpan batch) { return write(batch); }, on_error_) {}

  detail::BatchQueue& queue() { return queue_; }
  // Records the server refused as data (dropped and reported).
  std::size_t refused() const { return refused_.load(); }
  std::chrono::milliseconds drain_timeout() const { return drain_timeout_; }

 private:
  // A batch goes in with one COPY (text format, sent in slices): no
  // statement to parse, and far less server work a row than a many-row
  // INSERT. If the server refuses the data (a bad record: invalid UTF-8,
  // say), the rows go in one by one inside one transaction, a savepoint
  // each: the rows it refuses as data are dropped, counted and reported,
  // the rest commit together. Any other failure (the connection, a lock
  // timeout, a missing table, a read-only server) rolls back and the whole
  // batch is retried later, so nothing is lost or written twice.
  std::string write(detail::RecordSpan batch) {
    if (!conn_ || PQstatus(conn_.get()) != CONNECTION_OK) {
      if (auto e = connect(conninfo_, conn_); !e.empty()) return e;
    }
    std::string state;
    if (copy_in(batch, state)) return {};
    const std::string err = "insert failed: " + conn_error(conn_.get());
    if (PQstatus(conn_.get()) != CONNECTION_OK) {
      conn_.reset();
      return err;  // the server went away: keep the batch, retry later
    }
    if (!is_data_error(state)) return err;  // not the records' fault: retry later
    return insert_one_by_one(batch, err);
  }

  // SQLSTATE classes 22 (data exception) and 23 (integrity constraint):
  // the server refuses the data itself, which retrying will not change.
  static bool is_data_error(const std::string& sqlstate) {
    return sqlstate.size() == 5 && sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3');
  }

  static std::string sqlstate_of(const PGresult* r) {
    const char* s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    return s ? s : "";
  }

  // The rows one at a time (each a one-row COPY) in one transaction, a
  // savepoint each.
  std::string insert_one_by_one(detail::RecordSpan batch, const std::string& copy_err) {
    auto fail = [&](std::string e) {
      if (PQstatus(conn_.get()) != CONNECTION_OK) conn_.reset();
      else exec(conn_.get(), "ROLLBACK");
      return e;
    };
    if (auto e = exec(conn_.get(), "BEGIN"); !e.empty()) return fail("insert failed: " + e);
    std::vector<std::pair<std::size_t, std::string>> refused;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (auto e = exec(conn_.get(), "SAVEPOINT taotoken_row"); !e.empty()) return fail("insert failed: " + e);
      std::string state;
      if (copy_in(detail::RecordSpan{&batch[i], 1}, state)) {
        if (auto e = exec(conn_.get(), "RELEASE SAVEPOINT taotoken_row"); !e.empty())
          return fail("insert failed: " + e);
        continue;
      }
      const std::string why = conn_error(conn_.get());
      if (PQstatus(conn_.get()) != CONNECTION_OK || !is_data_error(state)) return fail("insert failed: " + why);
      if (auto e = exec(conn_.get(), "ROLLBACK TO SAVEPOINT taotoken_row"); !e.empty())
        return fail("insert failed: " + e);
      refused.emplace_back(i, why);
    }
    if (auto e = exec(conn_.get(), "COMMIT"); !e.empty()) return fail("insert failed: " + e);
    // Committed: only now are the refused rows really dropped.
    refused_ += detail::report_refused(on_error_, "postgres", batch, refused, copy_err);
    return {};
  }

  // The COPY text of a batch: `bytes` only grows (no zero-filling per row);
  // the first `used` bytes are the rows not yet sent.
  struct CopyBuffer {
    std::string bytes;
    std::size_t used = 0;
    char* room(std::size_t n) {
      if (bytes.size() < used + n) bytes.resize(std::max(used + n, 2 * bytes.size()));
      return &bytes[used];
    }
  };

  // Whether `t` holds a byte COPY's text format escapes (backslash, tab,
  // newline, carriage return): eight bytes at a time, exact (the zero-byte
  // test on w ^ c for each of the four; a borrow only marks bytes above
  // one that matched).
  static bool needs_copy_escape(std::string_view t) {
    constexpr std::uint64_t kOnes = 0x0101010101010101, kHigh = 0x8080808080808080;
    auto zero_byte = [](std::uint64_t x) { return (x - kOnes) & ~x & kHigh; };
    std::size_t i = 0;
    for (; i + 8 <= t.size(); i += 8) {
      std::uint64_t w;
      std::memcpy(&w, t.data() + i, 8);
      if (zero_byte(w ^ (kOnes * '\\')) | zero_byte(w ^ (kOnes * '\t')) | zero_byte(w ^ (kOnes * '\n')) |
          zero_byte(w ^ (kOnes * '\r')))
        return true;
    }
    for (; i < t.size(); ++i)
      if (t[i] == '\\' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r') return true;
    return false;
  }

  // One row of COPY's text format: values separated by tabs, NULL as \N,
  // backslash, tab, newline and carriage return escaped. Text stops at a
  // NUL byte (PostgreSQL text cannot hold one; a parameter would stop there
  // too). Doubles in their shortest round-trip form (nan and inf as
  // PostgreSQL reads them).
  static void append_copy_row(CopyBuffer& out, const detail::RecordColumns& cols) {
    // The row's worst case (every text byte escaped, numbers at their
    // widest) is made room for once, then written through a pointer.
    std::size_t room = cols.size() * 32 + 1;
    for (const detail::SqlValue& v : cols)
      if (v.type == detail::SqlValue::text) room += 2 * v.s.size();
    char* const begin = out.room(room);
    char* p = begin;
    bool first = true;
    for (const detail::SqlValue& v : cols) {
      if (!first) *p++ = '\t';
      first = false;
      switch (v.type) {
        case detail::SqlValue::null: *p++ = '\\'; *p++ = 'N'; break;
        case detail::SqlValue::integer: p = std::to_chars(p, p + 24, v.i).ptr; break;
        case detail::SqlValue::real: p = std::to_chars(p, p + 32, v.d).ptr; break;
        case detail::SqlValue::text: {
          const std::string_view t = v.s.substr(0, v.s.find('\0'));
          if (!needs_copy_escape(t)) {  // the usual case: copied at once
            std::memcpy(p, t.data(), t.size());
            p += t.size();
            break;
          }
          for (char c : t) {
            switch (c) {
              case '\\': *p++ = '\\'; *p++ = '\\'; break;
              case '\t': *p++ = '\\'; *p++ = 't'; break;
              case '\n': *p++ = '\\'; *p++ = 'n'; break;
              case '\r': *p++ = '\\'; *p++ = 'r'; break;
              default: *p++ = c;
            }
          }
          break;
        }
      }
    }
    *p++ = '\n';
    out.used += static_cast<std::size_t>(p - begin);
  }

  // COPY the batch's rows, sent in slices of about 1 MiB (one CopyData
  // message must stay well under the server's 1 GB limit, and the buffer
  // stays small); true when the server took them all. `sqlstate` tells why
  // not.
  bool copy_in(detail::RecordSpan batch, std::string& sqlstate) {
    constexpr std::size_t kSlice = std::size_t{1} << 20;
    if (copy_sql_.empty()) copy_sql_ = "COPY taotoken_requests (" + detail::insert_column_list() + ") FROM STDIN";
    PgResult start(PQexec(conn_.get(), copy_sql_.c_str()));
    if (!start || PQresultStatus(start.get()) != PGRES_COPY_IN) {
      sqlstate = sqlstate_of(start.get());
      return false;
    }
    bool sent = true;
    auto send = [&] {
      // A single row over INT_MAX bytes cannot be sent as one message.
      if (copy_.used > static_cast<std::size_t>(INT32_MAX)) sent = false;
      else if (copy_.used > 0) sent = PQputCopyData(conn_.get(), copy_.bytes.data(), static_cast<int>(copy_.used)) == 1;
      copy_.used = 0;
    };
    copy_.used = 0;
    for (std::size_t i = 0; sent && i < batch.size(); ++i) {
      detail::record_columns(batch[i], scratch_, columns_);
      append_copy_row(copy_, columns_);
      if (copy_.used >= kSlice) send();
    }
    if (sent) send();
    if (copy_.bytes.size() > 4 * kSlice) copy_ = CopyBuffer{};
    // Ending the COPY with an error message makes the server discard it.
    if (PQputCopyEnd(conn_.get(), sent ? nullptr : "taotoken: sending the rows failed") != 1) return false;
    bool ok = sent;
    while (PGresult* raw = PQgetResult(conn_.get())) {
      PgResult r(raw);
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
        ok = false;
        if (sqlstate.empty()) sqlstate = sqlstate_of(r.get());
      }
    }
    return ok;
  }

  std::string conninfo_;
  RecorderErrorHook on_error_;
  std::chrono::milliseconds drain_timeout_;
  std::atomic<std::size_t> refused_{0};
  Conn conn_;
  // Worker only:
  std::string copy_sql_;
  CopyBuffer copy_;
  detail::RecordScratch scratch_;
  detail::RecordColumns columns_;
  detail::BatchQueue queue_;  // last: its worker uses the members above
};

PostgresRecorder::PostgresRecorder(std::string conninfo, DatabaseRecorderOptions options)
    : impl_(std::make_unique<Impl>(std::move(conninfo), std::move(options))) {}
PostgresRecorder::~PostgresRecorder() = default;
void PostgresRecorder::record(const RequestRecord& record) { impl_->queue().push(record); }
void PostgresRecorder::flush() { impl_->queue().flush(impl_->drain_timeout()); }
std::size_t PostgresRecorder::dropped() const { return impl_->queue().dropped() + impl_->refused(); }

Result<std::vector<RequestRecord>> PostgresRecorder::recent(const std::string& conninfo, std::size_t limit) {
  std::vector<RequestRecord> out;
  detail::RowReader reader;
  auto err = for_each_row(conninfo, "", {std::to_string(limit)}, "ORDER BY id DESC LIMIT $1",
                          [&](const detail::SqlValues& row) { reader.read(row, out.emplace_back()); });
  if (err) return std::move(*err);
  return out;
}

Result<UsageSummary> PostgresRecorder::summarize(const std::string& conninfo, const UsageQuery& query) {
  const auto window = detail::window_clause(query, [](int n) { return "$" + std::to_string(n); });
  std::vector<std::string> args;
  for (auto a : window.args) args.push_back(std::to_string(a));
  detail::RowReader reader;
  RequestRecord record;  // one, reused for every row
  SummaryBuilder summary;
  auto err = for_each_row(conninfo, window.where, args, "ORDER BY id", [&](const detail::SqlValues& row) {
    reader.read(row, record);
    summary.add(record);
  });
  if (err) return std::move(*err);
  return summary.build();
}

TAOTOKEN_END_NAMESPACE
