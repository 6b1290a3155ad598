// taotoken: command-line client. `taotoken chat ...`, `taotoken models`.
// Exit statuses are part of the interface (see usage text and README).

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "json_writer.h"
#include "taotoken/recorders.h"
#include "taotoken/taotoken.h"
#ifdef TAOTOKEN_CLI_HAS_SQLITE
#include "taotoken/sqlite_recorder.h"
#endif
#ifdef TAOTOKEN_CLI_HAS_POSTGRES
#include "taotoken/postgres_recorder.h"
#endif

namespace {

using taotoken::ErrorKind;
using taotoken::detail::JsonWriter;

constexpr const char* kUsage =
    "usage: taotoken chat [options] PROMPT     (PROMPT '-' reads standard input)\n"
    "       taotoken models [--base-url URL] [--json]\n"
    "       taotoken usage --db sqlite:PATH|postgres:CONNINFO [--since T] [--until T] [--by model|day|tag]\n"
    "                      [--format table|json|csv]\n"
    "       taotoken logs --db sqlite:PATH|postgres:CONNINFO [--limit N] [--json]\n"
    "       taotoken --version\n"
    "\n"
    "chat options:\n"
    "  --base-url URL       API base (default: $TAOTOKEN_BASE_URL, else https://taotoken.net/api/v1)\n"
    "  --model M            model (default: claude-sonnet-4-6)\n"
    "  --system TEXT        system message\n"
    "  --temperature T      sampling temperature\n"
    "  --max-tokens N       max_tokens\n"
    "  --timeout SECONDS    total deadline: every attempt and wait (default 600)\n"
    "  --attempt-timeout SECONDS  time allowed for one attempt\n"
    "  --max-retries N      retries of failed attempts (default 2, the OpenAI SDKs' policy)\n"
    "  --stream             stream: print tokens as they arrive (with --json: one object at the end)\n"
    "  --idle-timeout SECONDS  streams: fail when no data arrives for this long\n"
    "  --json               print exactly one JSON object (success or failure)\n"
    "  --record DEST        record the call: sqlite:PATH, jsonl:PATH or postgres:CONNINFO\n"
    "\n"
    "usage/logs: T is YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or a span back from now (90m, 24h, 7d).\n"
    "\n"
    "The API key comes from $TAOTOKEN_API_KEY.\n"
    "\n"
    "exit status: 0 ok; 2 bad usage; 3 invalid argument or configuration (e.g. no API key);\n"
    "  4 authentication/permission; 5 rate limited; 6 request rejected (400/404/409/422);\n"
    "  7 server error; 8 timeout or connection failure; 9 bad response; 10 cancelled;\n"
    "  1 anything else.\n";

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_argument: return 3;
    case ErrorKind::authentication:
    case ErrorKind::permission_denied: return 4;
    case ErrorKind::rate_limited: return 5;
    case ErrorKind::invalid_request:
    case ErrorKind::not_found:
    case ErrorKind::conflict:
    case ErrorKind::unprocessable: return 6;
    case ErrorKind::server_error: return 7;
    case ErrorKind::timeout:
    case ErrorKind::connection:
    case ErrorKind::stream_truncated: return 8;
    case ErrorKind::bad_response: return 9;
    case ErrorKind::cancelled: return 10;
    case ErrorKind::overloaded: return 1;
  }
  return 1;
}

struct Args {
  std::string command;
  std::optional<std::string> base_url, model, system;
  std::optional<double> temperature;
  std::optional<std::int64_t> max_tokens;
  std::optional<double> timeout_s;
  std::optional<double> attempt_timeout_s;
  std::optional<int> max_retries;
  std::optional<double> idle_timeout_s;
  bool stream = false;
  bool json = false;
  std::optional<std::string> prompt;
  std::optional<std::string> record;  // chat --record
  std::optional<std::string> db;      // usage/logs --db
  std::optional<std::string> since, until;
  std::string by = "model";
  std::string format = "table";
  std::size_t limit = 20;
};

taotoken::Result<std::shared_ptr<taotoken::UsageRecorder>> open_recorder(const std::string& dest);
struct Args;
int fail(const Args& a, const taotoken::Error& e, std::chrono::steady_clock::time_point start);

bool g_json = false;  // set before parsing, so usage errors honour --json too

[[noreturn]] void usage_error(const std::string& message) {
  if (g_json) {
    std::string out;
    JsonWriter w(out);
    w.begin_object().key("ok").boolean(false).key("error").begin_object();
    w.key("kind").string("usage").key("http_status").null().key("type").null().key("code").null();
    w.key("param").null().key("message").string(message).key("retry_after_ms").null().end_object();
    w.key("request_id").null().key("upstream_request_id").null();
    w.key("attempts").number(std::int64_t{0}).key("latency_ms").number(std::int64_t{0}).end_object();
    std::printf("%s\n", out.c_str());
  }
  std::fprintf(stderr, "taotoken: %s\n\n%s", message.c_str(), kUsage);
  std::exit(2);
}

double parse_double(const std::string& flag, const std::string& v) {
  try {
    std::size_t used = 0;
    double d = std::stod(v, &used);
    if (used == v.size() && std::isfinite(d)) return d;
  } catch (...) {
  }
  usage_error(fmt::format("{} expects a finite number, got '{}'", flag, v));
}

Args parse(int argc, char** argv) {
  Args a;
  int i = 1;
  if (i < argc) a.command = argv[i++];
  if (a.command == "--version") return a;
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  if (a.command != "chat" && a.command != "models" && a.command != "usage" && a.command != "logs")
    usage_error(a.command.empty() ? "no command given" : fmt::format("unknown command '{}'", a.command));
  for (; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", s));
      return argv[++i];
    };
    if (s == "--base-url") a.base_url = value();
    else if (s == "--json") a.json = true;
    else if (s == "--model") a.model = value();
    else if (s == "--system") a.system = value();
    else if (s == "--temperature") a.temperature = parse_double(s, value());
    else if (s == "--max-tokens") {
      double d = parse_double(s, value());
      if (d < 1 || d > 1e12 || d != std::floor(d)) usage_error("--max-tokens expects a positive integer");
      a.max_tokens = static_cast<std::int64_t>(d);
    } else if (s == "--timeout") {
      a.timeout_s = parse_double(s, value());
      if (!(*a.timeout_s > 0) || *a.timeout_s > 1e7) usage_error("--timeout expects a positive number of seconds");
    } else if (s == "--attempt-timeout") {
      a.attempt_timeout_s = parse_double(s, value());
      if (!(*a.attempt_timeout_s > 0) || *a.attempt_timeout_s > 1e7)
        usage_error("--attempt-timeout expects a positive number of seconds");
    } else if (s == "--record") {
      a.record = value();
    } else if (s == "--db") {
      a.db = value();
    } else if (s == "--since") {
      a.since = value();
    } else if (s == "--until") {
      a.until = value();
    } else if (s == "--by") {
      a.by = value();
      if (a.by != "model" && a.by != "day" && a.by != "tag") usage_error("--by expects model, day or tag");
    } else if (s == "--format") {
      a.format = value();
      if (a.format != "table" && a.format != "json" && a.format != "csv")
        usage_error("--format expects table, json or csv");
    } else if (s == "--limit") {
      double d = parse_double(s, value());
      if (d < 1 || d > 100000 || d != std::floor(d)) usage_error("--limit expects a positive integer");
      a.limit = static_cast<std::size_t>(d);
    } else if (s == "--stream") {
      a.stream = true;
    } else if (s == "--idle-timeout") {
      a.idle_timeout_s = parse_double(s, value());
      if (!(*a.idle_timeout_s > 0) || *a.idle_timeout_s > 1e7)
        usage_error("--idle-timeout expects a positive number of seconds");
    } else if (s == "--max-retries") {
      double d = parse_double(s, value());
      if (d < 0 || d > 100 || d != std::floor(d))
        usage_error("--max-retries expects an integer from 0 to 100");
      a.max_retries = static_cast<int>(d);
    } else if (s == "--help" || s == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (s.size() > 1 && s[0] == '-' && s != "-") {
      usage_error(fmt::format("unknown option '{}'", s));
    } else if (!a.prompt) {
      a.prompt = s;
    } else {
      usage_error("more than one PROMPT given (quote it)");
    }
  }
  if (a.command == "chat" && !a.prompt) usage_error("chat needs a PROMPT");
  if ((a.command == "usage" || a.command == "logs") && !a.db) usage_error(a.command + " needs --db sqlite:PATH or postgres:CONNINFO");
  return a;
}

void opt_string(JsonWriter& w, std::string_view key, const std::optional<std::string>& v) {
  w.key(key);
  if (v) w.string(*v); else w.null();
}

void opt_int(JsonWriter& w, std::string_view key, const std::optional<std::int64_t>& v) {
  w.key(key);
  if (v) w.number(*v); else w.null();
}

void tool_calls(JsonWriter& w, const std::vector<taotoken::ToolCall>& calls) {
  w.key("tool_calls").begin_array();
  for (const auto& tc : calls)
    w.begin_object().key("id").string(tc.id).key("name").string(tc.name).key("arguments").string(tc.arguments).end_object();
  w.end_array();
}

void common_tail(JsonWriter& w, const std::string& request_id, const std::string& upstream_id, int attempts,
                 std::int64_t latency_ms) {
  w.key("request_id");
  if (request_id.empty()) w.null(); else w.string(request_id);
  w.key("upstream_request_id");
  if (upstream_id.empty()) w.null(); else w.string(upstream_id);
  w.key("attempts").number(static_cast<std::int64_t>(attempts));
  w.key("latency_ms").number(latency_ms);
}

std::string error_json(const taotoken::Error& e, std::int64_t latency_ms) {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("ok").boolean(false).key("error").begin_object();
  w.key("kind").string(taotoken::to_string(e.kind()));
  w.key("http_status");
  if (e.http_status) w.number(static_cast<std::int64_t>(e.http_status)); else w.null();
  opt_string(w, "type", e.type);
  opt_string(w, "code", e.code);
  opt_string(w, "param", e.param);
  w.key("message").string(e.message());
  w.key("retry_after_ms");
  if (e.retry_after) w.number(static_cast<std::int64_t>(e.retry_after->count())); else w.null();
  w.end_object();
  common_tail(w, e.request_id, e.upstream_request_id, e.attempts, latency_ms);
  w.end_object();
  return out;
}

std::string success_json(const taotoken::ChatCompletion& c) {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("ok").boolean(true);
  opt_string(w, "id", c.id.empty() ? std::nullopt : std::optional<std::string>(c.id));
  opt_string(w, "model", c.model.empty() ? std::nullopt : std::optional<std::string>(c.model));
  const taotoken::Choice* first = c.choices.empty() ? nullptr : &c.choices.front();
  opt_string(w, "content", first ? first->message.content : std::nullopt);
  opt_string(w, "refusal", first ? first->message.refusal : std::nullopt);
  opt_string(w, "finish_reason", first ? first->finish_reason : std::nullopt);
  tool_calls(w, first ? first->message.tool_calls : std::vector<taotoken::ToolCall>{});
  w.key("choices").begin_array();
  for (const auto& ch : c.choices) {
    w.begin_object().key("index").number(static_cast<std::int64_t>(ch.index));
    opt_string(w, "content", ch.message.content);
    opt_string(w, "refusal", ch.message.refusal);
    opt_string(w, "finish_reason", ch.finish_reason);
    tool_calls(w, ch.message.tool_calls);
    w.end_object();
  }
  w.end_array();
  w.key("usage");
  if (c.usage) {
    w.begin_object();
    opt_int(w, "prompt_tokens", c.usage->prompt_tokens);
    opt_int(w, "completion_tokens", c.usage->completion_tokens);
    opt_int(w, "total_tokens", c.usage->total_tokens);
    opt_int(w, "cached_tokens", c.usage->cached_tokens);
    opt_int(w, "reasoning_tokens", c.usage->reasoning_tokens);
    w.end_object();
  } else {
    w.null();
  }
  common_tail(w, c.request_id, c.upstream_request_id, c.attempts, c.latency.count());
  if (c.streamed) {
    w.key("stream").boolean(true).key("ttft_ms");
    if (c.time_to_first_token) w.number(static_cast<std::int64_t>(c.time_to_first_token->count())); else w.null();
  }
  w.end_object();
  return out;
}

taotoken::Result<taotoken::TaotokenClient> make_client(const Args& a) {
  taotoken::ClientOptions opts;
  if (a.base_url) opts.base_url = *a.base_url;
  if (a.model) opts.default_model = *a.model;
  if (a.timeout_s) opts.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(*a.timeout_s * 1000));
  if (a.attempt_timeout_s)
    opts.attempt_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(*a.attempt_timeout_s * 1000));
  if (a.idle_timeout_s)
    opts.idle_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(*a.idle_timeout_s * 1000));
  if (a.max_retries) opts.retry_policy = taotoken::RetryPolicy::standard(*a.max_retries);
  if (a.record) {
    auto recorder = open_recorder(*a.record);
    if (!recorder) return std::move(recorder.error());
    opts.recorders.push_back(*recorder);
    opts.prices = std::make_shared<taotoken::PriceTable>(taotoken::PriceTable::builtin_estimates());
  }
  return taotoken::TaotokenClient::create(opts);
}

// ---- usage recording and reports

taotoken::Result<std::shared_ptr<taotoken::UsageRecorder>> open_recorder(const std::string& dest) {
  const auto colon = dest.find(':');
  const std::string kind = dest.substr(0, colon), where = colon == std::string::npos ? "" : dest.substr(colon + 1);
  if (where.empty()) return taotoken::Error(taotoken::ErrorKind::invalid_argument, "--record expects KIND:WHERE");
  try {
    if (kind == "jsonl") return std::shared_ptr<taotoken::UsageRecorder>(std::make_shared<taotoken::JsonlRecorder>(where));
#ifdef TAOTOKEN_CLI_HAS_SQLITE
    if (kind == "sqlite") return std::shared_ptr<taotoken::UsageRecorder>(std::make_shared<taotoken::SqliteRecorder>(where));
#endif
#ifdef TAOTOKEN_CLI_HAS_POSTGRES
    if (kind == "postgres")
      return std::shared_ptr<taotoken::UsageRecorder>(std::make_shared<taotoken::PostgresRecorder>(where));
#endif
  } catch (const taotoken::Error& e) {
    return e;
  }
  return taotoken::Error(taotoken::ErrorKind::invalid_argument,
                         fmt::format("unknown or unavailable record destination '{}' (sqlite:, jsonl:, postgres:)", kind));
}

// YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or a span back from now (90m, 24h, 7d).
std::chrono::system_clock::time_point parse_time(const std::string& flag, const std::string& v) {
  using namespace std::chrono;
  if (!v.empty() && (v.back() == 'm' || v.back() == 'h' || v.back() == 'd')) {
    const double n = parse_double(flag, v.substr(0, v.size() - 1));
    const double unit = v.back() == 'm' ? 60 : v.back() == 'h' ? 3600 : 86400;
    return system_clock::now() - seconds(static_cast<std::int64_t>(n * unit));
  }
  std::tm tm{};
  const char* end = strptime(v.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end || (*end != 0 && std::string_view(end) != "Z")) {
    tm = {};
    end = strptime(v.c_str(), "%Y-%m-%d", &tm);
    if (!end || *end != 0) usage_error(fmt::format("{} expects YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or 24h/7d, got '{}'", flag, v));
  }
  return system_clock::from_time_t(timegm(&tm));
}

taotoken::Result<taotoken::UsageSummary> summarize(const std::string& db, const taotoken::UsageQuery& q) {
  const auto colon = db.find(':');
  const std::string kind = db.substr(0, colon), where = colon == std::string::npos ? "" : db.substr(colon + 1);
#ifdef TAOTOKEN_CLI_HAS_SQLITE
  if (kind == "sqlite") return taotoken::SqliteRecorder::summarize(where, q);
#endif
#ifdef TAOTOKEN_CLI_HAS_POSTGRES
  if (kind == "postgres") return taotoken::PostgresRecorder::summarize(where, q);
#endif
  (void)q;
  return taotoken::Error(taotoken::ErrorKind::invalid_argument, fmt::format("unknown or unavailable --db kind '{}'", kind));
}

taotoken::Result<std::vector<taotoken::RequestRecord>> recent(const std::string& db, std::size_t limit) {
  const auto colon = db.find(':');
  const std::string kind = db.substr(0, colon), where = colon == std::string::npos ? "" : db.substr(colon + 1);
#ifdef TAOTOKEN_CLI_HAS_SQLITE
  if (kind == "sqlite") return taotoken::SqliteRecorder::recent(where, limit);
#endif
#ifdef TAOTOKEN_CLI_HAS_POSTGRES
  if (kind == "postgres") return taotoken::PostgresRecorder::recent(where, limit);
#endif
  (void)limit;
  return taotoken::Error(taotoken::ErrorKind::invalid_argument, fmt::format("unknown or unavailable --db kind '{}'", kind));
}

void print_summary(const Args& a, const taotoken::UsageSummary& s) {
  const auto& groups = a.by == "model" ? s.by_model : a.by == "day" ? s.by_day : s.by_tag;
  if (a.format == "json") {
    std::printf("%s\n", s.to_json().c_str());
    return;
  }
  auto row = [&](const char* fmt_row, const std::string& key, const taotoken::UsageTotals& t) {
    std::printf(fmt_row, key.c_str(), static_cast<long long>(t.requests), static_cast<long long>(t.successes),
                static_cast<long long>(t.errors), static_cast<long long>(t.cancelled),
                static_cast<long long>(t.prompt_tokens), static_cast<long long>(t.completion_tokens), t.estimated_cost,
                static_cast<long long>(t.latency_p50.count()), static_cast<long long>(t.latency_p95.count()),
                static_cast<long long>(t.latency_p99.count()));
  };
  if (a.format == "csv") {
    std::printf("%s,requests,successes,errors,cancelled,prompt_tokens,completion_tokens,estimated_cost,p50_ms,p95_ms,p99_ms\n",
                a.by.c_str());
    for (const auto& [k, t] : groups) row("%s,%lld,%lld,%lld,%lld,%lld,%lld,%.6f,%lld,%lld,%lld\n", k, t);
    row("%s,%lld,%lld,%lld,%lld,%lld,%lld,%.6f,%lld,%lld,%lld\n", "TOTAL", s.total);
    return;
  }
  std::printf("%-32s %8s %8s %6s %6s %12s %12s %12s %7s %7s %7s\n", a.by.c_str(), "requests", "ok", "errors", "cancel",
              "prompt_tok", "compl_tok", "est_cost_usd", "p50_ms", "p95_ms", "p99_ms");
  const char* f = "%-32s %8lld %8lld %6lld %6lld %12lld %12lld %12.6f %7lld %7lld %7lld\n";
  for (const auto& [k, t] : groups) row(f, k, t);
  row(f, "TOTAL", s.total);
}

int run_usage(const Args& a, std::chrono::steady_clock::time_point start) {
  taotoken::UsageQuery q;
  if (a.since) q.since = parse_time("--since", *a.since);
  if (a.until) q.until = parse_time("--until", *a.until);
  auto s = summarize(*a.db, q);
  if (!s) return fail(a, s.error(), start);
  print_summary(a, *s);
  return 0;
}

int run_logs(const Args& a, std::chrono::steady_clock::time_point start) {
  auto rows = recent(*a.db, a.limit);
  if (!rows) return fail(a, rows.error(), start);
  if (a.json || a.format == "json") {
    std::string out = "[";
    for (std::size_t i = 0; i < rows->size(); ++i) out += (i ? "," : "") + (*rows)[i].to_json();
    std::printf("%s]\n", out.c_str());
    return 0;
  }
  for (const auto& r : *rows)
    std::printf("%s  %-28s %-24s %-9s %4d %6lldms  in=%s out=%s%s%s\n", r.started_at_iso().c_str(), r.request_id.c_str(),
                (r.model.empty() ? r.requested_model : r.model).c_str(), std::string(taotoken::to_string(r.status)).c_str(),
                r.http_status, static_cast<long long>(r.latency.count()),
                r.prompt_tokens ? std::to_string(*r.prompt_tokens).c_str() : "-",
                r.completion_tokens ? std::to_string(*r.completion_tokens).c_str() : "-",
                r.error_kind ? "  " : "", r.error_kind ? std::string(taotoken::to_string(*r.error_kind)).c_str() : "");
  return 0;
}

int fail(const Args& a, const taotoken::Error& e, std::chrono::steady_clock::time_point start) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  if (a.json) std::printf("%s\n", error_json(e, ms).c_str());
  else std::fprintf(stderr, "taotoken: %s\n", e.describe().c_str());
  return exit_code(e.kind());
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--json") g_json = true;
  const Args a = parse(argc, argv);
  if (a.command == "--version") {
    std::printf("taotoken %s\n", TAOTOKEN_VERSION_STRING);
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  if (a.command == "usage") return run_usage(a, start);
  if (a.command == "logs") return run_logs(a, start);
  auto client = make_client(a);
  if (!client) return fail(a, client.error(), start);

  if (a.command == "models") {
    auto models = client->list_models();
    if (!models) return fail(a, models.error(), start);
    if (a.json) {
      std::string out;
      JsonWriter w(out);
      w.begin_object().key("ok").boolean(true).key("models").begin_array();
      for (const auto& m : *models) w.string(m.id);
      w.end_array().end_object();
      std::printf("%s\n", out.c_str());
    } else {
      for (const auto& m : *models) std::printf("%s\n", m.id.c_str());
    }
    return 0;
  }

  std::string prompt = *a.prompt;
  if (prompt == "-") prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());

  taotoken::ChatRequest req;
  if (a.system) req.messages.push_back(taotoken::Message::system(*a.system));
  req.messages.push_back(taotoken::Message::user(prompt));
  req.temperature = a.temperature;
  req.max_tokens = a.max_tokens;

  if (a.stream) {
    // Tokens are printed as they arrive (text mode); --json prints one object at the end.
    auto result = client->chat_stream(req, [&](const taotoken::ChatCompletionChunk& chunk) {
      if (a.json) return true;
      for (const auto& d : chunk.choices) {
        if (d.index != 0) continue;
        if (d.content) std::fwrite(d.content->data(), 1, d.content->size(), stdout);
        if (d.refusal) std::fwrite(d.refusal->data(), 1, d.refusal->size(), stdout);
      }
      std::fflush(stdout);
      return true;
    });
    if (!result) {
      if (!a.json) std::printf("\n");
      return fail(a, result.error(), start);
    }
    if (a.json) std::printf("%s\n", success_json(*result).c_str());
    else std::printf("\n");
    return 0;
  }
  auto result = client->chat(req);
  if (!result) return fail(a, result.error(), start);
  if (a.json) {
    std::printf("%s\n", success_json(*result).c_str());
  } else {
    const auto& c = *result;
    if (!c.choices.empty() && c.choices.front().message.refusal && !c.choices.front().message.content)
      std::printf("[refusal] %s\n", c.choices.front().message.refusal->c_str());
    else
      std::printf("%s\n", c.text().c_str());
    for (const auto& tc : c.choices.empty() ? std::vector<taotoken::ToolCall>{} : c.choices.front().message.tool_calls)
      std::printf("[tool call] %s(%s)\n", tc.name.c_str(), tc.arguments.c_str());
  }
  return 0;
}
