#include <catch2/catch.hpp>
#include <string>

#include "taotoken/result.h"

using taotoken::Error;
using taotoken::ErrorKind;
using taotoken::Result;

TEST_CASE("Result holds a value or an error") {
  Result<int> ok(42);
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  CHECK(ok.value() == 42);
  CHECK(*ok == 42);
  CHECK_THROWS_AS(ok.error(), std::logic_error);

  Result<int> bad(Error(ErrorKind::rate_limited, "slow down"));
  CHECK_FALSE(bad.ok());
  CHECK(bad.error().kind() == ErrorKind::rate_limited);
  CHECK(bad.error().message() == "slow down");
}

TEST_CASE("value() throws the same Error the result carries") {
  Error e(ErrorKind::server_error, "boom");
  e.http_status = 503;
  e.code = "overloaded";
  e.request_id = "req_1_abc";
  e.attempts = 3;
  Result<std::string> r(e);
  try {
    (void)r.value();
    FAIL("value() did not throw");
  } catch (const Error& thrown) {
    CHECK(thrown.kind() == ErrorKind::server_error);
    CHECK(thrown.http_status == 503);
    CHECK(thrown.code == std::optional<std::string>("overloaded"));
    CHECK(thrown.attempts == 3);
    CHECK(std::string(thrown.what()) == "server_error: boom");
  }
}

TEST_CASE("describe() lists what is set and nothing else") {
  Error e(ErrorKind::rate_limited, "Rate limit exceeded");
  CHECK(e.describe() == "rate_limited: Rate limit exceeded");
  e.http_status = 429;
  e.retry_after = std::chrono::milliseconds(1500);
  e.request_id = "req_1_x";
  e.upstream_request_id = "up-1";
  e.attempts = 1;
  CHECK(e.describe() ==
        "rate_limited: Rate limit exceeded [http_status=429] [retry_after_ms=1500] [request_id=req_1_x] "
        "[upstream_request_id=up-1] [attempts=1]");
}

TEST_CASE("every ErrorKind has a stable name") {
  using K = ErrorKind;
  const std::pair<K, const char*> names[] = {
      {K::invalid_request, "invalid_request"}, {K::authentication, "authentication"},
      {K::permission_denied, "permission_denied"}, {K::not_found, "not_found"},
      {K::conflict, "conflict"}, {K::unprocessable, "unprocessable"},
      {K::rate_limited, "rate_limited"}, {K::server_error, "server_error"},
      {K::timeout, "timeout"}, {K::connection, "connection"},
      {K::bad_response, "bad_response"}, {K::cancelled, "cancelled"},
      {K::invalid_argument, "invalid_argument"}};
  for (auto [k, n] : names) CHECK(taotoken::to_string(k) == n);
}
