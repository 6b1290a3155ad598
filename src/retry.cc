#include "taotoken/retry.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>

TAOTOKEN_BEGIN_NAMESPACE

namespace {

// One random_device read per thread (it can cost tens of microseconds on a
// VM), then a counter: seeds differ per backoff, and seeding happens only
// when a retry is actually scheduled.
std::uint64_t fresh_seed() {
  thread_local std::uint64_t base = [] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }();
  static std::atomic<std::uint64_t> counter{0};
  return base ^ (++counter * 0x9E3779B97F4A7C15ULL);
}

// splitmix64: tiny, good enough for jitter, no shared state.
double next_unit(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

class NoRetryPolicy final : public RetryPolicy {
 public:
  std::unique_ptr<RetryPolicy> clone() const override { return std::make_unique<NoRetryPolicy>(); }
  std::optional<std::chrono::milliseconds> on_failure(const Error&, int) override { return std::nullopt; }
};

class TimeLimitedRetryPolicy final : public RetryPolicy {
 public:
  explicit TimeLimitedRetryPolicy(std::chrono::milliseconds budget)
      : budget_(budget), backoff_(std::chrono::milliseconds(500), std::chrono::seconds(8)) {}
  std::unique_ptr<RetryPolicy> clone() const override { return std::make_unique<TimeLimitedRetryPolicy>(budget_); }
  std::optional<std::chrono::milliseconds> on_failure(const Error& error, int attempt) override {
    const auto now = std::chrono::steady_clock::now();
    if (attempt == 1) first_failure_ = now;
    if (!is_retryable(error)) return std::nullopt;
    auto wait = error.retry_after.value_or(backoff_.delay(attempt));
    if (now + wait - first_failure_ >= budget_) return std::nullopt;
    return wait;
  }

 private:
  std::chrono::milliseconds budget_;
  ExponentialBackoff backoff_;
  std::chrono::steady_clock::time_point first_failure_;
};

}  // namespace

ExponentialBackoff::ExponentialBackoff(std::chrono::milliseconds initial, std::chrono::milliseconds maximum,
                                       double multiplier, double jitter)
    : initial_(initial),
      maximum_(std::max(initial, maximum)),
      multiplier_(multiplier < 1 ? 1 : multiplier),
      jitter_(std::clamp(jitter, 0.0, 0.99)),
      rng_state_(0) {}

std::unique_ptr<BackoffPolicy> ExponentialBackoff::clone() const {
  return std::make_unique<ExponentialBackoff>(initial_, maximum_, multiplier_, jitter_);
}

std::chrono::milliseconds ExponentialBackoff::delay(int retry) {
  const double base = std::min(static_cast<double>(initial_.count()) * std::pow(multiplier_, std::max(0, retry - 1)),
                               static_cast<double>(maximum_.count()));
  if (rng_state_ == 0) rng_state_ = fresh_seed() | 1;
  const double factor = jitter_ > 0 ? 1.0 - jitter_ * next_unit(rng_state_) : 1.0;
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(base * factor)));
}

bool RetryPolicy::is_retryable(const Error& error) noexcept {
  switch (error.kind()) {
    case ErrorKind::invalid_argument:
    case ErrorKind::cancelled:
    case ErrorKind::bad_response:
      return false;
    default:
      break;
  }
  if (error.should_retry) return *error.should_retry;
  if (error.http_status == 0) return error.kind() == ErrorKind::connection || error.kind() == ErrorKind::timeout;
  const int s = error.http_status;
  return s == 408 || s == 409 || s == 429 || s >= 500;
}

std::unique_ptr<RetryPolicy> RetryPolicy::standard(int max_retries) {
  return std::make_unique<StandardRetryPolicy>(
      max_retries, std::make_unique<ExponentialBackoff>(std::chrono::milliseconds(500), std::chrono::seconds(8)));
}

std::unique_ptr<RetryPolicy> RetryPolicy::classic(int max_retries) {
  return std::make_unique<StandardRetryPolicy>(
      max_retries, std::make_unique<ExponentialBackoff>(std::chrono::seconds(1), std::chrono::hours(1), 2.0, 0.0));
}

std::unique_ptr<RetryPolicy> RetryPolicy::none() { return std::make_unique<NoRetryPolicy>(); }

std::unique_ptr<RetryPolicy> RetryPolicy::time_limited(std::chrono::milliseconds budget) {
  return std::make_unique<TimeLimitedRetryPolicy>(budget);
}

StandardRetryPolicy::StandardRetryPolicy(int max_retries, std::unique_ptr<BackoffPolicy> backoff,
                                         std::chrono::milliseconds max_server_wait)
    : max_retries_(std::max(0, max_retries)), backoff_(std::move(backoff)), max_server_wait_(max_server_wait) {}

std::unique_ptr<RetryPolicy> StandardRetryPolicy::clone() const {
  return std::make_unique<StandardRetryPolicy>(max_retries_, backoff_ ? backoff_->clone() : nullptr, max_server_wait_);
}

std::optional<std::chrono::milliseconds> StandardRetryPolicy::on_failure(const Error& error, int attempt) {
  if (attempt > max_retries_ || !is_retryable(error)) return std::nullopt;
  if (error.retry_after) {
    // A wait longer than we are willing to sit through: give up now; the
    // error carries the wait so the caller can schedule its own retry.
    if (*error.retry_after > max_server_wait_) return std::nullopt;
    return *error.retry_after;
  }
  return backoff_ ? backoff_->delay(attempt) : std::chrono::milliseconds(0);
}

RetryBudget::RetryBudget(int capacity, int retry_cost, int timeout_cost, int success_refund)
    : capacity_(capacity),
      tokens_(capacity),
      retry_cost_(retry_cost),
      timeout_cost_(timeout_cost),
      success_refund_(success_refund) {}

bool RetryBudget::try_acquire(const Error& error) {
  const int cost = error.kind() == ErrorKind::timeout ? timeout_cost_ : retry_cost_;
  std::lock_guard<std::mutex> lock(mu_);
  if (tokens_ < cost) return false;
  tokens_ -= cost;
  return true;
}

void RetryBudget::on_success() {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_ = std::min(capacity_, tokens_ + success_refund_);
}

int RetryBudget::available() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

TAOTOKEN_END_NAMESPACE
