// Pure-logic checks of the record path: the memory ring once it wraps, the
// per-day and per-tag summary keys, the typed SQL columns and the JSON
// writer's unescaped fast path. (Recorders end to end: tests/integration.)
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "json_writer.h"
#include "record_sql.h"
#include "taotoken/recorders.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {
RequestRecord numbered(int i) {
  RequestRecord r;
  r.request_id = "req_" + std::to_string(i) + std::string(40, 'x');  // not in SSO: buffers reused
  r.model = "m";
  return r;
}
}  // namespace

TEST_CASE("the memory ring keeps the newest records once it wraps, newest first") {
  MemoryRecorder m(3);
  for (int i = 1; i <= 2; ++i) m.record(numbered(i));
  auto two = m.recent(10);
  REQUIRE(two.size() == 2);
  CHECK(two[0].request_id == numbered(2).request_id);
  CHECK(two[1].request_id == numbered(1).request_id);
  for (int i = 3; i <= 8; ++i) m.record(numbered(i));
  auto last = m.recent(10);
  REQUIRE(last.size() == 3);
  CHECK(last[0].request_id == numbered(8).request_id);
  CHECK(last[1].request_id == numbered(7).request_id);
  CHECK(last[2].request_id == numbered(6).request_id);
  auto one = m.recent(1);
  REQUIRE(one.size() == 1);
  CHECK(one[0].request_id == numbered(8).request_id);
  CHECK(m.count() == 8);
  CHECK(m.summary().total.requests == 8);
}

TEST_CASE("summary days follow each record's UTC date, before and after 1970, across midnight") {
  SummaryBuilder b;
  auto at = [&](std::int64_t ms, std::string tag) {
    RequestRecord r;
    r.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
    r.tags = {{"user", std::move(tag)}};
    b.add(r);
  };
  at(1764201599999, "a");  // 2025-11-26T23:59:59.999Z
  at(1764201600000, "b");  // 2025-11-27T00:00:00.000Z
  at(1764201600001, "a");
  at(-1, "b");             // 1969-12-31T23:59:59.999Z
  at(0, "a");              // 1970-01-01
  at(1764201599000, "a");  // back to the 26th
  const UsageSummary s = b.build();
  CHECK(s.by_day.size() == 4);
  CHECK(s.by_day.at("2025-11-26").requests == 2);
  CHECK(s.by_day.at("2025-11-27").requests == 2);
  CHECK(s.by_day.at("1969-12-31").requests == 1);
  CHECK(s.by_day.at("1970-01-01").requests == 1);
  CHECK(s.by_tag.at("user=a").requests == 4);
  CHECK(s.by_tag.at("user=b").requests == 2);
}

TEST_CASE("SQL columns are typed") {
  RequestRecord r;
  r.request_id = "req_1";
  r.started_at = std::chrono::system_clock::time_point(1764201600123ms);
  r.streamed = true;
  r.http_status = 200;
  r.prompt_tokens = 12;
  r.estimated_cost = 0.25;
  r.tags = {{"k", "v\"q"}};
  detail::RecordScratch scratch;
  detail::RecordColumns cols;
  detail::record_columns(r, scratch, cols);
  auto col = [&](std::string_view name) {
    for (std::size_t i = 0; i < detail::kRecordColumns.size(); ++i)
      if (detail::kRecordColumns[i] == name) return cols[i];
    FAIL("no column " << name);
    return detail::SqlValue();
  };
  CHECK(col("request_id").type == detail::SqlValue::text);
  CHECK(col("request_id").s == "req_1");
  CHECK(col("started_at").s == "2025-11-27T00:00:00.123Z");
  CHECK(col("started_ms").type == detail::SqlValue::integer);
  CHECK(col("started_ms").i == 1764201600123);
  CHECK(col("streamed").i == 1);
  CHECK(col("prompt_tokens").i == 12);
  CHECK(col("completion_tokens").type == detail::SqlValue::null);
  CHECK(col("provider").type == detail::SqlValue::null);
  CHECK(col("estimated_cost").type == detail::SqlValue::real);
  CHECK(col("estimated_cost").d == 0.25);
  CHECK(col("tags_json").s == R"({"k":"v\"q"})");
  CHECK(cols.back().type == detail::SqlValue::null);  // request_summary
}

TEST_CASE("SQL attempts and tags columns are what the JSON writer wrote for them") {
  // The columns' JSON used to come from JsonWriter; it now shares the JSONL
  // line's writer. Compared with JsonWriter over awkward values.
  auto reference_attempts = [](const std::vector<AttemptRecord>& attempts) {
    std::string out;
    detail::JsonWriter a(out);
    a.begin_array();
    for (const auto& at : attempts) {
      a.begin_object().key_lit("http_status").number(static_cast<std::int64_t>(at.http_status)).key_lit("error");
      if (at.error) a.string(to_string(*at.error)); else a.null();
      a.key_lit("latency_ms").number(static_cast<std::int64_t>(at.latency.count()));
      a.key_lit("delay_before_ms").number(static_cast<std::int64_t>(at.delay_before.count())).end_object();
    }
    a.end_array();
    return out;
  };
  auto reference_tags = [](const std::vector<std::pair<std::string, std::string>>& tags) {
    std::string out;
    detail::JsonWriter t(out);
    t.begin_object();
    for (const auto& [k, v] : tags) t.key(k).string(v);
    t.end_object();
    return out;
  };
  std::vector<std::vector<AttemptRecord>> attempt_sets = {
      {},
      {{200, std::nullopt, 0ms, 0ms}},
      {{503, ErrorKind::server_error, 12ms, 0ms}, {429, ErrorKind::rate_limited, 1ms, 500ms},
       {0, ErrorKind::timeout, -5ms, 9223372036854775807ms}, {-1, ErrorKind::overloaded, 0ms, 0ms}}};
  std::string awkward;
  for (int c = 0; c < 0x80; ++c) awkward.push_back(static_cast<char>(c));
  awkward += "\xff\xc3\xa9 end";
  std::vector<std::vector<std::pair<std::string, std::string>>> tag_sets = {
      {}, {{"k", "v"}}, {{awkward, awkward}, {"", ""}, {"tenant", std::string(300, 'x') + "\"\\"}}};
  detail::RecordScratch scratch;
  detail::RecordColumns cols;
  for (const auto& attempts : attempt_sets)
    for (const auto& tags : tag_sets) {
      RequestRecord r;
      r.attempts = attempts;
      r.tags = tags;
      detail::record_columns(r, scratch, cols);
      CHECK(scratch.attempts_json == reference_attempts(attempts));
      CHECK(scratch.tags_json == reference_tags(tags));
    }
}

TEST_CASE("JSON writer: plain and escaped keys and strings, short and long") {
  const std::string long_plain(300, 'x');                        // past the stack buffer
  const std::string long_escaped = std::string(200, 'y') + "\n";  // escaping starts late
  std::string doc;
  detail::JsonWriter w(doc);
  w.begin_object().key("k\"").string("v\\").key("ok").string("fine").key_lit("lit").string("");
  w.key(long_plain).string(long_escaped).end_object();
  CHECK(doc == R"({"k\"":"v\\","ok":"fine","lit":"",")" + long_plain + R"(":")" + std::string(200, 'y') +
                   R"(\n"})");
}

TEST_CASE("append_json appends exactly to_json to what is there") {
  RequestRecord r = numbered(7);
  r.started_at = std::chrono::system_clock::time_point(1764201600123ms);
  r.tags = {{"user", "a\"b"}};
  std::string out = "prefix|";
  r.append_json(out);
  CHECK(out == "prefix|" + r.to_json());
  CHECK(r.to_json().find("\"started_at\":\"2025-11-27T00:00:00.123Z\"") != std::string::npos);
}
