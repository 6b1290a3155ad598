#include "record_sql.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <charconv>
#include <cstdio>

#include "record_json.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

namespace {

std::optional<std::int64_t> to_int(const std::optional<std::string>& s) {
  if (!s || s->empty()) return std::nullopt;
  std::int64_t v = 0;
  auto r = std::from_chars(s->data(), s->data() + s->size(), v);
  if (r.ec != std::errc()) return std::nullopt;
  return v;
}
std::optional<double> to_double(const std::optional<std::string>& s) {
  if (!s || s->empty()) return std::nullopt;
  try {
    return std::stod(*s);
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<ErrorKind> kind_from(std::string_view s) {
  for (int k = 0; k <= static_cast<int>(ErrorKind::overloaded); ++k)
    if (to_string(static_cast<ErrorKind>(k)) == s) return static_cast<ErrorKind>(k);
  return std::nullopt;
}

}  // namespace

std::string newer_schema_error(int version) {
  if (version <= kSchemaVersion) return {};
  return fmt::format("schema version {} is newer than this library's {}", version, kSchemaVersion);
}

WindowClause window_clause(const UsageQuery& query, std::string (*marker)(int)) {
  WindowClause w;
  auto ms = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  };
  if (query.since) {
    w.args.push_back(ms(*query.since));
    w.where = "WHERE started_ms >= " + marker(1);
  }
  if (query.until) {
    w.args.push_back(ms(*query.until));
    w.where += (w.where.empty() ? "WHERE started_ms < " : " AND started_ms < ") + marker(static_cast<int>(w.args.size()));
  }
  return w;
}

RecorderErrorHook error_hook_or_stderr(RecorderErrorHook hook) {
  if (hook) return hook;
  return [](std::string_view who, std::string_view msg) {
    std::fprintf(stderr, "taotoken: %.*s recorder: %.*s\n", static_cast<int>(who.size()), who.data(),
                 static_cast<int>(msg.size()), msg.data());
  };
}

std::string insert_column_list() {
  std::string out;
  for (const char* c : kRecordColumns) {
    if (!out.empty()) out += ", ";
    out += c;
  }
  return out + ", request_summary";
}

void record_columns(const RequestRecord& r, RecordScratch& scratch, RecordColumns& out) {
  std::string& attempts = scratch.attempts_json;
  attempts.clear();
  append_attempts_json(attempts, r.attempts);
  std::string& tags = scratch.tags_json;
  tags.clear();
  append_tags_json(tags, r.tags);
  scratch.started_at.resize(24);
  format_iso8601(r.started_at, &scratch.started_at[0]);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.started_at.time_since_epoch()).count();
  auto opt = [](const auto& v) { return v ? SqlValue(*v) : SqlValue(); };
  out = {SqlValue(r.request_id),
         SqlValue(r.upstream_request_id),
         SqlValue(scratch.started_at),
         SqlValue(static_cast<std::int64_t>(ms)),
         SqlValue(r.endpoint),
         SqlValue(r.requested_model),
         SqlValue(r.model),
         r.provider ? SqlValue(*r.provider) : SqlValue(),
         SqlValue(static_cast<std::int64_t>(r.streamed ? 1 : 0)),
         SqlValue(to_string(r.status)),
         SqlValue(static_cast<std::int64_t>(r.http_status)),
         r.error_kind ? SqlValue(to_string(*r.error_kind)) : SqlValue(),
         SqlValue(r.error_message),
         SqlValue(static_cast<std::int64_t>(r.attempts.size())),
         SqlValue(attempts),
         SqlValue(static_cast<std::int64_t>(r.latency.count())),
         r.time_to_first_token ? SqlValue(static_cast<std::int64_t>(r.time_to_first_token->count())) : SqlValue(),
         opt(r.prompt_tokens),
         opt(r.completion_tokens),
         opt(r.total_tokens),
         opt(r.cached_tokens),
         opt(r.reasoning_tokens),
         opt(r.estimated_cost),
         opt(r.upstream_cost),
         SqlValue(tags),
         r.request_summary ? SqlValue(*r.request_summary) : SqlValue()};
}

RowReader::RowReader() : parser_(std::make_unique<simdjson::dom::parser>()) {}
RowReader::~RowReader() = default;

void RowReader::read(const SqlValues& v, RequestRecord& r) {
  auto set = [&](std::string& to, std::size_t i) {
    if (i < v.size() && v[i]) to.assign(*v[i]);
    else to.clear();
  };
  set(r.request_id, 0);
  set(r.upstream_request_id, 1);
  r.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(to_int(v[3]).value_or(0)));
  set(r.endpoint, 4);
  set(r.requested_model, 5);
  set(r.model, 6);
  if (v[7]) r.provider = *v[7];
  else r.provider.reset();
  const std::string_view streamed = v[8] ? std::string_view(*v[8]) : std::string_view();
  r.streamed = streamed == "1" || streamed == "t" || streamed == "true";
  const std::string_view status = v[9] ? std::string_view(*v[9]) : std::string_view();
  r.status = status == "success" ? RequestStatus::success
             : status == "cancelled" ? RequestStatus::cancelled
                                     : RequestStatus::error;
  r.http_status = static_cast<int>(to_int(v[10]).value_or(0));
  r.error_kind = v[11] ? kind_from(*v[11]) : std::nullopt;
  set(r.error_message, 12);
  simdjson::dom::parser& parser = *parser_;
  simdjson::dom::element el;
  r.attempts.clear();
  if (v[14] && parser.parse(*v[14]).get(el) == simdjson::SUCCESS && el.is_array()) {
    for (simdjson::dom::element a : el.get_array()) {
      AttemptRecord at;
      int64_t n = 0;
      std::string_view e;
      if (a["http_status"].get(n) == simdjson::SUCCESS) at.http_status = static_cast<int>(n);
      if (a["error"].get(e) == simdjson::SUCCESS) at.error = kind_from(e);
      if (a["latency_ms"].get(n) == simdjson::SUCCESS) at.latency = std::chrono::milliseconds(n);
      if (a["delay_before_ms"].get(n) == simdjson::SUCCESS) at.delay_before = std::chrono::milliseconds(n);
      r.attempts.push_back(at);
    }
  }
  r.latency = std::chrono::milliseconds(to_int(v[15]).value_or(0));
  if (auto t = to_int(v[16])) r.time_to_first_token = std::chrono::milliseconds(*t);
  else r.time_to_first_token.reset();
  r.prompt_tokens = to_int(v[17]);
  r.completion_tokens = to_int(v[18]);
  r.total_tokens = to_int(v[19]);
  r.cached_tokens = to_int(v[20]);
  r.reasoning_tokens = to_int(v[21]);
  r.estimated_cost = to_double(v[22]);
  r.upstream_cost = to_double(v[23]);
  r.tags.clear();
  if (v[24] && parser.parse(*v[24]).get(el) == simdjson::SUCCESS && el.is_object())
    for (auto [k, val] : el.get_object()) {
      std::string_view sv;
      if (val.get(sv) == simdjson::SUCCESS) r.tags.emplace_back(std::string(k), std::string(sv));
    }
  r.request_summary.reset();  // not read back (see kRecordColumns)
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE
