#ifndef TAOTOKEN_USAGE_H
#define TAOTOKEN_USAGE_H

/// @file
/// Usage accounting: the `RequestRecord` every request produces, the
/// `UsageRecorder` interface that receives it, prices and summaries.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/error.h"
#include "taotoken/result.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// How a request ended.
enum class RequestStatus { success, error, cancelled };

/// "success", "error" or "cancelled".
std::string_view to_string(RequestStatus status) noexcept;

/// One request, as recorded when it ends. Never holds the API key; holds
/// message text only when `ClientOptions::record_message_text` is set.
struct RequestRecord {
  std::string request_id;
  std::string upstream_request_id;
  /// When the call started (UTC).
  std::chrono::system_clock::time_point started_at;
  /// "chat", "chat_stream", "forward" or "forward_stream".
  std::string endpoint;
  /// The model the request asked for (after the default was applied).
  std::string requested_model;
  /// The model the upstream says answered (empty when unknown).
  std::string model;
  std::optional<std::string> provider;
  bool streamed = false;
  RequestStatus status = RequestStatus::success;
  /// HTTP status of the last attempt (0 when none).
  int http_status = 0;
  std::optional<ErrorKind> error_kind;
  std::string error_message;
  /// Every attempt, oldest first.
  std::vector<AttemptRecord> attempts;
  std::chrono::milliseconds latency{0};
  std::optional<std::chrono::milliseconds> time_to_first_token;
  /// Token counts; unset when the upstream did not report them.
  std::optional<std::int64_t> prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens;
  /// From the client's `PriceTable` (unset when the model has no price).
  std::optional<double> estimated_cost;
  /// What the upstream reported (aggregators' `usage.cost`).
  std::optional<double> upstream_cost;
  /// Caller tags from `RequestOptions::tags` (user, feature, tenant…).
  std::vector<std::pair<std::string, std::string>> tags;
  /// A redacted JSON summary of the request (model, parameters, message
  /// count and sizes; message text only if enabled), when enabled.
  std::optional<std::string> request_summary;

  /// `started_at` as ISO 8601 UTC with milliseconds, e.g. "2026-11-27T01:02:03.456Z".
  std::string started_at_iso() const;
  /// The record as one JSON object (the JSONL format).
  std::string to_json() const;
  /// The same, appended to `out`. Makes room for the widest output the
  /// record could have first (about 1.5 KB for a typical record, more with
  /// long strings), so no allocation when `out`'s capacity covers that: a
  /// buffer reused for many records settles there.
  void append_json(std::string& out) const;
};

/// Receives a `RequestRecord` for every request, exactly once, when it ends.
///
/// `record()` is called on the thread that made the call, possibly from many
/// threads at once: implementations must be thread-safe, fast and must not
/// throw (exceptions are caught and sent to the error hook). Slow back ends
/// (databases) queue and write from a worker thread. `flush()` blocks until
/// everything recorded so far is written; the client calls it when its last
/// handle is destroyed.
class UsageRecorder {
 public:
  virtual ~UsageRecorder() = default;
  virtual void record(const RequestRecord& record) = 0;
  virtual void flush() {}
};

/// Where recorders report their own failures (a full disk, a database that
/// went away). Called from any thread; must not throw.
using RecorderErrorHook = std::function<void(std::string_view recorder, std::string_view message)>;

/// Prices per million tokens.
struct ModelPrice {
  double input_per_million = 0;
  double output_per_million = 0;
  /// Price of cached input tokens; unset: same as input.
  std::optional<double> cached_input_per_million;
};

/// Model → price. Lookups try the exact model id, then the part after the
/// last '/' ("openai/gpt-4o" → "gpt-4o"), then the longest price key that
/// is a prefix of the id ("gpt-4o-2024-08-06" → "gpt-4o").
///
/// Thread safety: const methods are safe to call concurrently.
class PriceTable {
 public:
  void set(std::string model, ModelPrice price);
  const ModelPrice* find(std::string_view model) const;
  /// Cost of a request, or unset when the model has no price or no token
  /// counts are known.
  std::optional<double> cost(std::string_view model, const Usage& usage) const;
  bool empty() const noexcept { return prices_.empty(); }

  /// Parses {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}, …}
  /// (prices per million tokens).
  static Result<PriceTable> from_json(std::string_view json);
  static Result<PriceTable> from_file(const std::string& path);
  /// A few common models at list prices as of late 2026. ESTIMATES: check
  /// your provider's prices and load your own table for billing.
  static PriceTable builtin_estimates();

 private:
  std::map<std::string, ModelPrice, std::less<>> prices_;
};

/// Latency percentiles and totals of a group of requests.
struct UsageTotals {
  std::int64_t requests = 0, successes = 0, errors = 0, cancelled = 0;
  std::int64_t prompt_tokens = 0, completion_tokens = 0, total_tokens = 0, cached_tokens = 0;
  double estimated_cost = 0;
  double upstream_cost = 0;
  std::chrono::milliseconds latency_p50{0}, latency_p95{0}, latency_p99{0};
  /// As a JSON object.
  std::string to_json() const;
};

/// Totals overall and broken down by model, by tag ("key=value") and by day
/// ("YYYY-MM-DD", UTC).
struct UsageSummary {
  UsageTotals total;
  std::map<std::string, UsageTotals> by_model;
  std::map<std::string, UsageTotals> by_tag;
  std::map<std::string, UsageTotals> by_day;
  /// The summary as JSON.
  std::string to_json() const;
};

/// A time window for reading records back (UTC; unset ends are open).
struct UsageQuery {
  std::optional<std::chrono::system_clock::time_point> since;
  std::optional<std::chrono::system_clock::time_point> until;
};

/// Builds a `UsageSummary` from records: totals are exact; percentiles are
/// exact (nearest rank) up to `max_samples` latencies per group, then
/// estimated from a uniform reservoir of that many. At most `max_groups`
/// groups per breakdown; later keys are counted under "(other)".
/// Not thread-safe; the memory recorder keeps one under its lock.
class SummaryBuilder {
 public:
  /// 0 means unlimited (exact, memory grows with the records).
  explicit SummaryBuilder(std::size_t max_samples = 0, std::size_t max_groups = 0)
      : max_samples_(max_samples), max_groups_(max_groups) {}
  void add(const RequestRecord& r);
  UsageSummary build() const;

 private:
  struct Group {
    UsageTotals totals;
    std::vector<std::int64_t> latencies_ms;
  };
  void add_to(Group& g, const RequestRecord& r);
  Group& group(std::map<std::string, Group>& groups, const std::string& key);
  static UsageTotals finish(const Group& g);
  std::size_t max_samples_, max_groups_;
  std::uint64_t rng_ = 0x9E3779B97F4A7C15ULL;
  Group total_;
  std::map<std::string, Group> by_model_, by_tag_, by_day_;
  // The last record's UTC day ("YYYY-MM-DD") and its day number: records
  // mostly fall on the same day, so the key is formatted once a day.
  std::int64_t last_day_ = INT64_MIN;
  std::string last_day_key_;
  std::string tag_key_;  // scratch for "key=value"
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_USAGE_H
