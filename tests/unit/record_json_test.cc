// RequestRecord::append_json (the JSONL line) against a reference: the
// JsonWriter-based version it replaced, kept here, compared byte for byte
// on handwritten edge records and on random ones (fixed seed).
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "json_writer.h"
#include "taotoken/usage.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {

// ---- the reference: append_json as JsonWriter wrote it (do not optimise)

void ref_iso8601(std::chrono::system_clock::time_point t, char* buf) {
  const std::int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  std::int64_t days = ms / 86400000;
  std::int64_t rem = ms % 86400000;
  if (rem < 0) {
    rem += 86400000;
    --days;
  }
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2);
  auto put = [&](char* at, std::int64_t v, int width) {
    for (int i = width - 1; i >= 0; --i, v /= 10) at[i] = static_cast<char>('0' + v % 10);
  };
  put(buf, y, 4);
  buf[4] = '-';
  put(buf + 5, m, 2);
  buf[7] = '-';
  put(buf + 8, d, 2);
  buf[10] = 'T';
  put(buf + 11, rem / 3600000, 2);
  buf[13] = ':';
  put(buf + 14, rem / 60000 % 60, 2);
  buf[16] = ':';
  put(buf + 17, rem / 1000 % 60, 2);
  buf[19] = '.';
  put(buf + 20, rem % 1000, 3);
  buf[23] = 'Z';
}

void ref_opt(detail::JsonWriter& w, std::string_view key, const std::optional<std::int64_t>& v) {
  w.key_lit(key);
  if (v) w.number(*v); else w.null();
}

void ref_opt(detail::JsonWriter& w, std::string_view key, const std::optional<double>& v) {
  w.key_lit(key);
  if (v) w.number(*v); else w.null();
}

void ref_append_json(const RequestRecord& r, std::string& out) {
  detail::JsonWriter w(out);
  w.begin_object();
  w.key_lit("request_id").string(r.request_id);
  w.key_lit("upstream_request_id").string(r.upstream_request_id);
  char started[24];
  ref_iso8601(r.started_at, started);
  w.key_lit("started_at").string(std::string_view(started, sizeof started));
  w.key_lit("endpoint").string(r.endpoint);
  w.key_lit("requested_model").string(r.requested_model);
  w.key_lit("model").string(r.model);
  w.key_lit("provider");
  if (r.provider) w.string(*r.provider); else w.null();
  w.key_lit("streamed").boolean(r.streamed);
  w.key_lit("status").string(taotoken::to_string(r.status));
  w.key_lit("http_status").number(static_cast<std::int64_t>(r.http_status));
  w.key_lit("error_kind");
  if (r.error_kind) w.string(taotoken::to_string(*r.error_kind)); else w.null();
  w.key_lit("error_message").string(r.error_message);
  w.key_lit("attempts").begin_array();
  for (const auto& a : r.attempts) {
    w.begin_object().key_lit("http_status").number(static_cast<std::int64_t>(a.http_status));
    w.key_lit("error");
    if (a.error) w.string(taotoken::to_string(*a.error)); else w.null();
    w.key_lit("latency_ms").number(static_cast<std::int64_t>(a.latency.count()));
    w.key_lit("delay_before_ms").number(static_cast<std::int64_t>(a.delay_before.count())).end_object();
  }
  w.end_array();
  w.key_lit("latency_ms").number(static_cast<std::int64_t>(r.latency.count()));
  w.key_lit("ttft_ms");
  if (r.time_to_first_token) w.number(static_cast<std::int64_t>(r.time_to_first_token->count())); else w.null();
  ref_opt(w, "prompt_tokens", r.prompt_tokens);
  ref_opt(w, "completion_tokens", r.completion_tokens);
  ref_opt(w, "total_tokens", r.total_tokens);
  ref_opt(w, "cached_tokens", r.cached_tokens);
  ref_opt(w, "reasoning_tokens", r.reasoning_tokens);
  ref_opt(w, "estimated_cost", r.estimated_cost);
  ref_opt(w, "upstream_cost", r.upstream_cost);
  w.key_lit("tags").begin_object();
  for (const auto& [k, v] : r.tags) w.key(k).string(v);
  w.end_object();
  w.key_lit("request_summary");
  if (r.request_summary) w.raw(*r.request_summary); else w.null();
  w.end_object();
}

std::string reference(const RequestRecord& r) {
  std::string out;
  ref_append_json(r, out);
  return out;
}

// ---- comparison

// Appends `r` after `prefix` both ways; on a difference, says where.
void check_same(const RequestRecord& r, const std::string& prefix = "") {
  const std::string want = prefix + reference(r);
  std::string got = prefix;
  r.append_json(got);
  if (got == want) {
    SUCCEED();
    return;
  }
  std::size_t at = 0;
  while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
  INFO("first difference at byte " << at << " of " << want.size() << " (got " << got.size() << ")");
  INFO("want: " << want.substr(at > 40 ? at - 40 : 0, 120));
  INFO("got:  " << got.substr(at > 40 ? at - 40 : 0, 120));
  FAIL("append_json differs from the JsonWriter reference");
}

// Every byte that escaping or the eight-bytes-at-a-time scan could get
// wrong: control characters, their neighbours, quote and backslash with
// theirs, the same with the high bit set, DEL, invalid UTF-8.
const std::vector<char> kAwkward = [] {
  std::vector<char> v;
  for (int c = 0; c < 0x20; ++c) v.push_back(static_cast<char>(c));
  for (int c : {0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0xa1, 0xa2, 0xa3, 0xc0,
                0xc3, 0xdb, 0xdc, 0xdd, 0xe2, 0xf0, 0xfe, 0xff})
    v.push_back(static_cast<char>(c));
  return v;
}();

std::string all_controls() {
  std::string s;
  for (int c = 0; c < 0x20; ++c) s.push_back(static_cast<char>(c));
  s.push_back('\x7f');
  return s;
}

RequestRecord typical() {
  RequestRecord r;
  r.request_id = "3f1c2b9e-8d4a-4c1e-9b7a-1234567890ab";
  r.upstream_request_id = "chatcmpl-AbCdEfGhIjKlMnOpQrS";
  r.started_at = std::chrono::system_clock::time_point(1764201600123ms);
  r.endpoint = "chat";
  r.requested_model = "gpt-4o-mini";
  r.model = "gpt-4o-mini-2024-07-18";
  r.http_status = 200;
  r.attempts.push_back({200, std::nullopt, 123ms, 0ms});
  r.latency = 125ms;
  r.prompt_tokens = 12;
  r.completion_tokens = 34;
  r.total_tokens = 46;
  r.estimated_cost = 1.23e-05;
  return r;
}

// ---- random records

struct Gen {
  std::mt19937_64 rng{20261127};

  std::uint64_t bits() { return rng(); }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(rng() % n); }
  bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }

  std::string text() {
    std::size_t n;
    const std::size_t pick = below(100);
    if (pick < 70) n = below(41);          // ids, models: the common sizes
    else if (pick < 95) n = 41 + below(260);  // around the 256-byte room switch
    else n = 301 + below(2000);
    const int awkward = chance(40) ? 0 : static_cast<int>(below(30));  // percent of awkward bytes
    std::string s;
    s.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (chance(awkward)) s.push_back(kAwkward[below(kAwkward.size())]);
      else if (chance(5)) s.push_back(static_cast<char>(bits()));  // any byte
      else s.push_back("abcdefghijklmnopqrstuvwxyz0123456789-_./:ABC"[below(44)]);
    }
    return s;
  }

  std::int64_t integer() {
    switch (below(5)) {
      case 0: return static_cast<std::int64_t>(below(10));
      case 1: return static_cast<std::int64_t>(below(100000));
      case 2: return -static_cast<std::int64_t>(below(100000));
      case 3: return chance(50) ? std::numeric_limits<std::int64_t>::min() : std::numeric_limits<std::int64_t>::max();
      default: return static_cast<std::int64_t>(bits());
    }
  }

  double real() {
    switch (below(4)) {
      case 0: {  // any bit pattern: NaNs, infinities, subnormals included
        const std::uint64_t b = bits();
        double d;
        std::memcpy(&d, &b, sizeof d);
        return d;
      }
      case 1: return static_cast<double>(below(1000000)) / 1e6 * std::pow(10.0, static_cast<double>(below(40)) - 20);
      case 2: return static_cast<double>(integer());
      default: return std::ldexp(static_cast<double>(bits() >> 11), static_cast<int>(below(2100)) - 1100);
    }
  }

  ErrorKind kind() {
    // One past the last kind now and then: to_string says "unknown".
    return static_cast<ErrorKind>(below(static_cast<std::size_t>(ErrorKind::overloaded) + 2));
  }

  template <typename T, typename F>
  std::optional<T> maybe(F make) {
    if (chance(50)) return std::nullopt;
    return make();
  }

  RequestRecord record() {
    RequestRecord r;
    r.request_id = text();
    r.upstream_request_id = text();
    const std::int64_t ns = chance(80) ? static_cast<std::int64_t>(below(4102444800000)) * 1000000 +
                                             static_cast<std::int64_t>(below(1000000))
                                       : static_cast<std::int64_t>(bits());
    r.started_at = std::chrono::system_clock::time_point(std::chrono::nanoseconds(ns));
    r.endpoint = chance(80) ? std::string(std::vector<const char*>{"chat", "chat_stream", "forward", "forward_stream"}[below(4)]) : text();
    r.requested_model = text();
    r.model = text();
    r.provider = maybe<std::string>([&] { return text(); });
    r.streamed = chance(50);
    r.status = static_cast<RequestStatus>(below(4));  // 3: "unknown"
    r.http_status = chance(80) ? static_cast<int>(below(600)) : static_cast<int>(bits());
    r.error_kind = maybe<ErrorKind>([&] { return kind(); });
    r.error_message = chance(50) ? std::string() : text();
    for (std::size_t i = below(5); i > 0; --i) {
      AttemptRecord a;
      a.http_status = chance(80) ? static_cast<int>(below(600)) : static_cast<int>(bits());
      if (chance(50)) a.error = kind();
      a.latency = std::chrono::milliseconds(integer());
      a.delay_before = std::chrono::milliseconds(integer());
      r.attempts.push_back(a);
    }
    r.latency = std::chrono::milliseconds(integer());
    if (chance(50)) r.time_to_first_token = std::chrono::milliseconds(integer());
    r.prompt_tokens = maybe<std::int64_t>([&] { return integer(); });
    r.completion_tokens = maybe<std::int64_t>([&] { return integer(); });
    r.total_tokens = maybe<std::int64_t>([&] { return integer(); });
    r.cached_tokens = maybe<std::int64_t>([&] { return integer(); });
    r.reasoning_tokens = maybe<std::int64_t>([&] { return integer(); });
    r.estimated_cost = maybe<double>([&] { return real(); });
    r.upstream_cost = maybe<double>([&] { return real(); });
    for (std::size_t i = chance(60) ? 0 : below(6); i > 0; --i) r.tags.emplace_back(text(), text());
    if (chance(30)) r.request_summary = R"({"model":")" + std::to_string(bits()) + R"(","messages":3})";
    return r;
  }
};

}  // namespace

TEST_CASE("record JSON: empty, typical and fully set records match the reference") {
  check_same(RequestRecord{});
  check_same(typical());

  RequestRecord full = typical();
  full.provider = "openai";
  full.streamed = true;
  full.status = RequestStatus::error;
  full.http_status = 429;
  full.error_kind = ErrorKind::rate_limited;
  full.error_message = "Rate limit reached for gpt-4o-mini: \"slow down\"\n(retry after 1s)";
  full.attempts = {{500, ErrorKind::server_error, 10ms, 0ms}, {0, ErrorKind::connection, 5ms, 250ms},
                   {429, ErrorKind::rate_limited, 7ms, 1000ms}};
  full.time_to_first_token = 42ms;
  full.cached_tokens = 8;
  full.reasoning_tokens = 0;
  full.upstream_cost = 0.000123;
  full.tags = {{"user", "alice"}, {"feature", "search"}, {"", ""}, {"user", "dup"}};
  full.request_summary = R"({"model":"gpt-4o-mini","messages":2,"chars":[12,40]})";
  check_same(full);

  RequestRecord cancelled = full;
  cancelled.status = RequestStatus::cancelled;
  cancelled.error_kind = ErrorKind::cancelled;
  cancelled.attempts.push_back({0, std::nullopt, 0ms, 0ms});
  check_same(cancelled);

  // Out-of-range enum values are written as "unknown", like to_string says.
  RequestRecord odd = full;
  odd.status = static_cast<RequestStatus>(99);
  odd.error_kind = static_cast<ErrorKind>(-1);
  odd.attempts[0].error = static_cast<ErrorKind>(1000);
  check_same(odd);

  for (int k = 0; k <= static_cast<int>(ErrorKind::overloaded); ++k) {
    RequestRecord r = typical();
    r.error_kind = static_cast<ErrorKind>(k);
    r.attempts[0].error = static_cast<ErrorKind>(k);
    check_same(r);
  }

  // An empty request summary is written as it is (nothing), as before.
  RequestRecord empty_summary;
  empty_summary.request_summary = "";
  check_same(empty_summary);
}

TEST_CASE("record JSON: the widest record (every field at its longest) matches the reference") {
  // Each string all bytes that escape to six, every number at its widest:
  // the room append_json makes must hold it (a debug assert checks).
  const std::string worst(300, '\x01');
  const std::string short_worst(200, '\x1f');
  RequestRecord r;
  r.request_id = short_worst;
  r.upstream_request_id = worst;
  r.started_at = std::chrono::system_clock::time_point::min();
  r.endpoint = short_worst;
  r.requested_model = worst;
  r.model = short_worst;
  r.provider = worst;
  r.streamed = false;
  r.status = RequestStatus::cancelled;
  r.http_status = std::numeric_limits<int>::min();
  r.error_kind = ErrorKind::permission_denied;
  r.error_message = worst + short_worst;
  for (int i = 0; i < 20; ++i)
    r.attempts.push_back({std::numeric_limits<int>::min(), ErrorKind::invalid_argument,
                          std::chrono::milliseconds(std::numeric_limits<std::int64_t>::min()),
                          std::chrono::milliseconds(std::numeric_limits<std::int64_t>::min())});
  const auto lowest = std::numeric_limits<std::int64_t>::min();
  r.latency = std::chrono::milliseconds(lowest);
  r.time_to_first_token = std::chrono::milliseconds(lowest);
  r.prompt_tokens = r.completion_tokens = r.total_tokens = r.cached_tokens = r.reasoning_tokens = lowest;
  r.estimated_cost = -2.2250738585072014e-308;  // 24 characters, the longest
  r.upstream_cost = -1.7976931348623157e+308;
  for (int i = 0; i < 10; ++i) r.tags.emplace_back(i % 2 ? worst : short_worst, i % 2 ? short_worst : worst);
  r.request_summary = std::string(5000, '[');
  check_same(r);
  check_same(r, std::string(1000, 'p'));
}

TEST_CASE("record JSON: every control character, DEL and invalid UTF-8 in every string field") {
  const std::string controls = all_controls();
  const std::string bad_utf8 = "\xff\xfe\xc0\x80\xed\xa0\x80\xf4\x90\x80\x80 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x80";
  for (const std::string& s : {controls, bad_utf8, controls + bad_utf8, std::string("\\\"\\\"\"\\"),
                               std::string("quote\" backslash\\ slash/ tab\t"), std::string(1, '\0')}) {
    RequestRecord r = typical();
    r.request_id = s;
    r.upstream_request_id = s + s;
    r.endpoint = s;
    r.requested_model = s;
    r.model = s;
    r.provider = s;
    r.error_message = s;
    r.tags = {{s, s}, {"k", s}, {s, "v"}};
    check_same(r);
  }
  // Each control character alone, and between clean text.
  for (int c = 0; c < 0x80; ++c) {
    RequestRecord r = typical();
    r.error_message = std::string(1, static_cast<char>(c));
    r.tags = {{"key" + std::string(1, static_cast<char>(c)) + "tail", "x" + std::string(1, static_cast<char>(c))}};
    check_same(r);
  }
}

TEST_CASE("record JSON: one awkward byte at every position of strings up to 40 bytes long") {
  // The clean-text scan goes eight bytes at a time and checks the last
  // eight of a string again: every length, position and awkward byte.
  for (std::size_t len = 0; len <= 40; ++len) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (char c : kAwkward) {
        std::string s(len, 'a');
        s[pos] = c;
        RequestRecord r;
        r.request_id = s;
        r.tags = {{s, s}};
        check_same(r);
      }
    }
    // Two awkward bytes: at the start and at the end, and one in each half.
    if (len >= 2) {
      std::string s(len, 'z');
      s.front() = '"';
      s.back() = '\x01';
      RequestRecord r;
      r.model = s;
      s[len / 2] = '\\';
      r.error_message = s;
      check_same(r);
    }
  }
}

TEST_CASE("record JSON: long strings around the room switch, clean and fully escaped") {
  for (std::size_t len : {255u, 256u, 257u, 258u, 300u, 1000u, 4097u}) {
    for (char c : {'a', '"', '\\', '\n', '\x01', '\x7f', '\xff'}) {
      RequestRecord r;
      r.error_message = std::string(len, c);
      r.provider = std::string(len, c);
      r.tags = {{std::string(len, c), std::string(len, c)}};
      check_same(r);
      r.error_message[len / 2] = '\x02';
      r.error_message[len - 1] = '"';
      check_same(r);
    }
  }
}

TEST_CASE("record JSON: numbers at their edges") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double d : {0.0, -0.0, 1e-300, 1e300, nan, -nan, inf, -inf, 0.1, 123456789.123, 1.23e-05, 1e21, 1e22,
                   5e-324, -5e-324, 2.2250738585072014e-308, std::numeric_limits<double>::max(),
                   std::numeric_limits<double>::lowest(), 1.0, -1.0, 100.0, 1e-7, 123456789012345680000.0,
                   0.30000000000000004, 9007199254740993.0}) {
    RequestRecord r = typical();
    r.estimated_cost = d;
    r.upstream_cost = -d;
    check_same(r);
  }
  const auto lo = std::numeric_limits<std::int64_t>::min(), hi = std::numeric_limits<std::int64_t>::max();
  for (std::int64_t v : {std::int64_t{0}, std::int64_t{-1}, std::int64_t{9}, std::int64_t{10}, std::int64_t{99},
                         std::int64_t{100}, std::int64_t{-100}, std::int64_t{1} << 53, lo, lo + 1, hi, hi - 1}) {
    RequestRecord r = typical();
    r.prompt_tokens = r.completion_tokens = r.total_tokens = r.cached_tokens = r.reasoning_tokens = v;
    r.latency = std::chrono::milliseconds(v);
    r.time_to_first_token = std::chrono::milliseconds(v == lo ? hi : -v);
    r.attempts[0].latency = std::chrono::milliseconds(v);
    r.attempts[0].delay_before = std::chrono::milliseconds(v);
    check_same(r);
  }
  for (int s : {0, -1, 200, 99999, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()}) {
    RequestRecord r = typical();
    r.http_status = s;
    r.attempts[0].http_status = s == std::numeric_limits<int>::min() ? std::numeric_limits<int>::max() : -s;
    check_same(r);
  }
}

TEST_CASE("record JSON: timestamps before 1970, at the ends of the clock and far from now") {
  using Tp = std::chrono::system_clock::time_point;
  std::vector<Tp> times = {Tp::min(), Tp::max(), Tp(), Tp(-1ms), Tp(-1ns), Tp(1ns), Tp(999999ns),
                           Tp(1764201599999ms), Tp(1764201600000ms), Tp(951782400000ms) /* 2000-02-29 */};
  // Years 0, -1 and past 9999 only where the clock reaches them (not with
  // nanosecond ticks: about 1677-2262).
  const auto min_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Tp::min().time_since_epoch()).count();
  const auto max_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Tp::max().time_since_epoch()).count();
  auto at_ms = [&](std::int64_t ms) {
    if (ms > min_ms && ms < max_ms)
      times.push_back(Tp(std::chrono::duration_cast<Tp::duration>(std::chrono::milliseconds(ms))));
  };
  for (std::int64_t ms : {std::int64_t{253402300799999} /* 9999-12-31T23:59:59.999 */, std::int64_t{253402300800000},
                          std::int64_t{-62135596800000} /* 0001-01-01 */, std::int64_t{-62167219200000} /* 0000-01-01 */,
                          std::int64_t{-62167219200001}, std::int64_t{-62198755200000} /* year -1 */,
                          std::int64_t{-377705116800000}, std::int64_t{-9223372036854775807}, std::int64_t{-11676096000000},
                          std::int64_t{-5000000000000}})
    at_ms(ms);
  for (std::int64_t day = -110000; day <= 110000; day += 97) at_ms(day * 86400000 + 3723456);
  for (Tp t : times) {
    RequestRecord r = typical();
    r.started_at = t;
    check_same(r);
    char want[24];
    ref_iso8601(t, want);
    CHECK(r.started_at_iso() == std::string(want, sizeof want));
  }
}

TEST_CASE("record JSON: random records match the reference, appended alone and after other text") {
  Gen gen;
  std::string stream;       // every record appended to one string, as the JSONL buffer does
  std::string want_stream;
  for (int i = 0; i < 4000; ++i) {
    const RequestRecord r = gen.record();
    check_same(r);
    if (i % 7 == 0) check_same(r, gen.text());
    CHECK(r.to_json() == reference(r));
    r.append_json(stream);
    stream.push_back('\n');
    ref_append_json(r, want_stream);
    want_stream.push_back('\n');
    if (stream.size() > (1 << 20)) {
      REQUIRE(stream == want_stream);
      stream.clear();
      want_stream.clear();
    }
  }
  CHECK(stream == want_stream);
}
