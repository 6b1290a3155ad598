#include "taotoken/postgres_recorder.h"

#include <fmt/format.h>
#include <libpq-fe.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iterator>
#include <memory>
#include <tuple>

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
  // server that silently drops packets must not hang the worker.
  // Records are UTF-8 whatever the server's default client encoding.
  const char* keys[] = {"connect_timeout", "keepalives", "keepalives_idle", "tcp_user_timeout", "client_encoding",
                        "dbname", nullptr};
  const char* values[] = {"5", "1", "30", "30000", "UTF8", conninfo.c_str(), nullptr};
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

Result<std::vector<RequestRecord>> select_records(const std::string& conninfo, const std::string& where,
                                                  const std::vector<std::string>& args, const std::string& tail) {
  Conn conn;
  if (auto e = connect(conninfo, conn); !e.empty()) return Error(ErrorKind::connection, e);
  std::string cols;
  for (const char* c : detail::kRecordColumns) cols += std::string(cols.empty() ? "" : ", ") + c + "::text";
  const std::string sql = fmt::format("SELECT {} FROM taotoken_requests {} {}", cols, where, tail);
  std::vector<const char*> params;
  for (const auto& a : args) params.push_back(a.c_str());
  PgResult r(PQexecParams(conn.get(), sql.c_str(), static_cast<int>(params.size()), nullptr, params.data(), nullptr,
                          nullptr, 0));
  if (!r || PQresultStatus(r.get()) != PGRES_TUPLES_OK)
    return Error(ErrorKind::connection, "query failed: " + conn_error(conn.get()));
  std::vector<RequestRecord> out;
  detail::SqlValues row(detail::kRecordColumns.size());
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    for (int j = 0; j < static_cast<int>(row.size()); ++j)
      row[static_cast<std::size_t>(j)] =
          PQgetisnull(r.get(), i, j) ? std::nullopt : std::optional<std::string>(PQgetvalue(r.get(), i, j));
    out.push_back(detail::record_from_row(row));
  }
  return out;
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
  std::chrono::milliseconds drain_timeout() const { return drain_timeout_; }

 private:
  // A batch goes in with one COPY (text format): one buffer, no statement
  // to parse, and far less server work a row than a many-row INSERT. If
  // the server refuses the data (one bad record: invalid UTF-8, say), the
  // rows are inserted one by one instead, and only the bad ones are
  // dropped and reported.
  std::string write(detail::RecordSpan batch) {
    if (!conn_ || PQstatus(conn_.get()) != CONNECTION_OK) {
      if (auto e = connect(conninfo_, conn_); !e.empty()) return e;
    }
    copy_.clear();
    for (const auto& rec : batch) {
      detail::record_columns(rec, scratch_, columns_);
      append_copy_row(copy_, columns_);
    }
    if (copy_in(copy_)) return {};
    const std::string err = "insert failed: " + conn_error(conn_.get());
    if (PQstatus(conn_.get()) != CONNECTION_OK) {
      conn_.reset();
      return err;  // the server went away: keep the batch, retry later
    }
    std::size_t refused = 0;
    for (const auto& rec : batch) {
      if (insert_one(rec)) continue;
      if (PQstatus(conn_.get()) != CONNECTION_OK) {
        conn_.reset();
        return err;
      }
      ++refused;
      on_error_("postgres", fmt::format("record {} dropped: {}", rec.request_id, conn_error(conn_.get())));
    }
    // Every row went in on its own: the COPY text itself was wrong (a bug
    // here, not bad data). Nothing is lost, but say so.
    if (refused == 0) on_error_("postgres", "COPY refused a batch that inserted row by row: " + err);
    return {};
  }

  // One row of COPY's text format: values separated by tabs, NULL as \N,
  // backslash, tab, newline and carriage return escaped. Text stops at a
  // NUL byte (PostgreSQL text cannot hold one; a parameter would stop there
  // too). Doubles in their shortest round-trip form (nan and inf as
  // PostgreSQL reads them).
  static void append_copy_row(std::string& out, const detail::RecordColumns& cols) {
    // The row's worst case (every text byte escaped, numbers at their
    // widest) is made room for once, then written through a pointer.
    std::size_t room = cols.size() * 32 + 1;
    for (const detail::SqlValue& v : cols)
      if (v.type == detail::SqlValue::text) room += 2 * v.s.size();
    const std::size_t old = out.size();
    out.resize(old + room);
    char* p = &out[old];
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
    out.resize(static_cast<std::size_t>(p - out.data()));
  }

  // COPY the rows in `data`; true when the server took them all.
  bool copy_in(const std::string& data) {
    if (copy_sql_.empty()) copy_sql_ = "COPY taotoken_requests (" + detail::insert_column_list() + ") FROM STDIN";
    PgResult start(PQexec(conn_.get(), copy_sql_.c_str()));
    if (!start || PQresultStatus(start.get()) != PGRES_COPY_IN) return false;
    const bool sent = PQputCopyData(conn_.get(), data.data(), static_cast<int>(data.size())) == 1;
    // Ending the COPY with an error message makes the server discard it.
    if (PQputCopyEnd(conn_.get(), sent ? nullptr : "taotoken: sending the rows failed") != 1) return false;
    bool ok = sent;
    while (PGresult* raw = PQgetResult(conn_.get())) {
      PgResult r(raw);
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) ok = false;
    }
    return ok;
  }

  // One record with a one-row INSERT; true when the server took it.
  bool insert_one(const RequestRecord& rec) {
    detail::record_columns(rec, scratch_, columns_);
    // Every value as text into one buffer (NUL-terminated), then pointers
    // into it.
    arena_.clear();
    std::size_t offsets[std::tuple_size<detail::RecordColumns>::value];
    for (std::size_t i = 0; i < columns_.size(); ++i) {
      const detail::SqlValue& v = columns_[i];
      offsets[i] = kNull;
      if (v.type == detail::SqlValue::null) continue;
      offsets[i] = arena_.size();
      if (v.type == detail::SqlValue::integer) {
        char buf[24];
        auto r = std::to_chars(buf, buf + sizeof buf, v.i);
        arena_.append(buf, r.ptr);
      } else if (v.type == detail::SqlValue::real) {
        fmt::format_to(std::back_inserter(arena_), "{}", v.d);
      } else {
        arena_.append(v.s.data(), v.s.size());
      }
      arena_.push_back('\0');
    }
    const char* params[std::tuple_size<detail::RecordColumns>::value];
    for (std::size_t i = 0; i < columns_.size(); ++i) params[i] = offsets[i] == kNull ? nullptr : arena_.data() + offsets[i];
    const std::string& sql = insert_sql(1, one_sql_);
    // Column types are inferred from the table; text parameters convert.
    PgResult r(PQexecParams(conn_.get(), sql.c_str(), static_cast<int>(columns_.size()), nullptr, params, nullptr,
                            nullptr, 0));
    return r && PQresultStatus(r.get()) == PGRES_COMMAND_OK;
  }

  // The INSERT of `rows` rows ($1..$n) in `sql`, rebuilt only when the
  // number of rows differs from the last time (full batches repeat it).
  struct Sql {
    std::size_t rows = 0;
    std::string text;
  };
  static const std::string& insert_sql(std::size_t rows, Sql& cached) {
    if (cached.rows == rows && !cached.text.empty()) return cached.text;
    cached.rows = rows;
    std::string& sql = cached.text;
    const std::size_t ncols = detail::kRecordColumns.size() + 1;
    sql = "INSERT INTO taotoken_requests (" + detail::insert_column_list() + ") VALUES ";
    std::size_t n = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      sql += i ? ",(" : "(";
      for (std::size_t c = 0; c < ncols; ++c) {
        if (c) sql += ',';
        sql += '$';
        sql += std::to_string(++n);
      }
      sql += ')';
    }
    return sql;
  }

  static constexpr std::size_t kNull = static_cast<std::size_t>(-1);

  std::string conninfo_;
  RecorderErrorHook on_error_;
  std::chrono::milliseconds drain_timeout_;
  Conn conn_;
  // Worker only:
  Sql one_sql_;
  std::string copy_sql_, copy_;
  detail::RecordScratch scratch_;
  detail::RecordColumns columns_;
  std::string arena_;
  detail::BatchQueue queue_;  // last: its worker uses the members above
};

PostgresRecorder::PostgresRecorder(std::string conninfo, DatabaseRecorderOptions options)
    : impl_(std::make_unique<Impl>(std::move(conninfo), std::move(options))) {}
PostgresRecorder::~PostgresRecorder() = default;
void PostgresRecorder::record(const RequestRecord& record) { impl_->queue().push(record); }
void PostgresRecorder::flush() { impl_->queue().flush(impl_->drain_timeout()); }
std::size_t PostgresRecorder::dropped() const { return impl_->queue().dropped(); }

Result<std::vector<RequestRecord>> PostgresRecorder::recent(const std::string& conninfo, std::size_t limit) {
  return select_records(conninfo, "", {std::to_string(limit)}, "ORDER BY id DESC LIMIT $1");
}

Result<UsageSummary> PostgresRecorder::summarize(const std::string& conninfo, const UsageQuery& query) {
  const auto window = detail::window_clause(query, [](int n) { return "$" + std::to_string(n); });
  std::vector<std::string> args;
  for (auto a : window.args) args.push_back(std::to_string(a));
  auto rows = select_records(conninfo, window.where, args, "ORDER BY id");
  if (!rows) return std::move(rows.error());
  return detail::summarize_records(*rows);
}

TAOTOKEN_END_NAMESPACE
