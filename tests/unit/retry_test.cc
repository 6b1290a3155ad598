#include <catch2/catch.hpp>

#include "taotoken/retry.h"

using namespace taotoken;
using std::chrono::milliseconds;

namespace {
Error http(int status) {
  Error e(status >= 500 ? ErrorKind::server_error : ErrorKind::invalid_request, "x");
  e.http_status = status;
  return e;
}
}  // namespace

TEST_CASE("exponential backoff: doubling from 0.5 s, capped at 8 s, up to 25% jitter off") {
  ExponentialBackoff b(milliseconds(500), milliseconds(8000));
  const std::int64_t base[] = {500, 1000, 2000, 4000, 8000, 8000, 8000};
  for (int round = 0; round < 50; ++round) {
    auto copy = b.clone();
    for (int retry = 1; retry <= 7; ++retry) {
      const auto d = copy->delay(retry).count();
      INFO("retry " << retry << " delay " << d);
      CHECK(d <= base[retry - 1]);
      CHECK(d >= base[retry - 1] * 3 / 4);
    }
  }
}

TEST_CASE("the classic schedule waits exactly 1 s, 2 s, 4 s") {
  auto p = RetryPolicy::classic(3);
  Error e = http(503);
  CHECK(p->on_failure(e, 1) == milliseconds(1000));
  CHECK(p->on_failure(e, 2) == milliseconds(2000));
  CHECK(p->on_failure(e, 3) == milliseconds(4000));
  CHECK_FALSE(p->on_failure(e, 4));
}

TEST_CASE("what is retryable") {
  for (int s : {408, 409, 429, 500, 502, 503, 504, 529}) CHECK(RetryPolicy::is_retryable(http(s)));
  for (int s : {400, 401, 403, 404, 413, 422}) CHECK_FALSE(RetryPolicy::is_retryable(http(s)));
  CHECK(RetryPolicy::is_retryable(Error(ErrorKind::connection, "reset")));
  CHECK(RetryPolicy::is_retryable(Error(ErrorKind::timeout, "slow")));
  CHECK_FALSE(RetryPolicy::is_retryable(Error(ErrorKind::bad_response, "junk")));
  CHECK_FALSE(RetryPolicy::is_retryable(Error(ErrorKind::invalid_argument, "bad")));
  CHECK_FALSE(RetryPolicy::is_retryable(Error(ErrorKind::cancelled, "stop")));
  Error in_body(ErrorKind::rate_limited, "in a 200");
  in_body.http_status = 200;
  CHECK_FALSE(RetryPolicy::is_retryable(in_body));
  Error no = http(503);
  no.should_retry = false;
  CHECK_FALSE(RetryPolicy::is_retryable(no));
  Error yes = http(400);
  yes.should_retry = true;
  CHECK(RetryPolicy::is_retryable(yes));
}

TEST_CASE("the standard policy honours the server's wait up to 60 s") {
  auto p = RetryPolicy::standard();
  Error e = http(429);
  e.retry_after = milliseconds(1500);
  CHECK(p->on_failure(e, 1) == milliseconds(1500));
  e.retry_after = milliseconds(3600 * 1000);
  CHECK_FALSE(p->on_failure(e, 1));  // too long: give up with the error
  e.retry_after.reset();
  CHECK(p->on_failure(e, 2).has_value());
  CHECK_FALSE(p->on_failure(e, 3));  // 2 retries, 3 attempts
  CHECK_FALSE(RetryPolicy::none()->on_failure(e, 1));
}

TEST_CASE("the retry budget drains on retries and refills on success") {
  RetryBudget budget(12, 5, 10, 1);
  Error e = http(500);
  CHECK(budget.try_acquire(e));
  CHECK(budget.try_acquire(e));
  CHECK_FALSE(budget.try_acquire(e));
  CHECK(budget.available() == 2);
  for (int i = 0; i < 3; ++i) budget.on_success();
  CHECK(budget.try_acquire(e));
  CHECK_FALSE(budget.try_acquire(Error(ErrorKind::timeout, "t")));  // timeouts cost more
  for (int i = 0; i < 100; ++i) budget.on_success();
  CHECK(budget.available() == 12);
}
