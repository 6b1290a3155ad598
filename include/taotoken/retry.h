#ifndef TAOTOKEN_RETRY_H
#define TAOTOKEN_RETRY_H

/// @file
/// Retries: a `RetryPolicy` decides whether a failed attempt is retried and
/// how long to wait; a `BackoffPolicy` supplies the schedule. Policies are
/// held as prototypes in `ClientOptions` and cloned for every request, so an
/// implementation may keep per-request state without locks.

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "taotoken/error.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// The wait schedule between attempts.
///
/// Thread safety: a clone is used by one request at a time; `clone()` is
/// called concurrently on the prototype and must be safe for that.
class BackoffPolicy {
 public:
  virtual ~BackoffPolicy() = default;
  /// A fresh copy, with its own state, for one request.
  virtual std::unique_ptr<BackoffPolicy> clone() const = 0;
  /// The wait before retry number `retry` (1 for the first retry).
  virtual std::chrono::milliseconds delay(int retry) = 0;
};

/// `min(initial · multiplier^(retry-1), maximum)`, reduced by up to `jitter`
/// (a fraction in [0, 1)) chosen at random: the official OpenAI SDKs use
/// 0.5 s, 2, 8 s and 0.25.
class ExponentialBackoff final : public BackoffPolicy {
 public:
  ExponentialBackoff(std::chrono::milliseconds initial, std::chrono::milliseconds maximum, double multiplier = 2.0,
                     double jitter = 0.25);
  std::unique_ptr<BackoffPolicy> clone() const override;
  std::chrono::milliseconds delay(int retry) override;

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds maximum_;
  double multiplier_;
  double jitter_;
  std::uint64_t rng_state_;
};

/// Decides, after each failed attempt, whether to try again and when.
///
/// Implement this to plug in your own rules. The client calls
/// `on_failure()` once per failed attempt, in order, on the request's own
/// clone. Return the wait before the next attempt, or `std::nullopt` to stop
/// with this error. The client still enforces the request's total deadline
/// and the optional `RetryBudget`, and never retries after a stream has
/// delivered data.
class RetryPolicy {
 public:
  virtual ~RetryPolicy() = default;
  /// A fresh copy, with its own state, for one request.
  virtual std::unique_ptr<RetryPolicy> clone() const = 0;
  /// `attempt` is the 1-based number of the attempt that failed with `error`.
  virtual std::optional<std::chrono::milliseconds> on_failure(const Error& error, int attempt) = 0;

  /// True for failures worth retrying, as the official SDKs decide: an
  /// `x-should-retry` header wins; else connection errors, timeouts and HTTP
  /// 408, 409, 429 and >= 500. Errors inside a 200 body, bad responses,
  /// invalid arguments and cancellations are not retried.
  static bool is_retryable(const Error& error) noexcept;

  /// The OpenAI SDKs' default: 2 retries, ExponentialBackoff(0.5 s, 8 s, 2, 0.25),
  /// honouring the server's wait up to 60 s.
  static std::unique_ptr<RetryPolicy> standard(int max_retries = 2);
  /// The classic proxy's schedule: `max_retries` retries waiting 1 s, 2 s, 4 s…
  /// (no jitter), honouring the server's wait up to 60 s.
  static std::unique_ptr<RetryPolicy> classic(int max_retries = 2);
  /// Never retries.
  static std::unique_ptr<RetryPolicy> none();
  /// Retries retryable failures while less than `budget` has passed since
  /// the first failure, waiting per the standard backoff.
  static std::unique_ptr<RetryPolicy> time_limited(std::chrono::milliseconds budget);
};

/// Retries up to `max_retries` times with a `BackoffPolicy`, honouring the
/// server's `retry-after-ms` / `Retry-After` when it is at most `max_server_wait`
/// (a longer requested wait stops at once: the error carries the wait).
class StandardRetryPolicy final : public RetryPolicy {
 public:
  StandardRetryPolicy(int max_retries, std::unique_ptr<BackoffPolicy> backoff,
                      std::chrono::milliseconds max_server_wait = std::chrono::seconds(60));
  std::unique_ptr<RetryPolicy> clone() const override;
  std::optional<std::chrono::milliseconds> on_failure(const Error& error, int attempt) override;

 private:
  int max_retries_;
  std::unique_ptr<BackoffPolicy> backoff_;
  std::chrono::milliseconds max_server_wait_;
};

/// A process-wide retry quota (AWS SDK style), shared by clients through
/// `ClientOptions::retry_budget`: each retry costs tokens, each success
/// refunds some, and when the bucket is empty failures are not retried, so a
/// degraded upstream does not trigger a retry storm. Off unless configured.
///
/// Thread safety: all methods are thread-safe.
class RetryBudget {
 public:
  explicit RetryBudget(int capacity = 500, int retry_cost = 5, int timeout_cost = 10, int success_refund = 1);
  /// Takes the cost of retrying after `error`; false when the budget is spent.
  bool try_acquire(const Error& error);
  /// Refunds after a successful request.
  void on_success();
  /// Tokens left.
  int available() const;

 private:
  mutable std::mutex mu_;
  int capacity_, tokens_, retry_cost_, timeout_cost_, success_refund_;
};

/// What a retry hook is told before the client waits and tries again.
struct RetryEvent {
  /// Our request id.
  std::string request_id;
  /// The attempt that failed (1-based).
  int attempt = 0;
  /// Why it failed.
  const Error* error = nullptr;
  /// The wait chosen before the next attempt.
  std::chrono::milliseconds delay{0};
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_RETRY_H
