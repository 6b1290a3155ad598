// End-to-end cost of usage recording: TaotokenClient::chat() in a sequential
// loop against the same upstream, with five client configurations that
// differ only in ClientOptions::recorders:
//
//   norecorder  no recorder
//   memory      MemoryRecorder (default capacity)
//   jsonl       JsonlRecorder to DIR/usage.jsonl (default options)
//   sqlite      SqliteRecorder to DIR/usage.sqlite (default options)
//   postgres    PostgresRecorder to CONNINFO (default options)
//
// Usage:
//   taotoken_bench_recorders --base-url http://127.0.0.1:PORT/v1 --dir DIR
//                            [--pg CONNINFO] [--configs norecorder,memory,jsonl,sqlite,postgres]
//                            [--rounds 15] [--requests 2000] [--warmup 1000]
//                            [--status-url http://127.0.0.1:PORT/nginx_status] [--worker-cpu N]
//
// --pg-backend-cpu N pins the PostgreSQL server process that serves the
// recorder's connection (found in pg_stat_activity by the application name
// the recorder's libpq connection gets from PGAPPNAME) to CPU N, so the
// server's share of the work lands in a known place: on another CPU than the
// benchmark (the server is elsewhere; only the client's cost is measured) or
// on the benchmark's own (its cost is charged too). Needs the right to
// change another user's affinity (root / CAP_SYS_NICE).
//
// --worker-cpu N moves the writer threads of the JSONL, SQLite and
// PostgreSQL recorders (found as the threads their constructors start) to
// CPU N, so their writing no longer
// competes with the request loop: the ratio then prices only what record()
// costs the calling thread (enqueue and wake-up), not the writing itself.
// With --same-cpu-too each of them is measured twice in the same rounds: as
// `jsonl`/`sqlite`/`postgres` with its writer on CPU N, and as
// `jsonl_samecpu`/`sqlite_samecpu`/`postgres_samecpu` (the same client and recorder) with
// its worker moved onto the benchmark's own CPU for that loop, so the
// writing competes with the request loop (the recorder's whole CPU cost).
//
// The configurations run one after the other in each round, the order
// rotating by one every round, so each takes every position equally often
// and drift hits all alike. rps is measured over the request loop only:
// the database recorders are asynchronous (record() enqueues, a worker
// thread writes), so after each timed loop the configuration's recorder is
// flushed, untimed for rps but timed and reported (`flush_ms`), so no
// backlog spills into the next configuration's loop. At the end every
// recorder is flushed once more (`final_flush_ms`) and what it holds is
// counted: MemoryRecorder::count(), the lines of the JSONL file(s), the rows
// of the SQLite file and of the PostgreSQL table (via summarize(): requests,
// successes and token totals must match every call made), and dropped()
// must be 0. Any mismatch or failed request exits with status 1.
//
// Output:
//   RESULT name=chat_seq_norecorder rps=<median> us_per_req=<1e6/rps>
//   RESULT name=chat_seq_<recorder> rps=<median> us_per_req=<..> ratio=<rps / norecorder rps> us_added=<..>
//     flush_ms_per_round=<median> final_flush_ms=<..>

#include <curl/curl.h>
#include <dirent.h>
#include <libpq-fe.h>
#include <sched.h>
#include <sys/statfs.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "bench_chat.h"
#include "bench_common.h"
#include "taotoken/client.h"
#include "taotoken/postgres_recorder.h"
#include "taotoken/recorders.h"
#include "taotoken/sqlite_recorder.h"

namespace {

using bench::chat_once;
using bench::chat_request;
using bench::Clock;
using bench::median;
using bench::nginx_accepts;

constexpr const char* kAllConfigs[] = {"norecorder", "memory", "jsonl", "sqlite", "postgres"};

struct Config {
  std::string name;
  std::shared_ptr<taotoken::UsageRecorder> recorder;  // null for norecorder
  std::shared_ptr<taotoken::TaotokenClient> client;
  // Every chat() made with this client (warm-up included); shared by the
  // two placements of one recorder.
  std::shared_ptr<long> calls = std::make_shared<long>(0);
  bool owner = true;     // false: the _samecpu twin of the config before it
  pid_t worker = -1;     // the recorder's worker thread, when it is moved
  long worker_cpu = -1;  // where the worker runs during this config's loops
  std::vector<double> rps;
  std::vector<double> flush_ms;
  double secs = 0;
  double flush_secs = 0;
};

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: taotoken_bench_recorders --base-url URL --dir DIR [--pg CONNINFO]\n"
               "         [--configs norecorder,memory,jsonl,sqlite,postgres] [--rounds N] [--requests N]\n"
               "         [--warmup N] [--status-url URL] [--worker-cpu N [--same-cpu-too]] [--pg-backend-cpu N]\n");
  std::exit(2);
}

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "taotoken_bench_recorders: %s\n", message.c_str());
  std::exit(1);
}

std::string fs_type(const std::string& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "?";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53: return "ext2/3/4";
    case 0x01021994: return "tmpfs";
    case 0x794C7630: return "overlayfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

// The threads of this process.
std::set<pid_t> threads() {
  std::set<pid_t> out;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') out.insert(static_cast<pid_t>(std::atol(e->d_name)));
    ::closedir(d);
  }
  return out;
}

bool pin(pid_t pid, long cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(cpu), &set);
  return ::sched_setaffinity(pid, sizeof set, &set) == 0;
}

// Pins the server processes of the connections named `app` (except the
// querying one) to `cpu`; returns their pids.
std::vector<long> pin_pg_backends(const std::string& conninfo, const std::string& app, long cpu) {
  std::vector<long> pids;
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    PQfinish(c);
    return pids;
  }
  const char* params[] = {app.c_str()};
  PGresult* r = PQexecParams(c,
                             "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> "
                             "pg_backend_pid()",
                             1, nullptr, params, nullptr, nullptr, 0);
  if (PQresultStatus(r) == PGRES_TUPLES_OK)
    for (int i = 0; i < PQntuples(r); ++i) {
      const long pid = std::atol(PQgetvalue(r, i, 0));
      if (!pin(static_cast<pid_t>(pid), cpu)) fail("cannot pin the PostgreSQL server process " + std::to_string(pid));
      pids.push_back(pid);
    }
  PQclear(r);
  PQfinish(c);
  return pids;
}

// Lines in path and its rotated siblings path.1 … path.N.
long count_lines(const std::string& path, long& bytes) {
  long lines = 0;
  bytes = 0;
  for (int i = 0;; ++i) {
    const std::string p = i == 0 ? path : path + "." + std::to_string(i);
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      if (i == 0) return -1;
      break;
    }
    char buf[1 << 16];
    while (in) {
      in.read(buf, sizeof buf);
      const auto n = in.gcount();
      bytes += n;
      lines += std::count(buf, buf + n, '\n');
    }
  }
  return lines;
}

// Checks a summary read back from a database against the calls made.
void check_summary(const char* who, const taotoken::UsageSummary& s, long expected) {
  const auto& t = s.total;
  std::printf("INFO %s holds %lld rows: %lld successes, %lld prompt + %lld completion = %lld total tokens\n", who,
              static_cast<long long>(t.requests), static_cast<long long>(t.successes),
              static_cast<long long>(t.prompt_tokens), static_cast<long long>(t.completion_tokens),
              static_cast<long long>(t.total_tokens));
  if (t.requests != expected || t.successes != expected || t.prompt_tokens != expected * bench::kPromptTokens ||
      t.completion_tokens != expected * bench::kCompletionTokens || t.total_tokens != expected * bench::kTotalTokens)
    fail(std::string(who) + ": rows do not match the " + std::to_string(expected) + " successful calls made");
}

}  // namespace

int main(int argc, char** argv) {
  std::string base_url, status_url, dir, pg;
  std::string configs_arg = "norecorder,memory,jsonl,sqlite,postgres";
  long rounds = 15, requests = 2000, warmup = 1000, worker_cpu = -1, pg_backend_cpu = -1;
  bool same_cpu_too = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--base-url" && has_value) base_url = argv[++i];
    else if (a == "--status-url" && has_value) status_url = argv[++i];
    else if (a == "--dir" && has_value) dir = argv[++i];
    else if (a == "--pg" && has_value) pg = argv[++i];
    else if (a == "--configs" && has_value) configs_arg = argv[++i];
    else if (a == "--rounds" && has_value) rounds = bench::parse_count(argv[++i], usage);
    else if (a == "--requests" && has_value) requests = bench::parse_count(argv[++i], usage);
    else if (a == "--warmup" && has_value) warmup = bench::parse_count(argv[++i], usage);
    else if (a == "--same-cpu-too") same_cpu_too = true;
    else if ((a == "--worker-cpu" || a == "--pg-backend-cpu") && has_value) {
      char* end = nullptr;
      const long cpu = std::strtol(argv[++i], &end, 10);
      if (!end || *end || cpu < 0 || cpu >= CPU_SETSIZE) usage();
      (a == "--worker-cpu" ? worker_cpu : pg_backend_cpu) = cpu;
    }
    else usage();
  }
  if (base_url.empty() || dir.empty()) usage();
  while (!base_url.empty() && base_url.back() == '/') base_url.pop_back();

  // Configurations, in the canonical order.
  std::vector<std::string> wanted;
  for (std::size_t start = 0; start <= configs_arg.size();) {
    auto end = configs_arg.find_first_of(", ", start);
    if (end == std::string::npos) end = configs_arg.size();
    if (end > start) wanted.push_back(configs_arg.substr(start, end - start));
    start = end + 1;
  }
  for (const auto& w : wanted)
    if (std::find_if(std::begin(kAllConfigs), std::end(kAllConfigs), [&](const char* c) { return w == c; }) ==
        std::end(kAllConfigs))
      fail("unknown configuration '" + w + "' (norecorder, memory, jsonl, sqlite, postgres)");
  auto want = [&](const char* c) { return std::find(wanted.begin(), wanted.end(), c) != wanted.end(); };
  if (want("postgres") && pg.empty()) fail("postgres needs --pg CONNINFO");
  if (same_cpu_too && worker_cpu < 0) fail("--same-cpu-too needs --worker-cpu");
  // The benchmark's own CPU (it must be pinned to one for --same-cpu-too).
  long own_cpu = -1;
  if (same_cpu_too) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) != 1)
      fail("--same-cpu-too needs the benchmark pinned to one CPU");
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &set)) own_cpu = cpu;
    if (own_cpu == worker_cpu) fail("--worker-cpu is the benchmark's own CPU");
  }

  curl_global_init(CURL_GLOBAL_DEFAULT);
  const taotoken::ChatRequest req = chat_request();
  const std::string jsonl_path = dir + "/usage.jsonl";
  const std::string sqlite_path = dir + "/usage.sqlite";

  // A recorder failure (cannot write, queue full) fails the run.
  auto on_error = [](std::string_view who, std::string_view msg) {
    std::fprintf(stderr, "recorder %.*s: %.*s\n", static_cast<int>(who.size()), who.data(),
                 static_cast<int>(msg.size()), msg.data());
    // May run on a recorder's worker thread: no destructors.
    std::fflush(nullptr);
    std::_Exit(1);
  };
  taotoken::DatabaseRecorderOptions db_opts;  // defaults, but failures are fatal here
  db_opts.on_error = on_error;

  // The recorder's connection is found by this name (libpq reads PGAPPNAME
  // when the conninfo names no application).
  const std::string pg_app = "taotoken_bench_recorders_" + std::to_string(::getpid());
  if (want("postgres")) ::setenv("PGAPPNAME", pg_app.c_str(), 1);
  long pg_rows_before = 0;
  if (want("postgres")) {
    // The table may not exist yet (a fresh database): then it has 0 rows.
    auto s = taotoken::PostgresRecorder::summarize(pg);
    if (s) pg_rows_before = static_cast<long>(s->total.requests);
  }

  std::vector<Config> configs;
  for (const char* name : kAllConfigs) {
    if (!want(name)) continue;
    Config c;
    c.name = name;
    const std::string_view n = name;
    if (n == "memory") c.recorder = std::make_shared<taotoken::MemoryRecorder>();
    else if (n == "jsonl" || n == "sqlite" || n == "postgres") {
      const auto before = threads();
      if (n == "jsonl")
        c.recorder = std::make_shared<taotoken::JsonlRecorder>(jsonl_path, taotoken::JsonlOptions{}, on_error);
      else if (n == "sqlite") c.recorder = std::make_shared<taotoken::SqliteRecorder>(sqlite_path, db_opts);
      else c.recorder = std::make_shared<taotoken::PostgresRecorder>(pg, db_opts);
      if (worker_cpu >= 0) {
        std::vector<pid_t> started;
        for (pid_t tid : threads())
          if (!before.count(tid)) started.push_back(tid);
        if (started.size() != 1) fail(c.name + ": expected one worker thread, found " + std::to_string(started.size()));
        c.worker = started[0];
        c.worker_cpu = worker_cpu;
        if (!pin(c.worker, worker_cpu)) fail(c.name + ": cannot move its worker thread");
        std::printf("INFO %s recorder's worker thread moved to CPU %ld%s\n", name, worker_cpu,
                    same_cpu_too ? " (and to the benchmark's own CPU for the _samecpu loops)" : "");
      }
    }
    taotoken::ClientOptions o;
    o.base_url = base_url;
    o.api_key = "bench-key";
    if (c.recorder) o.recorders.push_back(c.recorder);
    o.on_recorder_error = on_error;
    c.client = std::make_shared<taotoken::TaotokenClient>(o);
    const bool twin = same_cpu_too && c.worker >= 0;
    configs.push_back(c);
    if (twin) {
      c.name += "_samecpu";
      c.owner = false;
      c.worker_cpu = own_cpu;
      configs.push_back(std::move(c));
    }
  }

  std::string why;
  auto run = [&](Config& c, long n) {
    if (c.worker >= 0 && !pin(c.worker, c.worker_cpu)) fail(c.name + ": cannot move its worker thread");
    for (long i = 0; i < n; ++i)
      if (!chat_once(*c.client, req, why)) fail("chat_seq_" + c.name + ": request failed: " + why);
    *c.calls += n;
  };
  auto flush = [](Config& c) {
    const auto t0 = Clock::now();
    if (c.recorder) c.recorder->flush();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };

  // Warm-up: connections, allocator, caches, the database files and schema.
  for (auto& c : configs) {
    run(c, warmup);
    flush(c);
  }
  if (want("postgres") && pg_backend_cpu >= 0) {
    const auto pids = pin_pg_backends(pg, pg_app, pg_backend_cpu);
    if (pids.size() != 1)
      fail("expected one PostgreSQL server process for the recorder's connection, found " +
           std::to_string(pids.size()));
    std::printf("INFO PostgreSQL server process %ld (the recorder's connection) pinned to CPU %ld\n", pids[0],
                pg_backend_cpu);
  }
  std::printf("INFO upstream %s, %ld rounds x %ld requests per configuration, warm-up %ld\n", base_url.c_str(),
              rounds, requests, warmup);
  std::printf("INFO files in %s (%s): usage.jsonl, usage.sqlite; postgres: '%s'\n", dir.c_str(),
              fs_type(dir).c_str(), pg.c_str());

  const long accepts_before = nginx_accepts(status_url);
  const std::size_t k = configs.size();
  for (long r = 0; r < rounds; ++r) {
    std::string line = "INFO round " + std::to_string(r + 1) + ":";
    std::vector<double> round_rps(k);
    for (std::size_t j = 0; j < k; ++j) {
      Config& c = configs[(j + static_cast<std::size_t>(r)) % k];
      const auto t0 = Clock::now();
      run(c, requests);
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const double fsecs = flush(c);
      c.secs += secs;
      c.flush_secs += fsecs;
      c.rps.push_back(static_cast<double>(requests) / secs);
      c.flush_ms.push_back(fsecs * 1e3);
    }
    for (auto& c : configs) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " %s=%.0f", c.name.c_str(), c.rps.back());
      line += buf;
    }
    if (configs.front().name == "norecorder" && k > 1) {
      line += " | ratios";
      for (std::size_t j = 1; j < k; ++j) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %.3f", configs[j].rps.back() / configs[0].rps.back());
        line += buf;
      }
    }
    std::printf("%s\n", line.c_str());
  }
  const long accepts_after = nginx_accepts(status_url);
  if (accepts_before >= 0 && accepts_after >= 0)
    std::printf("INFO new upstream connections during the measured rounds: %ld (0 = keep-alive held)\n",
                accepts_after - accepts_before - 1);

  // Final flush, then everything every recorder holds must add up.
  std::vector<double> final_flush_ms(k);
  for (std::size_t j = 0; j < k; ++j) final_flush_ms[j] = flush(configs[j]) * 1e3;
  for (auto& c : configs) {
    if (!c.owner) continue;  // the same recorder as the config before it
    const long expected = *c.calls;
    if (c.name == "memory") {
      const auto n = static_cast<long>(static_cast<taotoken::MemoryRecorder&>(*c.recorder).count());
      std::printf("INFO memory recorder counted %ld records\n", n);
      if (n != expected) fail("memory: " + std::to_string(n) + " records, expected " + std::to_string(expected));
    } else if (c.name == "jsonl") {
      auto& rec = static_cast<taotoken::JsonlRecorder&>(*c.recorder);
      if (rec.dropped() != 0) fail("jsonl: " + std::to_string(rec.dropped()) + " records dropped");
      long bytes = 0;
      const long n = count_lines(jsonl_path, bytes);
      std::printf("INFO %s holds %ld lines (%ld bytes, %.0f bytes per record)\n", jsonl_path.c_str(), n, bytes,
                  n > 0 ? static_cast<double>(bytes) / static_cast<double>(n) : 0.0);
      if (n != expected) fail("jsonl: " + std::to_string(n) + " lines, expected " + std::to_string(expected));
    } else if (c.name == "sqlite") {
      auto& rec = static_cast<taotoken::SqliteRecorder&>(*c.recorder);
      if (rec.dropped() != 0) fail("sqlite: " + std::to_string(rec.dropped()) + " records dropped");
      auto s = taotoken::SqliteRecorder::summarize(sqlite_path);
      if (!s) fail("sqlite: summarize failed: " + s.error().describe());
      check_summary(sqlite_path.c_str(), *s, expected);
    } else if (c.name == "postgres") {
      auto& rec = static_cast<taotoken::PostgresRecorder&>(*c.recorder);
      if (rec.dropped() != 0) fail("postgres: " + std::to_string(rec.dropped()) + " records dropped");
      auto s = taotoken::PostgresRecorder::summarize(pg);
      if (!s) fail("postgres: summarize failed: " + s.error().describe());
      s->total.requests -= pg_rows_before;
      s->total.successes -= pg_rows_before;
      s->total.prompt_tokens -= pg_rows_before * bench::kPromptTokens;
      s->total.completion_tokens -= pg_rows_before * bench::kCompletionTokens;
      s->total.total_tokens -= pg_rows_before * bench::kTotalTokens;
      if (pg_rows_before > 0)
        std::printf("INFO postgres: %ld rows were there before this run (not counted below)\n", pg_rows_before);
      check_summary("postgres table requests", *s, expected);
    }
  }
  std::printf("INFO every recorder holds all calls made with its client (warm-up + measured; %ld per configuration)\n",
              warmup + rounds * requests);

  // Results.
  const bool has_base = configs.front().name == "norecorder";
  const double base_m = has_base ? median(configs.front().rps) : 0;
  const double total = static_cast<double>(rounds * requests);
  for (std::size_t j = 0; j < k; ++j) {
    const Config& c = configs[j];
    std::printf("INFO totals: chat_seq_%s rps=%.0f, incl. per-round flushes rps=%.0f", c.name.c_str(),
                total / c.secs, total / (c.secs + c.flush_secs));
    if (has_base && j > 0) {
      std::vector<double> ratios;
      for (std::size_t r = 0; r < c.rps.size(); ++r) ratios.push_back(c.rps[r] / configs.front().rps[r]);
      std::printf(", median of per-round ratios %.3f (min %.3f, max %.3f)", median(ratios),
                  *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
    }
    std::printf("\n");
  }
  for (std::size_t j = 0; j < k; ++j) {
    const Config& c = configs[j];
    const double m = median(c.rps);
    std::printf("RESULT name=chat_seq_%s rps=%.1f us_per_req=%.2f", c.name.c_str(), m, 1e6 / m);
    if (has_base && j > 0) std::printf(" ratio=%.3f us_added=%.2f", m / base_m, 1e6 / m - 1e6 / base_m);
    if (c.recorder)
      std::printf(" flush_ms_per_round=%.2f final_flush_ms=%.2f", median(c.flush_ms), final_flush_ms[j]);
    std::printf("\n");
  }
  if (has_base) {
    std::string line = "INFO target each recorder costs <= 5% (ratio >= 0.95):";
    for (std::size_t j = 1; j < k; ++j)
      line += " " + configs[j].name + (median(configs[j].rps) / base_m >= 0.95 ? " met" : " NOT met");
    std::printf("%s\n", line.c_str());
  }
  configs.clear();  // clients first (their last handle flushes), then recorders
  curl_global_cleanup();
  return 0;
}
