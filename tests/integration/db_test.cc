// SQLite and PostgreSQL recorders against real files and a real server.
// PostgreSQL: TAOTOKEN_TEST_PG (a libpq conninfo, default "dbname=taotoken_test");
// ./dev test starts the cluster and creates the database. There is no skip:
// without a server these tests fail.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <libpq-fe.h>
#include <fstream>
#include <mutex>
#include <thread>

#include "sim_fixture.h"
#include "taotoken/postgres_recorder.h"
#include "taotoken/recorders.h"
#include "taotoken/sqlite_recorder.h"

using namespace taotoken;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::string pg_conninfo() {
  const char* v = std::getenv("TAOTOKEN_TEST_PG");
  return v && *v ? v : "dbname=taotoken_test";
}

// Runs SQL on the test database; returns the first value of the first row.
std::string pg(const std::string& sql) {
  PGconn* c = PQconnectdb(pg_conninfo().c_str());
  PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
  INFO("PostgreSQL: " << PQerrorMessage(c));
  REQUIRE(PQstatus(c) == CONNECTION_OK);
  PGresult* r = PQexec(c, sql.c_str());
  std::string out;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) out = PQgetvalue(r, 0, 0);
  PQclear(r);
  PQfinish(c);
  return out;
}

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("taotoken-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::int64_t sqlite_count(const std::string& path, const char* sql = "SELECT count(*) FROM taotoken_requests") {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const auto n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

struct Errors {
  std::mutex mu;
  std::vector<std::string> seen;
  RecorderErrorHook hook() {
    return [this](std::string_view, std::string_view m) {
      std::lock_guard<std::mutex> g(mu);
      seen.emplace_back(m);
    };
  }
  // Recorder options whose error hook collects here.
  DatabaseRecorderOptions options() {
    DatabaseRecorderOptions o;
    o.on_error = hook();
    return o;
  }
};

// Each PostgreSQL test starts from no tables (the recorder creates them).
void drop_pg_tables() { pg("DROP TABLE IF EXISTS taotoken_requests; DROP TABLE IF EXISTS taotoken_schema;"); }

}  // namespace

TEST_CASE("16 threads x 200 requests into SQLite and PostgreSQL at once: every record lands") {
  drop_pg_tables();
  SimFixture f;
  const auto dir = temp_dir("db-threads");
  const std::string file = (dir / "usage.db").string();
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  {
    auto o = f.options();
    o.recorders = {std::make_shared<SqliteRecorder>(file, dbo), std::make_shared<PostgresRecorder>(pg_conninfo(), dbo)};
    TaotokenClient client(o);
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t)
      threads.emplace_back([&, t] {
        RequestOptions ro;
        ro.tags = {{"worker", std::to_string(t % 4)}};
        for (int i = 0; i < 200; ++i) (void)client.chat(SimFixture::ask("count me"), ro);
      });
    for (auto& th : threads) th.join();
  }  // the last client handle drains the recorders
  CHECK(errors.seen.empty());
  CHECK(sqlite_count(file) == 3200);
  CHECK(sqlite_count(file, "SELECT sum(completion_tokens) FROM taotoken_requests") == 3200 * 3);
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "3200");
  CHECK(pg("SELECT sum(completion_tokens) FROM taotoken_requests") == "9600");
  auto s = SqliteRecorder::summarize(file);
  REQUIRE(s.ok());
  CHECK(s->total.requests == 3200);
  CHECK(s->by_tag.at("worker=1").requests == 800);
  auto ps = PostgresRecorder::summarize(pg_conninfo());
  REQUIRE(ps.ok());
  CHECK(ps->total.completion_tokens == 9600);
  auto recent = PostgresRecorder::recent(pg_conninfo(), 5);
  REQUIRE(recent.ok());
  CHECK(recent->size() == 5);
  CHECK(recent->at(0).status == RequestStatus::success);
  fs::remove_all(dir);
}

TEST_CASE("records read back from SQLite match what was recorded") {
  const auto dir = temp_dir("db-roundtrip");
  const std::string file = (dir / "u.db").string();
  RequestRecord r;
  r.request_id = "req_1_abc";
  r.upstream_request_id = "up";
  r.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000000123));
  r.endpoint = "chat_stream";
  r.requested_model = "m";
  r.model = "m-2024";
  r.provider = "Azure";
  r.streamed = true;
  r.status = RequestStatus::error;
  r.http_status = 503;
  r.error_kind = ErrorKind::stream_truncated;
  r.error_message = "cut";
  r.attempts = {{503, ErrorKind::server_error, 12ms, 0ms}, {200, ErrorKind::stream_truncated, 40ms, 500ms}};
  r.latency = 600ms;
  r.time_to_first_token = 30ms;
  r.prompt_tokens = 10;
  r.completion_tokens = 0;  // 0, not unknown
  r.cached_tokens = std::nullopt;
  r.estimated_cost = 0.25;
  r.tags = {{"tenant", "acme"}};
  {
    SqliteRecorder rec(file);
    rec.record(r);
  }
  auto back = SqliteRecorder::recent(file, 10);
  REQUIRE(back.ok());
  REQUIRE(back->size() == 1);
  const auto& x = back->at(0);
  CHECK(x.request_id == r.request_id);
  CHECK(x.started_at == r.started_at);
  CHECK(x.provider == r.provider);
  CHECK(x.streamed);
  CHECK(x.status == RequestStatus::error);
  CHECK(x.error_kind == ErrorKind::stream_truncated);
  REQUIRE(x.attempts.size() == 2);
  CHECK(x.attempts[1].delay_before == 500ms);
  CHECK(x.time_to_first_token == 30ms);
  CHECK(x.completion_tokens == 0);
  CHECK_FALSE(x.cached_tokens);
  CHECK(x.estimated_cost == 0.25);
  CHECK(x.tags == r.tags);
  fs::remove_all(dir);
}

TEST_CASE("summaries over 60,000 rows of SQLite and PostgreSQL, whole and windowed, row by row") {
  // Rows made by SQL (fast), after one record through each recorder made
  // the schema. The summary reads them one at a time (never all at once).
  const auto dir = temp_dir("db-many");
  const std::string file = (dir / "u.db").string();
  drop_pg_tables();
  {
    RequestRecord first;
    first.request_id = "first";
    first.model = "m0";
    first.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000000000));
    first.latency = std::chrono::milliseconds(0);
    SqliteRecorder s(file);
    PostgresRecorder p(pg_conninfo());
    s.record(first);
    p.record(first);
  }
  // Row x (1..60000): model m<x%3>, latency x%100 ms, started 1795000000000 + x ms,
  // tags {"t":"a"} for even x.
  const std::string select =
      "'r' || x, '2026-11-27T00:00:00.000Z', 1795000000000 + x, 'm' || (x % 3), 'success', x % 100, 1, 2, 3, "
      "CASE WHEN x % 2 = 0 THEN '{\"t\":\"a\"}' ELSE '{}' END";
  const std::string cols =
      "INSERT INTO taotoken_requests (request_id, started_at, started_ms, model, status, latency_ms, prompt_tokens, "
      "completion_tokens, total_tokens, tags_json) ";
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
    const std::string sql = cols + "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) "
                                   "SELECT " + select + " FROM c";
    char* err = nullptr;
    CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) == SQLITE_OK);
    if (err) FAIL(err);
    sqlite3_close(db);
  }
  pg(cols + "SELECT " + select + " FROM generate_series(1, 60000) AS x");
  auto check = [](const UsageSummary& s) {
    CHECK(s.total.requests == 60001);
    CHECK(s.total.successes == 60001);
    CHECK(s.total.prompt_tokens == 60000);
    CHECK(s.total.total_tokens == 180000);
    REQUIRE(s.by_model.count("m1") == 1);
    CHECK(s.by_model.at("m0").requests == 20001);
    CHECK(s.by_model.at("m1").requests == 20000);
    CHECK(s.by_tag.at("t=a").requests == 30000);
    // Latencies 0..99 ms, 600 of each (and one more 0): nearest rank.
    CHECK(s.total.latency_p50 == std::chrono::milliseconds(49));
    CHECK(s.total.latency_p99 == std::chrono::milliseconds(98));
  };
  auto whole_sqlite = SqliteRecorder::summarize(file);
  REQUIRE(whole_sqlite.ok());
  check(*whole_sqlite);
  auto whole_pg = PostgresRecorder::summarize(pg_conninfo());
  REQUIRE(whole_pg.ok());
  check(*whole_pg);
  // A window: rows 1001..2000 (started_ms in [..001, ..2001)).
  UsageQuery q;
  q.since = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000001001));
  q.until = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000002001));
  auto part_sqlite = SqliteRecorder::summarize(file, q);
  auto part_pg = PostgresRecorder::summarize(pg_conninfo(), q);
  REQUIRE(part_sqlite.ok());
  REQUIRE(part_pg.ok());
  CHECK(part_sqlite->total.requests == 1000);
  CHECK(part_pg->total.requests == 1000);
  CHECK(part_pg->to_json() == part_sqlite->to_json());
  // The newest rows, newest first.
  auto recent = PostgresRecorder::recent(pg_conninfo(), 3);
  REQUIRE(recent.ok());
  REQUIRE(recent->size() == 3);
  CHECK(recent->at(0).request_id == "r60000");
  CHECK(recent->at(2).request_id == "r59998");
  CHECK(recent->at(1).tags.empty());
  REQUIRE(recent->at(0).tags.size() == 1);
  fs::remove_all(dir);
}

TEST_CASE("a SQLite file from schema version 1 is migrated") {
  const auto dir = temp_dir("db-migrate");
  const std::string file = (dir / "old.db").string();
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
    const char* v1 = R"sql(
      CREATE TABLE taotoken_schema (version INTEGER NOT NULL); INSERT INTO taotoken_schema VALUES (1);
      CREATE TABLE taotoken_requests (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, upstream_request_id TEXT,
        started_at TEXT NOT NULL, started_ms INTEGER NOT NULL, endpoint TEXT, requested_model TEXT, model TEXT,
        provider TEXT, streamed INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, http_status INTEGER, error_kind TEXT,
        error_message TEXT, attempts INTEGER, attempts_json TEXT, latency_ms INTEGER, prompt_tokens INTEGER,
        completion_tokens INTEGER, total_tokens INTEGER, cached_tokens INTEGER, estimated_cost REAL, tags_json TEXT);
      INSERT INTO taotoken_requests (request_id, started_at, started_ms, status, model, latency_ms, completion_tokens)
        VALUES ('old_1', '2026-01-01T00:00:00.000Z', 1767225600000, 'success', 'old-model', 100, 5);)sql";
    REQUIRE(sqlite3_exec(db, v1, nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  {
    SqliteRecorder rec(file);
    RequestRecord r;
    r.request_id = "new_1";
    r.status = RequestStatus::success;
    r.time_to_first_token = 7ms;
    rec.record(r);
  }
  CHECK(sqlite_count(file, "SELECT version FROM taotoken_schema") == SqliteRecorder::schema_version());
  CHECK(sqlite_count(file) == 2);
  CHECK(sqlite_count(file, "SELECT ttft_ms FROM taotoken_requests WHERE request_id = 'new_1'") == 7);
  auto s = SqliteRecorder::summarize(file);
  REQUIRE(s.ok());
  CHECK(s->by_model.at("old-model").completion_tokens == 5);
  fs::remove_all(dir);
}

TEST_CASE("SQLite: a record SQLite refuses is dropped and reported; the rest of its batch lands") {
  // ABORT backs out the statement; ROLLBACK ends the whole transaction.
  const std::string how = GENERATE(std::string("ABORT"), std::string("ROLLBACK"));
  INFO("RAISE(" << how << ")");
  const auto dir = temp_dir("db-refused");
  const std::string file = (dir / "u.db").string();
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  {
    SqliteRecorder rec(file, dbo);
    RequestRecord r;
    r.request_id = "first";
    rec.record(r);
    rec.flush();  // the schema exists now
    // A constraint of the deployment's own that one record breaks.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         ("CREATE TRIGGER refuse BEFORE INSERT ON taotoken_requests WHEN NEW.request_id = 'req_20' "
                          "BEGIN SELECT RAISE(" + how + ", 'refused by the test'); END;").c_str(),
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    for (int i = 0; i < 40; ++i) {  // 16-row statements and single rows both
      r.request_id = "req_" + std::to_string(i);
      rec.record(r);
    }
    rec.flush();
    CHECK(rec.dropped() == 1);
  }
  CHECK(sqlite_count(file) == 40);  // "first" + 39
  CHECK(sqlite_count(file, "SELECT count(DISTINCT request_id) FROM taotoken_requests") == 40);
  CHECK(sqlite_count(file, "SELECT count(*) FROM taotoken_requests WHERE request_id = 'req_20'") == 0);
  REQUIRE(errors.seen.size() == 1);
  CHECK_THAT(errors.seen[0], Catch::Contains("record req_20 dropped") && Catch::Contains("refused by the test"));
  fs::remove_all(dir);
}

TEST_CASE("an unusable SQLite path is reported through the hook; requests still succeed") {
  SimFixture f;
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  dbo.drain_timeout = 300ms;
  // /sys is read-only even for root (CI runs as root, so a chmod'ed
  // directory would still be writable).
  for (const std::string& path : {std::string("/sys/taotoken-usage.db"), std::string("/nonexistent-dir/u.db")}) {
    INFO(path);
    errors.seen.clear();
    {
      auto o = f.options();
      o.recorders = {std::make_shared<SqliteRecorder>(path, dbo)};
      TaotokenClient client(o);
      CHECK(client.chat(SimFixture::ask("still works")).ok());
    }
    std::lock_guard<std::mutex> g(errors.mu);
    REQUIRE_FALSE(errors.seen.empty());
    CHECK_THAT(errors.seen.front(), Catch::Contains("cannot open SQLite database"));
  }
}

TEST_CASE("PostgreSQL stopped and restarted mid-run: no record lost, requests unaffected") {
  if (std::system("command -v pg_ctlcluster >/dev/null 2>&1") != 0) FAIL("pg_ctlcluster is needed to stop the server");
  drop_pg_tables();
  SimFixture f;
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  auto recorder = std::make_shared<PostgresRecorder>(pg_conninfo(), dbo);
  auto o = f.options();
  o.recorders = {recorder};
  TaotokenClient client(o);
  int ok = 0;
  for (int i = 0; i < 50; ++i) ok += client.chat(SimFixture::ask("before")).ok();
  recorder->flush();
  REQUIRE(std::system("pg_ctlcluster 15 main stop -m fast >/dev/null 2>&1") == 0);
  for (int i = 0; i < 100; ++i) ok += client.chat(SimFixture::ask("during")).ok();  // queued meanwhile
  std::this_thread::sleep_for(300ms);
  REQUIRE(std::system("pg_ctlcluster 15 main start >/dev/null 2>&1") == 0);
  for (int i = 0; i < 50; ++i) ok += client.chat(SimFixture::ask("after")).ok();
  recorder->flush();
  CHECK(ok == 200);
  CHECK(recorder->dropped() == 0);
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "200");
  std::lock_guard<std::mutex> g(errors.mu);
  CHECK_FALSE(errors.seen.empty());  // the outage was reported, not hidden
}

TEST_CASE("PostgreSQL: text with tabs, newlines, backslashes and COPY's markers reads back unchanged") {
  drop_pg_tables();
  const std::vector<std::string> texts = {
      "tab\there", "line\nbreak\r\nand CR\r", "back\\slash \\N \\t", "\\.", "\\.\n\\.\n",
      "\\N",     "",                       "caf\xc3\xa9 \xe2\x9c\x93 \"q\"", std::string(5000, 'x') + "\t" + std::string(5000, 'y')};
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  {
    PostgresRecorder rec(pg_conninfo(), dbo);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      RequestRecord r;
      r.request_id = "req_" + std::to_string(i);
      r.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000000000 + i));
      r.error_message = texts[i];
      r.tags = {{"k\t" + std::to_string(i), texts[i]}};
      r.estimated_cost = 1e-7 * static_cast<double>(i);
      r.prompt_tokens = static_cast<std::int64_t>(i);
      rec.record(r);
    }
    RequestRecord odd;  // doubles PostgreSQL must read back as they were
    odd.request_id = "odd";
    odd.estimated_cost = std::numeric_limits<double>::infinity();
    odd.upstream_cost = std::numeric_limits<double>::quiet_NaN();
    rec.record(odd);
  }
  CHECK(errors.seen.empty());
  auto back = PostgresRecorder::recent(pg_conninfo(), 100);
  REQUIRE(back.ok());
  REQUIRE(back->size() == texts.size() + 1);
  for (const auto& x : *back) {
    if (x.request_id == "odd") {
      CHECK((x.estimated_cost && std::isinf(*x.estimated_cost) && *x.estimated_cost > 0));
      CHECK((x.upstream_cost && std::isnan(*x.upstream_cost)));
      continue;
    }
    const std::size_t i = std::stoul(x.request_id.substr(4));
    REQUIRE(i < texts.size());
    CHECK(x.error_message == texts[i]);
    REQUIRE(x.tags.size() == 1);
    CHECK(x.tags[0].first == "k\t" + std::to_string(i));
    CHECK(x.tags[0].second == texts[i]);
    CHECK(x.prompt_tokens == static_cast<std::int64_t>(i));
    CHECK_FALSE(x.completion_tokens);  // NULL stays unknown
    CHECK(x.estimated_cost == 1e-7 * static_cast<double>(i));
  }
}

TEST_CASE("PostgreSQL: a record the server refuses is dropped and reported; the rest of its batch lands") {
  drop_pg_tables();
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  {
    PostgresRecorder rec(pg_conninfo(), dbo);
    for (int i = 0; i < 10; ++i) {
      RequestRecord r;
      r.request_id = "req_" + std::to_string(i);
      // Recorded directly (the client would have repaired it): invalid
      // UTF-8, which the server refuses.
      if (i == 4) r.error_message = "bad \xff byte";
      rec.record(r);
    }
  }
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "9");
  CHECK(pg("SELECT count(*) FROM taotoken_requests WHERE request_id = 'req_4'") == "0");
  REQUIRE(errors.seen.size() == 1);
  CHECK_THAT(errors.seen[0], Catch::Contains("record req_4 dropped"));
}

TEST_CASE("PostgreSQL: a lock timeout is not the records' fault: the batch waits and lands whole, nothing dropped") {
  drop_pg_tables();
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  PostgresRecorder rec(pg_conninfo() + " options='-c lock_timeout=50'", dbo);
  RequestRecord r;
  r.request_id = "first";
  rec.record(r);
  rec.flush();  // the table exists now
  // Another session holds the table; the recorder's COPY times out.
  PGconn* holder = PQconnectdb(pg_conninfo().c_str());
  REQUIRE(PQstatus(holder) == CONNECTION_OK);
  PQclear(PQexec(holder, "BEGIN"));
  PGresult* locked = PQexec(holder, "LOCK TABLE taotoken_requests IN ACCESS EXCLUSIVE MODE");
  REQUIRE(PQresultStatus(locked) == PGRES_COMMAND_OK);
  PQclear(locked);
  for (int i = 0; i < 10; ++i) {
    r.request_id = "req_" + std::to_string(i);
    rec.record(r);
  }
  // Wait (bounded) until the recorder has hit the lock at least once.
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard<std::mutex> g(errors.mu);
      if (!errors.seen.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  PQclear(PQexec(holder, "COMMIT"));
  PQfinish(holder);
  rec.flush();
  CHECK(rec.dropped() == 0);
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "11");
  CHECK(pg("SELECT count(DISTINCT request_id) FROM taotoken_requests") == "11");
  std::lock_guard<std::mutex> g(errors.mu);
  REQUIRE_FALSE(errors.seen.empty());
  for (const auto& e : errors.seen) {
    CHECK_THAT(e, Catch::Contains("lock timeout"));
    CHECK_THAT(e, !Catch::Contains("dropped"));
  }
}

TEST_CASE("PostgreSQL: the connection lost while bad rows are sorted out: the batch is retried whole, no row twice") {
  drop_pg_tables();
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  PostgresRecorder rec(pg_conninfo(), dbo);
  RequestRecord r;
  r.request_id = "first";
  rec.record(r);
  rec.flush();  // the table exists now
  // Every row insert takes a while, so the row-by-row pass can be caught
  // in the middle.
  pg("CREATE OR REPLACE FUNCTION taotoken_test_slow() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.02); "
     "RETURN NEW; END $$ LANGUAGE plpgsql; "
     "CREATE TRIGGER taotoken_test_slow BEFORE INSERT ON taotoken_requests FOR EACH ROW EXECUTE FUNCTION "
     "taotoken_test_slow();");
  for (int i = 0; i < 20; ++i) {
    r.request_id = "req_" + std::to_string(i);
    // The first row is refused at once (before any slow trigger), so the
    // batch goes row by row right away.
    r.error_message = i == 0 ? "bad \xff byte" : "";
    rec.record(r);
  }
  // Cut the recorder's connection once it is inserting row by row, a few
  // rows in (each takes 20 ms: after 100 ms about five are in). Between two
  // one-row COPYs the backend is idle in its transaction, with the COPY as
  // its last query: it is matched in both states (a slow build, such as
  // TSan's, spends more of the pass between them).
  const std::string inserting =
      "FROM pg_stat_activity WHERE state IN ('active', 'idle in transaction') AND query LIKE "
      "'COPY taotoken_requests%' AND pid <> pg_backend_pid()";
  bool seen = false;
  for (int i = 0; i < 1000 && !seen; ++i) {
    seen = !pg("SELECT pid " + inserting).empty();
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(seen);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  bool cut = false;
  for (int i = 0; i < 200 && !cut; ++i) {
    cut = !pg("SELECT pg_terminate_backend(pid) " + inserting).empty();
    if (!cut) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(cut);
  rec.flush();
  rec.flush();  // a flush gives up after two failures; the retry after a reconnect may need a second
  pg("DROP TRIGGER taotoken_test_slow ON taotoken_requests; DROP FUNCTION taotoken_test_slow();");
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "20");  // "first" + 19 good rows
  CHECK(pg("SELECT count(DISTINCT request_id) FROM taotoken_requests") == "20");
  CHECK(rec.dropped() == 1);
}

TEST_CASE("a record with invalid UTF-8 cannot poison the PostgreSQL queue") {
  drop_pg_tables();
  SimFixture f;
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();
  {
    auto o = f.options();
    o.recorders = {std::make_shared<PostgresRecorder>(pg_conninfo(), dbo)};
    TaotokenClient client(o);
    RequestOptions bad;
    bad.tags = {{"user", "caf\xe9"}, {"k\"ey", "va\\lue"}};
    for (int i = 0; i < 6; ++i) (void)client.chat(SimFixture::ask("x"), i % 2 ? bad : RequestOptions{});
  }
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "6");
  CHECK(errors.seen.empty());
}

TEST_CASE("an unreachable database does not hold up shutdown") {
  SimFixture f;
  Errors errors;
  DatabaseRecorderOptions dbo = errors.options();  // the default 30 s drain timeout
  const auto start = std::chrono::steady_clock::now();
  {
    auto o = f.options();
    o.recorders = {std::make_shared<SqliteRecorder>("/nonexistent-dir/u.db", dbo)};
    TaotokenClient client(o);
    CHECK(client.chat(SimFixture::ask("x")).ok());
  }
  // A hang detector, not a timing test: the drain gives up after two failed
  // attempts (~0.3 s of backoff) instead of 2 x 30 s.
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("the API key never reaches the SQLite file or the PostgreSQL table") {
  drop_pg_tables();
  SimFixture f;
  const auto dir = temp_dir("db-key");
  const std::string file = (dir / "u.db").string();
  {
    auto o = f.options(true);
    o.sleep_for = [](std::chrono::milliseconds) {};
    o.record_request_summary = true;
    o.record_message_text = true;
    o.recorders = {std::make_shared<SqliteRecorder>(file), std::make_shared<PostgresRecorder>(pg_conninfo())};
    TaotokenClient client(o);
    f.calls_with_key_echo(client);
  }
  for (const auto& entry : fs::directory_iterator(dir)) {  // the database and its WAL files, byte for byte
    std::ifstream in(entry.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(bytes.find("sk-test-secret-key-123") == std::string::npos);
  }
  CHECK(sqlite_count(file) == 3);
  CHECK(pg("SELECT count(*) FROM taotoken_requests") == "3");
  CHECK(pg("SELECT count(*) FROM taotoken_requests WHERE concat_ws('|', request_id, upstream_request_id, error_message, "
           "attempts_json, tags_json, request_summary, model, requested_model) LIKE '%sk-test-secret%'") == "0");
  fs::remove_all(dir);
}
