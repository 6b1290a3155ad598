#include "taotoken/usage.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>

#include "json_writer.h"
#include "record_json.h"

TAOTOKEN_BEGIN_NAMESPACE

using detail::JsonWriter;

std::string_view to_string(RequestStatus status) noexcept {
  switch (status) {
    case RequestStatus::success: return "success";
    case RequestStatus::error: return "error";
    case RequestStatus::cancelled: return "cancelled";
  }
  return "unknown";
}

namespace {

// "00" "01" … "99".
struct DigitPairs {
  char v[200];
  constexpr DigitPairs() : v() {
    for (int i = 0; i < 100; ++i) {
      v[2 * i] = static_cast<char>('0' + i / 10);
      v[2 * i + 1] = static_cast<char>('0' + i % 10);
    }
  }
};
constexpr DigitPairs kDigitPairs;

// Formatted by hand (days-from-civil inverse, Howard Hinnant's algorithm):
// strftime and fmt cost more than the rest of a JSONL record together.
// Writes the 24 characters of "YYYY-MM-DDTHH:MM:SS.mmmZ" to `buf`.
void iso8601(std::chrono::system_clock::time_point t, char* buf) {
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
  // Two digits at a time; a year outside 0-9999 keeps the last four digits
  // as the digit loop always wrote them (a negative one gives odd characters).
  auto two = [](char* at, std::int64_t v) { std::memcpy(at, kDigitPairs.v + 2 * v, 2); };
  if (y >= 0 && y <= 9999) {
    two(buf, y / 100);
    two(buf + 2, y % 100);
  } else {
    std::int64_t v = y;
    for (int i = 3; i >= 0; --i, v /= 10) buf[i] = static_cast<char>('0' + v % 10);
  }
  buf[4] = '-';
  two(buf + 5, m);
  buf[7] = '-';
  two(buf + 8, d);
  buf[10] = 'T';
  two(buf + 11, rem / 3600000);
  buf[13] = ':';
  two(buf + 14, rem / 60000 % 60);
  buf[16] = ':';
  two(buf + 17, rem / 1000 % 60);
  buf[19] = '.';
  buf[20] = static_cast<char>('0' + rem % 1000 / 100);
  two(buf + 21, rem % 100);
  buf[23] = 'Z';
}

std::string iso8601(std::chrono::system_clock::time_point t) {
  char buf[24];
  iso8601(t, buf);
  return std::string(buf, sizeof buf);
}

// ---- append_json: the record written straight into room made in `out`

// Bytes JSON escaping adds to a byte (as JsonWriter escapes): 1 for `"`, `\`
// and the control characters with a short escape (\n \r \t \b \f), 5 for
// the other control characters (\u00XX), 0 for everything else (UTF-8 and
// DEL included).
struct EscapeExtra {
  unsigned char v[256];
  constexpr EscapeExtra() : v() {
    for (int c = 0; c < 0x20; ++c) v[c] = 5;
    for (unsigned char c : std::string_view("\"\\\n\r\t\b\f")) v[c] = 1;
  }
};
constexpr EscapeExtra kEscapeExtra;

// Whether any of the eight bytes in `w` needs escaping: one is below 0x20,
// a quote or a backslash. The zero-byte test ((v - 0x01..) & ~v & 0x80..)
// for w, w ^ '"' and w ^ '\\' at once (their high bits are w's); exact in
// either byte order, as a borrow only marks bytes above one that matched.
constexpr bool needs_escape(std::uint64_t w) {
  constexpr std::uint64_t kOnes = 0x0101010101010101, kHigh = 0x8080808080808080;
  const std::uint64_t below = w - kOnes * 0x20;
  const std::uint64_t quote = (w ^ (kOnes * '"')) - kOnes;
  const std::uint64_t backslash = (w ^ (kOnes * '\\')) - kOnes;
  return ((below | quote | backslash) & ~w & kHigh) != 0;
}

// The most `s` can take quoted and escaped: six bytes a byte for short text
// (no scan), counted for long text (a big error message must not make room
// for six times its size).
std::size_t quoted_room(std::string_view s) {
  if (s.size() <= 256) return 6 * s.size() + 2;
  std::size_t n = s.size() + 2;
  for (char c : s) n += kEscapeExtra.v[static_cast<unsigned char>(c)];
  return n;
}

// Writes the literal (its size is known at compile time: no call).
template <std::size_t N>
char* put(char* p, const char (&lit)[N]) {
  std::memcpy(p, lit, N - 1);
  return p + (N - 1);
}

// Writes `s` quoted, escaped as JsonWriter::string does.
char* put_quoted(char* p, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  const char* in = s.data();
  const char* const end = in + s.size();
  *p++ = '"';
  for (;;) {
    // A run of bytes that need no escape (usually the whole string), eight
    // at a time.
    std::uint64_t w;
    while (end - in >= 8) {
      std::memcpy(&w, in, 8);
      if (needs_escape(w)) break;
      std::memcpy(p, &w, 8);
      in += 8;
      p += 8;
    }
    // Under eight bytes left of a string of eight or more: its last eight
    // bytes at once if they are clean (those before `in` were then copied
    // as they are and are copied again).
    if (in < end && end - in < 8 && end - s.data() >= 8) {
      std::memcpy(&w, end - 8, 8);
      if (!needs_escape(w)) {
        std::memcpy(p - (in - (end - 8)), &w, 8);
        p += end - in;
        break;
      }
    }
    // Otherwise one by one up to the next byte to escape or the end.
    while (in < end && !kEscapeExtra.v[static_cast<unsigned char>(*in)]) *p++ = *in++;
    if (in == end) break;
    const auto c = static_cast<unsigned char>(*in++);
    *p++ = '\\';
    switch (c) {
      case '"': *p++ = '"'; break;
      case '\\': *p++ = '\\'; break;
      case '\n': *p++ = 'n'; break;
      case '\r': *p++ = 'r'; break;
      case '\t': *p++ = 't'; break;
      case '\b': *p++ = 'b'; break;
      case '\f': *p++ = 'f'; break;
      default:
        p = put(p, "u00");
        *p++ = kHex[c >> 4];
        *p++ = kHex[c & 0xF];
    }
  }
  *p++ = '"';
  return p;
}

// Room for a number: "-9223372036854775808" is 20 characters; the shortest
// round-trip form of a double at most 24 (JsonWriter gives to_chars 32).
constexpr std::size_t kIntRoom = 20;
constexpr std::size_t kDoubleRoom = 32;

char* put_int(char* p, std::int64_t v) { return std::to_chars(p, p + kIntRoom, v).ptr; }

char* put_opt(char* p, const std::optional<std::int64_t>& v) { return v ? put_int(p, *v) : put(p, "null"); }

// Non-finite values are written as null, like JsonWriter::number(double).
char* put_opt(char* p, const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return put(p, "null");
  return std::to_chars(p, p + kDoubleRoom, *v).ptr;
}

// Room for a record but its strings, attempts, tags and summary: the keys
// and punctuation, the timestamp and "null" for provider, error_kind and
// request_summary come to 409 bytes (416 leaves a little to spare); then 8
// integers and 2 doubles. Each attempt: 63 bytes of text and 3 integers.
// 64 more are slack against a miscount. The unit tests write the widest
// record; a release build checks too (and stops rather than go on past the
// room).
constexpr std::size_t kRecordRoom = 416 + 64 + 8 * kIntRoom + 2 * kDoubleRoom;
constexpr std::size_t kAttemptRoom = 64 + 3 * kIntRoom;

// The attempts array `[{"http_status":…,"error":…,"latency_ms":…,
// "delay_before_ms":…},…]` and the room it can take.
std::size_t attempts_room(const std::vector<AttemptRecord>& attempts) {
  std::size_t room = 2;
  for (const auto& a : attempts) {
    room += kAttemptRoom;
    if (a.error) room += quoted_room(taotoken::to_string(*a.error));
  }
  return room;
}
char* put_attempts(char* p, const std::vector<AttemptRecord>& attempts) {
  *p++ = '[';
  for (std::size_t i = 0; i < attempts.size(); ++i) {
    const AttemptRecord& a = attempts[i];
    p = i ? put(p, ",{\"http_status\":") : put(p, "{\"http_status\":");
    p = put_int(p, a.http_status);
    p = put(p, ",\"error\":");
    p = a.error ? put_quoted(p, taotoken::to_string(*a.error)) : put(p, "null");
    p = put(p, ",\"latency_ms\":");
    p = put_int(p, a.latency.count());
    p = put(p, ",\"delay_before_ms\":");
    p = put_int(p, a.delay_before.count());
    *p++ = '}';
  }
  *p++ = ']';
  return p;
}

// The tags object `{"key":"value",…}` and the room it can take.
using Tags = std::vector<std::pair<std::string, std::string>>;
std::size_t tags_room(const Tags& tags) {
  std::size_t room = 2;
  for (const auto& [k, v] : tags) room += quoted_room(k) + quoted_room(v) + 2;  // ':' and ','
  return room;
}
char* put_tags(char* p, const Tags& tags) {
  *p++ = '{';
  for (std::size_t i = 0; i < tags.size(); ++i) {
    if (i) *p++ = ',';
    p = put_quoted(p, tags[i].first);
    *p++ = ':';
    p = put_quoted(p, tags[i].second);
  }
  *p++ = '}';
  return p;
}

// Appends what `put` writes, in `room` bytes made for it.
template <typename Put>
void append_with(std::string& out, std::size_t room, Put&& put_fn) {
  const std::size_t old = out.size();
  out.resize(old + room);
  char* const begin = &out[old];
  char* const end = put_fn(begin);
  if (static_cast<std::size_t>(end - begin) > room) {
    std::fputs("taotoken: internal error: a record's JSON ran past its room\n", stderr);
    std::abort();
  }
  out.resize(old + static_cast<std::size_t>(end - begin));
}

}  // namespace

std::string RequestRecord::started_at_iso() const { return iso8601(started_at); }

std::string RequestRecord::to_json() const {
  std::string out;  // append_json makes its room in one allocation
  append_json(out);
  return out;
}

void RequestRecord::append_json(std::string& out) const {
  // Room for the widest output this record can have is made once; the
  // record is then written straight into it and `out` cut to what was
  // written. The output is byte for byte what JsonWriter wrote before (a
  // unit test keeps that version and compares).
  std::size_t room = kRecordRoom + quoted_room(request_id) + quoted_room(upstream_request_id) +
                     quoted_room(endpoint) + quoted_room(requested_model) + quoted_room(model) +
                     quoted_room(error_message) + quoted_room(taotoken::to_string(status));
  if (provider) room += quoted_room(*provider);
  if (error_kind) room += quoted_room(taotoken::to_string(*error_kind));
  room += attempts_room(attempts) + tags_room(tags);
  if (request_summary) room += request_summary->size();

  append_with(out, room, [&](char* p) {
    p = put(p, "{\"request_id\":");
    p = put_quoted(p, request_id);
    p = put(p, ",\"upstream_request_id\":");
    p = put_quoted(p, upstream_request_id);
    p = put(p, ",\"started_at\":\"");
    iso8601(started_at, p);  // digits and -T:.Z (odd punctuation for years before 0): no escapes
    p += 24;
    p = put(p, "\",\"endpoint\":");
    p = put_quoted(p, endpoint);
    p = put(p, ",\"requested_model\":");
    p = put_quoted(p, requested_model);
    p = put(p, ",\"model\":");
    p = put_quoted(p, model);
    p = put(p, ",\"provider\":");
    p = provider ? put_quoted(p, *provider) : put(p, "null");
    p = streamed ? put(p, ",\"streamed\":true,\"status\":") : put(p, ",\"streamed\":false,\"status\":");
    p = put_quoted(p, taotoken::to_string(status));
    p = put(p, ",\"http_status\":");
    p = put_int(p, http_status);
    p = put(p, ",\"error_kind\":");
    p = error_kind ? put_quoted(p, taotoken::to_string(*error_kind)) : put(p, "null");
    p = put(p, ",\"error_message\":");
    p = put_quoted(p, error_message);
    p = put(p, ",\"attempts\":");
    p = put_attempts(p, attempts);
    p = put(p, ",\"latency_ms\":");
    p = put_int(p, latency.count());
    p = put(p, ",\"ttft_ms\":");
    p = time_to_first_token ? put_int(p, time_to_first_token->count()) : put(p, "null");
    p = put(p, ",\"prompt_tokens\":");
    p = put_opt(p, prompt_tokens);
    p = put(p, ",\"completion_tokens\":");
    p = put_opt(p, completion_tokens);
    p = put(p, ",\"total_tokens\":");
    p = put_opt(p, total_tokens);
    p = put(p, ",\"cached_tokens\":");
    p = put_opt(p, cached_tokens);
    p = put(p, ",\"reasoning_tokens\":");
    p = put_opt(p, reasoning_tokens);
    p = put(p, ",\"estimated_cost\":");
    p = put_opt(p, estimated_cost);
    p = put(p, ",\"upstream_cost\":");
    p = put_opt(p, upstream_cost);
    p = put(p, ",\"tags\":");
    p = put_tags(p, tags);
    p = put(p, ",\"request_summary\":");
    if (request_summary) {
      std::memcpy(p, request_summary->data(), request_summary->size());
      p += request_summary->size();
    } else {
      p = put(p, "null");
    }
    *p++ = '}';
    return p;
  });
}

namespace detail {

void append_attempts_json(std::string& out, const std::vector<AttemptRecord>& attempts) {
  append_with(out, attempts_room(attempts), [&](char* p) { return put_attempts(p, attempts); });
}

void append_tags_json(std::string& out, const std::vector<std::pair<std::string, std::string>>& tags) {
  append_with(out, tags_room(tags), [&](char* p) { return put_tags(p, tags); });
}

void format_iso8601(std::chrono::system_clock::time_point t, char* buf) { iso8601(t, buf); }

}  // namespace detail

// ---- prices

void PriceTable::set(std::string model, ModelPrice price) { prices_[std::move(model)] = price; }

const ModelPrice* PriceTable::find(std::string_view model) const {
  if (auto it = prices_.find(model); it != prices_.end()) return &it->second;
  if (auto slash = model.rfind('/'); slash != std::string_view::npos) {
    if (auto it = prices_.find(model.substr(slash + 1)); it != prices_.end()) return &it->second;
    model = model.substr(slash + 1);
  }
  const ModelPrice* best = nullptr;
  std::size_t best_len = 0;
  for (const auto& [key, price] : prices_)
    if (key.size() > best_len && model.substr(0, key.size()) == key) {
      best = &price;
      best_len = key.size();
    }
  return best;
}

std::optional<double> PriceTable::cost(std::string_view model, const Usage& usage) const {
  const ModelPrice* p = find(model);
  if (!p || (!usage.prompt_tokens && !usage.completion_tokens)) return std::nullopt;
  const auto prompt = static_cast<double>(usage.prompt_tokens.value_or(0));
  const auto cached = std::min(prompt, static_cast<double>(usage.cached_tokens.value_or(0)));
  const auto completion = static_cast<double>(usage.completion_tokens.value_or(0));
  return ((prompt - cached) * p->input_per_million +
          cached * p->cached_input_per_million.value_or(p->input_per_million) +
          completion * p->output_per_million) /
         1e6;
}

Result<PriceTable> PriceTable::from_json(std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto err = parser.parse(json.data(), json.size(), true).get(root))
    return Error(ErrorKind::invalid_argument, fmt::format("price table is not valid JSON: {}", simdjson::error_message(err)));
  simdjson::dom::object models;
  if (root.get_object().get(models))
    return Error(ErrorKind::invalid_argument, "price table must be a JSON object of model -> prices");
  PriceTable table;
  for (auto [model, entry] : models) {
    simdjson::dom::object fields;
    if (entry.get_object().get(fields))
      return Error(ErrorKind::invalid_argument, fmt::format("price table: '{}' must map to an object", model));
    ModelPrice price;
    bool has_input = false, has_output = false;
    for (auto [key, value] : fields) {
      double v = 0;
      if (value.get_double().get(v) || !std::isfinite(v) || v < 0)
        return Error(ErrorKind::invalid_argument,
                     fmt::format("price table: '{}'.'{}' must be a non-negative number", model, key));
      if (key == "input") price.input_per_million = v, has_input = true;
      else if (key == "output") price.output_per_million = v, has_output = true;
      else if (key == "cached_input") price.cached_input_per_million = v;
      else
        return Error(ErrorKind::invalid_argument,
                     fmt::format("price table: '{}' has an unknown field '{}' (expected input, output, cached_input)", model, key));
    }
    if (!has_input || !has_output)
      return Error(ErrorKind::invalid_argument, fmt::format("price table: '{}' needs both input and output", model));
    table.set(std::string(model), price);
  }
  return table;
}

Result<PriceTable> PriceTable::from_file(const std::string& path) {
  simdjson::padded_string text;
  if (auto err = simdjson::padded_string::load(path).get(text))
    return Error(ErrorKind::invalid_argument, fmt::format("cannot read price file '{}': {}", path, simdjson::error_message(err)));
  auto table = from_json(std::string_view(text.data(), text.size()));
  if (!table) return Error(ErrorKind::invalid_argument, fmt::format("{}: {}", path, table.error().message()));
  return table;
}

PriceTable PriceTable::builtin_estimates() {
  // USD per million tokens; public list prices, rounded. ESTIMATES ONLY.
  PriceTable t;
  t.set("gpt-4o", {2.50, 10.00, 1.25});
  t.set("gpt-4o-mini", {0.15, 0.60, 0.075});
  t.set("gpt-4.1", {2.00, 8.00, 0.50});
  t.set("gpt-4.1-mini", {0.40, 1.60, 0.10});
  t.set("claude-sonnet-4-6", {3.00, 15.00, 0.30});
  t.set("claude-haiku-4.5", {1.00, 5.00, 0.10});
  t.set("deepseek-chat", {0.27, 1.10, 0.07});
  return t;
}

// ---- summaries

void SummaryBuilder::add_to(Group& g, const RequestRecord& r) {
  UsageTotals& t = g.totals;
  ++t.requests;
  if (r.status == RequestStatus::success) ++t.successes;
  else if (r.status == RequestStatus::cancelled) ++t.cancelled;
  else ++t.errors;
  t.prompt_tokens += r.prompt_tokens.value_or(0);
  t.completion_tokens += r.completion_tokens.value_or(0);
  t.total_tokens += r.total_tokens.value_or(0);
  t.cached_tokens += r.cached_tokens.value_or(0);
  t.estimated_cost += r.estimated_cost.value_or(0);
  t.upstream_cost += r.upstream_cost.value_or(0);
  if (max_samples_ == 0 || g.latencies_ms.size() < max_samples_) {
    g.latencies_ms.push_back(r.latency.count());
    return;
  }
  // Reservoir sampling (algorithm R): each latency seen so far stays with
  // probability max_samples / requests.
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  const std::uint64_t slot = rng_ % static_cast<std::uint64_t>(t.requests);
  if (slot < max_samples_) g.latencies_ms[slot] = r.latency.count();
}

SummaryBuilder::Group& SummaryBuilder::group(std::map<std::string, Group>& groups, const std::string& key) {
  if (auto it = groups.find(key); it != groups.end()) return it->second;
  if (max_groups_ != 0 && groups.size() >= max_groups_) return groups["(other)"];
  return groups[key];
}

void SummaryBuilder::add(const RequestRecord& r) {
  add_to(total_, r);
  add_to(group(by_model_, r.model.empty() ? r.requested_model : r.model), r);
  for (const auto& [k, v] : r.tags) {
    tag_key_.assign(k).append("=").append(v);
    add_to(group(by_tag_, tag_key_), r);
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.started_at.time_since_epoch()).count();
  const std::int64_t day = ms >= 0 ? ms / 86400000 : (ms + 1) / 86400000 - 1;  // floor
  if (day != last_day_) {
    last_day_ = day;
    last_day_key_ = r.started_at_iso().substr(0, 10);
  }
  add_to(group(by_day_, last_day_key_), r);
}

UsageTotals SummaryBuilder::finish(const Group& g) {
  UsageTotals t = g.totals;
  if (g.latencies_ms.empty()) return t;
  std::vector<std::int64_t> v = g.latencies_ms;
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest value with at least p% of the values <= it.
  auto rank = [&](double p) {
    auto idx = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    return std::chrono::milliseconds(v[std::max<std::size_t>(idx, 1) - 1]);
  };
  t.latency_p50 = rank(50);
  t.latency_p95 = rank(95);
  t.latency_p99 = rank(99);
  return t;
}

UsageSummary SummaryBuilder::build() const {
  UsageSummary s;
  s.total = finish(total_);
  for (const auto& [k, g] : by_model_) s.by_model[k] = finish(g);
  for (const auto& [k, g] : by_tag_) s.by_tag[k] = finish(g);
  for (const auto& [k, g] : by_day_) s.by_day[k] = finish(g);
  return s;
}

namespace {
void totals_json(JsonWriter& w, const UsageTotals& t) {
  w.begin_object();
  w.key_lit("requests").number(t.requests).key_lit("successes").number(t.successes);
  w.key_lit("errors").number(t.errors).key_lit("cancelled").number(t.cancelled);
  w.key_lit("prompt_tokens").number(t.prompt_tokens).key_lit("completion_tokens").number(t.completion_tokens);
  w.key_lit("total_tokens").number(t.total_tokens).key_lit("cached_tokens").number(t.cached_tokens);
  w.key_lit("estimated_cost").number(t.estimated_cost).key_lit("upstream_cost").number(t.upstream_cost);
  w.key_lit("latency_ms").begin_object();
  w.key_lit("p50").number(static_cast<std::int64_t>(t.latency_p50.count()));
  w.key_lit("p95").number(static_cast<std::int64_t>(t.latency_p95.count()));
  w.key_lit("p99").number(static_cast<std::int64_t>(t.latency_p99.count()));
  w.end_object().end_object();
}
void group_json(JsonWriter& w, std::string_view key, const std::map<std::string, UsageTotals>& groups) {
  w.key(key).begin_object();
  for (const auto& [k, t] : groups) {
    w.key(k);
    totals_json(w, t);
  }
  w.end_object();
}
}  // namespace

std::string UsageTotals::to_json() const {
  std::string out;
  JsonWriter w(out);
  totals_json(w, *this);
  return out;
}

std::string UsageSummary::to_json() const {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key_lit("total");
  totals_json(w, total);
  group_json(w, "by_model", by_model);
  group_json(w, "by_tag", by_tag);
  group_json(w, "by_day", by_day);
  w.end_object();
  return out;
}

TAOTOKEN_END_NAMESPACE
