#include "taotoken/usage.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <ctime>

#include "json_writer.h"

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

std::string iso8601(std::chrono::system_clock::time_point t) {
  char buf[24];
  iso8601(t, buf);
  return std::string(buf, sizeof buf);
}

void opt_int(JsonWriter& w, std::string_view key, const std::optional<std::int64_t>& v) {
  w.key_lit(key);
  if (v) w.number(*v); else w.null();
}

void opt_double(JsonWriter& w, std::string_view key, const std::optional<double>& v) {
  w.key_lit(key);
  if (v) w.number(*v); else w.null();
}

}  // namespace

std::string RequestRecord::started_at_iso() const { return iso8601(started_at); }

std::string RequestRecord::to_json() const {
  std::string out;
  out.reserve(512);
  append_json(out);
  return out;
}

void RequestRecord::append_json(std::string& out) const {
  JsonWriter w(out);
  w.begin_object();
  w.key_lit("request_id").string(request_id);
  w.key_lit("upstream_request_id").string(upstream_request_id);
  char started[24];
  iso8601(started_at, started);
  w.key_lit("started_at").string(std::string_view(started, sizeof started));
  w.key_lit("endpoint").string(endpoint);
  w.key_lit("requested_model").string(requested_model);
  w.key_lit("model").string(model);
  w.key_lit("provider");
  if (provider) w.string(*provider); else w.null();
  w.key_lit("streamed").boolean(streamed);
  w.key_lit("status").string(taotoken::to_string(status));
  w.key_lit("http_status").number(static_cast<std::int64_t>(http_status));
  w.key_lit("error_kind");
  if (error_kind) w.string(taotoken::to_string(*error_kind)); else w.null();
  w.key_lit("error_message").string(error_message);
  w.key_lit("attempts").begin_array();
  for (const auto& a : attempts) {
    w.begin_object().key_lit("http_status").number(static_cast<std::int64_t>(a.http_status));
    w.key_lit("error");
    if (a.error) w.string(taotoken::to_string(*a.error)); else w.null();
    w.key_lit("latency_ms").number(static_cast<std::int64_t>(a.latency.count()));
    w.key_lit("delay_before_ms").number(static_cast<std::int64_t>(a.delay_before.count())).end_object();
  }
  w.end_array();
  w.key_lit("latency_ms").number(static_cast<std::int64_t>(latency.count()));
  w.key_lit("ttft_ms");
  if (time_to_first_token) w.number(static_cast<std::int64_t>(time_to_first_token->count())); else w.null();
  opt_int(w, "prompt_tokens", prompt_tokens);
  opt_int(w, "completion_tokens", completion_tokens);
  opt_int(w, "total_tokens", total_tokens);
  opt_int(w, "cached_tokens", cached_tokens);
  opt_int(w, "reasoning_tokens", reasoning_tokens);
  opt_double(w, "estimated_cost", estimated_cost);
  opt_double(w, "upstream_cost", upstream_cost);
  w.key_lit("tags").begin_object();
  for (const auto& [k, v] : tags) w.key(k).string(v);
  w.end_object();
  w.key_lit("request_summary");
  if (request_summary) w.raw(*request_summary); else w.null();
  w.end_object();
}

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
