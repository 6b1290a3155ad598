// Retries through real libcurl against the simulator. Most tests inject the
// sleeper so schedules run in microseconds; one uses the real clock.
#include <atomic>
#include <catch2/catch.hpp>
#include <ctime>
#include <mutex>
#include <thread>

#include "sim_fixture.h"

using namespace taotoken;
using namespace std::chrono_literals;
using std::chrono::milliseconds;

namespace {

sim::Fault status(int code, std::vector<std::pair<std::string, std::string>> headers = {}) {
  sim::Fault f;
  f.status = code;
  f.replace_body = true;
  f.body = R"({"error":{"message":"simulated )" + std::to_string(code) + R"(","type":"server_error","param":null,"code":null}})";
  f.headers = std::move(headers);
  return f;
}

struct Recorder {
  std::mutex mu;
  std::vector<milliseconds> waits;
  std::function<void(milliseconds)> hook() {
    return [this](milliseconds d) {
      std::lock_guard<std::mutex> g(mu);
      waits.push_back(d);
    };
  }
};

ClientOptions retrying(const SimFixture& f, Recorder& rec) {
  ClientOptions o = f.options(true);
  o.sleep_for = rec.hook();
  return o;
}

}  // namespace

TEST_CASE("429 with Retry-After: 1 twice, then 200: the real waits respect the server") {
  SimFixture f;
  f.sim.push_fault(status(429, {{"Retry-After", "1"}}), 2);
  auto r = TaotokenClient(f.options(true)).chat(SimFixture::ask("patience"));
  REQUIRE(r.ok());
  CHECK(r->attempts == 3);
  REQUIRE(r->attempt_log.size() == 3);
  CHECK(r->attempt_log[0].http_status == 429);
  CHECK(r->attempt_log[0].error == ErrorKind::rate_limited);
  CHECK(r->attempt_log[1].delay_before == 1000ms);
  CHECK_FALSE(r->attempt_log[2].error);
  auto seen = f.sim.requests();
  REQUIRE(seen.size() == 3);
  // Measured at the server: each retry came no sooner than asked (small tolerance).
  CHECK(seen[1].received_at - seen[0].received_at >= 950ms);
  CHECK(seen[2].received_at - seen[1].received_at >= 950ms);
  // The same request id on every attempt.
  CHECK(*seen[0].header("x-client-request-id") == *seen[2].header("x-client-request-id"));
}

TEST_CASE("retry-after-ms and HTTP-date waits are honoured") {
  SimFixture f;
  Recorder rec;
  TaotokenClient client(retrying(f, rec));
  f.sim.push_fault(status(429, {{"retry-after-ms", "150"}, {"Retry-After", "9"}}));
  REQUIRE(client.chat(SimFixture::ask("a")).ok());
  char date[64];
  const std::time_t later = std::time(nullptr) + 3;
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", std::gmtime(&later));
  f.sim.push_fault(status(503, {{"Retry-After", date}}));
  REQUIRE(client.chat(SimFixture::ask("b")).ok());
  REQUIRE(rec.waits.size() == 2);
  CHECK(rec.waits[0] == 150ms);
  CHECK(rec.waits[1] >= 1000ms);
  CHECK(rec.waits[1] <= 3000ms);
}

TEST_CASE("retryable statuses are retried; others are not") {
  SimFixture f;
  Recorder rec;
  TaotokenClient client(retrying(f, rec));
  for (int code : {500, 502, 503, 504, 408, 409, 429}) {
    INFO("HTTP " << code);
    f.sim.push_fault(status(code));
    auto r = client.chat(SimFixture::ask("x"));
    REQUIRE(r.ok());
    CHECK(r->attempts == 2);
  }
  for (int code : {400, 401, 403, 404, 422}) {
    INFO("HTTP " << code);
    const auto before = f.sim.request_count();
    f.sim.push_fault(status(code));
    auto r = client.chat(SimFixture::ask("x"));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().attempts == 1);
    CHECK(f.sim.request_count() == before + 1);
  }
}

TEST_CASE("x-should-retry overrides the status rule") {
  SimFixture f;
  Recorder rec;
  TaotokenClient client(retrying(f, rec));
  f.sim.push_fault(status(503, {{"x-should-retry", "false"}}));
  auto stop = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(stop.ok());
  CHECK(stop.error().attempts == 1);
  CHECK(stop.error().should_retry == false);
  f.sim.push_fault(status(400, {{"x-should-retry", "true"}}));
  auto go = client.chat(SimFixture::ask("x"));
  REQUIRE(go.ok());
  CHECK(go->attempts == 2);
}

TEST_CASE("network failures are retried and end with the right kind") {
  SimFixture f;
  Recorder rec;
  auto opts = retrying(f, rec);
  opts.first_byte_timeout = 1s;
  TaotokenClient client(opts);
  sim::Fault reset, close, drop, stall;
  reset.reset_after_bytes = 20;
  close.close_after_bytes = 20;
  drop.drop = true;
  stall.delay = 5s;
  for (const auto& fault : {reset, close, stall}) {
    f.sim.push_fault(fault);
    auto r = client.chat(SimFixture::ask("x"));
    REQUIRE(r.ok());
    CHECK(r->attempts == 2);
  }
  // A kept-alive connection closed without any answer: libcurl itself
  // retries such a request once on a new connection (it cannot know whether
  // the server saw it), so the policy may not even see a failure.
  const auto before = f.sim.request_count();
  f.sim.push_fault(drop);
  REQUIRE(client.chat(SimFixture::ask("x")).ok());
  CHECK(f.sim.request_count() == before + 2);
  f.sim.push_fault(reset, 3);
  auto failed = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().kind() == ErrorKind::connection);
  CHECK(failed.error().attempts == 3);
  f.sim.push_fault(stall, 3);
  auto slow = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(slow.ok());
  CHECK(slow.error().kind() == ErrorKind::timeout);
  CHECK_THAT(slow.error().message(), Catch::Contains("first-byte"));
  CHECK(slow.error().attempts == 3);
}

TEST_CASE("connection refused is retried, then reported") {
  int port = 0;
  {
    sim::Simulator gone;
    gone.start();
    port = gone.port();
  }
  Recorder rec;
  ClientOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.sleep_for = rec.hook();
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::connection);
  CHECK(r.error().attempts == 3);
  CHECK(rec.waits.size() == 2);
}

TEST_CASE("a Retry-After of an hour gives up at once, carrying the wait") {
  SimFixture f;
  Recorder rec;
  f.sim.push_fault(status(429, {{"Retry-After", "3600"}}));
  auto r = TaotokenClient(retrying(f, rec)).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::rate_limited);
  CHECK(r.error().attempts == 1);
  CHECK(r.error().retry_after == std::chrono::milliseconds(3600 * 1000));
  CHECK(rec.waits.empty());
}

TEST_CASE("the total deadline holds across attempts and waits") {
  SimFixture f;
  f.sim.set_fault(status(503));
  auto o = f.options(true);
  o.retry_policy = std::make_shared<StandardRetryPolicy>(
      1000, std::make_unique<ExponentialBackoff>(100ms, 100ms, 1.0, 0.0));
  o.timeout = 700ms;
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::server_error);
  CHECK(r.error().attempts >= 2);
  CHECK(r.error().attempts <= 8);  // 700 ms / 100 ms waits, not 1001 attempts
  CHECK(f.sim.request_count() == static_cast<std::size_t>(r.error().attempts));
}

TEST_CASE("a custom RetryPolicy is cloned per request and sees each failure") {
  struct Seen {
    std::mutex mu;
    std::vector<std::pair<int, int>> failures;  // (attempt, http status)
    std::atomic<int> clones{0};
  };
  class CountingPolicy final : public RetryPolicy {
   public:
    explicit CountingPolicy(std::shared_ptr<Seen> seen) : seen_(std::move(seen)) {}
    std::unique_ptr<RetryPolicy> clone() const override {
      ++seen_->clones;
      return std::make_unique<CountingPolicy>(seen_);
    }
    std::optional<milliseconds> on_failure(const Error& e, int attempt) override {
      std::lock_guard<std::mutex> g(seen_->mu);
      seen_->failures.emplace_back(attempt, e.http_status);
      if (++calls_ > 3) return std::nullopt;
      return 0ms;
    }

   private:
    std::shared_ptr<Seen> seen_;
    int calls_ = 0;
  };
  SimFixture f;
  auto seen = std::make_shared<Seen>();
  auto o = f.options(true);
  o.retry_policy = std::make_shared<CountingPolicy>(seen);
  TaotokenClient client(o);
  f.sim.push_fault(status(500));
  f.sim.push_fault(status(418));
  REQUIRE(client.chat(SimFixture::ask("x")).ok());
  f.sim.push_fault(status(502), 10);
  auto r = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().attempts == 4);  // its own counter, fresh for the second request
  CHECK(seen->clones == 2);
  const std::vector<std::pair<int, int>> expected = {{1, 500}, {2, 418}, {1, 502}, {2, 502}, {3, 502}, {4, 502}};
  CHECK(seen->failures == expected);
  f.sim.clear_faults();

  SECTION("a per-call policy overrides the client's") {
    RequestOptions ro;
    ro.max_retries = 0;
    f.sim.push_fault(status(500));
    CHECK(client.chat(SimFixture::ask("x"), ro).error().attempts == 1);
  }
}

TEST_CASE("the on_retry hook sees each retry") {
  SimFixture f;
  Recorder rec;
  auto o = retrying(f, rec);
  std::vector<RetryEvent> events;
  std::vector<ErrorKind> kinds;
  o.on_retry = [&](const RetryEvent& e) {
    events.push_back(e);
    kinds.push_back(e.error->kind());
  };
  f.sim.push_fault(status(429, {{"retry-after-ms", "5"}}));
  f.sim.push_fault(status(503));
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE(r.ok());
  REQUIRE(events.size() == 2);
  CHECK(events[0].attempt == 1);
  CHECK(events[0].delay == 5ms);
  CHECK(kinds == std::vector<ErrorKind>{ErrorKind::rate_limited, ErrorKind::server_error});
  CHECK(events[1].request_id == r->request_id);
}

TEST_CASE("a shared retry budget stops retry storms") {
  SimFixture f;
  Recorder rec;
  auto o = retrying(f, rec);
  o.retry_budget = std::make_shared<RetryBudget>(10, 5, 10, 1);
  TaotokenClient client(o);
  f.sim.set_fault(status(503));
  CHECK(client.chat(SimFixture::ask("x")).error().attempts == 3);  // spends the 10 tokens
  CHECK(client.chat(SimFixture::ask("x")).error().attempts == 1);  // budget empty: no retry
  CHECK(o.retry_budget->available() == 0);
}

TEST_CASE("the time-limited policy retries until its budget is spent") {
  SimFixture f;
  f.sim.set_fault(status(503, {{"retry-after-ms", "40"}}));
  auto o = f.options(true);
  o.retry_policy = RetryPolicy::time_limited(300ms);
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().attempts >= 3);
  CHECK(r.error().attempts <= 9);
}

TEST_CASE("forward() retries retryable statuses, then passes the last response through") {
  SimFixture f;
  Recorder rec;
  TaotokenClient client(retrying(f, rec));
  f.sim.push_fault(status(503));
  auto ok = client.forward(R"({"messages":[{"role":"user","content":"hi"}]})");
  REQUIRE(ok.ok());
  CHECK(ok->status == 200);
  CHECK(ok->attempts == 2);
  f.sim.push_fault(status(503), 3);
  auto gave_up = client.forward(R"({"messages":[{"role":"user","content":"hi"}]})");
  REQUIRE(gave_up.ok());
  CHECK(gave_up->status == 503);
  CHECK(gave_up->attempts == 3);
  CHECK_THAT(gave_up->body, Catch::Contains("simulated 503"));
  f.sim.push_fault(status(400));
  auto bad = client.forward(R"({"messages":[{"role":"user","content":"hi"}]})");
  CHECK(bad->status == 400);
  CHECK(bad->attempts == 1);
}

TEST_CASE("8 threads x 50 requests with random faults all end correctly") {
  SimFixture f;
  auto o = f.options(true);
  o.retry_policy = RetryPolicy::standard(1000);
  o.sleep_for = [](milliseconds) {};
  TaotokenClient client(o);
  const sim::Fault faults[] = {status(500), status(429, {{"retry-after-ms", "1"}}), status(503), [] {
                                 sim::Fault r;
                                 r.reset_after_bytes = 10;
                                 return r;
                               }(),
                               [] {
                                 sim::Fault c;
                                 c.close_after_bytes = 5;
                                 return c;
                               }()};
  constexpr int kFaults = 150;
  for (int i = 0; i < kFaults; ++i) f.sim.push_fault(faults[(i * 7) % 5]);
  std::atomic<int> good{0}, attempts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string text = std::to_string(t) + "/" + std::to_string(i);
        auto r = client.chat(SimFixture::ask(text));
        if (r.ok() && r->text() == "Echo: " + text) {
          ++good;
          attempts += r->attempts;
        }
      }
    });
  for (auto& th : threads) th.join();
  CHECK(good == 400);
  CHECK(attempts == 400 + kFaults);
  CHECK(f.sim.request_count() == 400 + kFaults);
}

TEST_CASE("cancellation ends a retry wait and a stalled transfer") {
  SimFixture f;
  TaotokenClient client(f.options(true));
  SECTION("during a 30 s Retry-After wait") {
    f.sim.push_fault(status(503, {{"Retry-After", "30"}}));
    RequestOptions ro;
    ro.cancel = std::make_shared<CancelToken>();
    std::thread canceller([token = ro.cancel] {
      std::this_thread::sleep_for(100ms);
      token->cancel();
    });
    const auto start = std::chrono::steady_clock::now();
    auto r = client.chat(SimFixture::ask("x"), ro);
    const auto took = std::chrono::steady_clock::now() - start;
    canceller.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(r.error().attempts == 1);
    CHECK(took < 20s);  // not the 30 s wait (a hang detector, not a timing check)
    CHECK(f.sim.request_count() == 1);
  }
  SECTION("during a transfer whose server stalls") {
    sim::Fault stall;
    stall.delay = 20s;
    f.sim.push_fault(stall);
    RequestOptions ro;
    ro.cancel = std::make_shared<CancelToken>();
    std::thread canceller([token = ro.cancel] {
      std::this_thread::sleep_for(100ms);
      token->cancel();
    });
    auto r = client.chat(SimFixture::ask("x"), ro);
    canceller.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(r.error().attempts == 1);  // cancelled attempts are not retried
  }
  SECTION("a token cancelled before the call") {
    RequestOptions ro;
    ro.cancel = std::make_shared<CancelToken>();
    ro.cancel->cancel();
    auto r = client.chat(SimFixture::ask("x"), ro);
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(r.error().attempts == 0);
    CHECK(f.sim.request_count() == 0);
  }
}

TEST_CASE("simulator sessions keep concurrent tests' faults apart") {
  SimFixture f;
  Recorder rec;
  TaotokenClient client(retrying(f, rec));
  sim::Fault a = status(503);
  a.session = "A";
  f.sim.push_fault(a, 2);
  RequestOptions in_b;
  in_b.headers = {{"X-Sim-Session", "B"}};
  auto b = client.chat(SimFixture::ask("b"), in_b);
  REQUIRE(b.ok());
  CHECK(b->attempts == 1);  // A's faults are not B's
  RequestOptions in_a;
  in_a.headers = {{"X-Sim-Session", "A"}};
  auto ra = client.chat(SimFixture::ask("a"), in_a);
  REQUIRE(ra.ok());
  CHECK(ra->attempts == 3);
}
