// chat() and list_models() through real libcurl against the simulator.
#include <simdjson.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <regex>
#include <set>
#include <thread>

#include "fixtures.h"
#include "sim_fixture.h"

using namespace taotoken;

TEST_CASE("chat() returns the completion and the simulator sees the right request") {
  SimFixture f;
  auto client = f.client();
  ChatRequest req = SimFixture::ask("hello there");
  req.temperature = 0.5;
  auto r = client.chat(req);
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: hello there");
  CHECK(r->model == "claude-sonnet-4-6");  // the default model was filled in
  CHECK(r->object == "chat.completion");
  CHECK(r->http_status == 200);
  CHECK(r->attempts == 1);
  REQUIRE(r->usage);
  CHECK(r->usage->prompt_tokens == 6);
  CHECK(r->usage->completion_tokens == 3);
  CHECK(r->usage->cached_tokens == 0);
  CHECK(std::regex_match(r->request_id, std::regex("req_[0-9]{13}_[0-9a-z]{9}")));
  CHECK(r->upstream_request_id == "sim-1");
  CHECK_THAT(r->raw_body, Catch::Contains("fp_taotoken_sim"));

  auto seen = f.sim.requests();
  REQUIRE(seen.size() == 1);
  const auto& q = seen[0];
  CHECK(q.method == "POST");
  CHECK(q.path == "/v1/chat/completions");
  REQUIRE(q.header("authorization"));
  CHECK(*q.header("Authorization") == "Bearer sk-test-secret-key-123");
  CHECK(*q.header("content-type") == "application/json");
  CHECK(*q.header("accept") == "application/json");
  CHECK(*q.header("user-agent") == "taotoken-cpp/" TAOTOKEN_VERSION_STRING);
  CHECK(*q.header("x-client-request-id") == r->request_id);
  CHECK(q.header("expect") == nullptr);
  REQUIRE(q.header("accept-encoding"));
  CHECK_THAT(*q.header("accept-encoding"), Catch::Contains("gzip"));
  CHECK(q.body == R"({"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hello there"}],"temperature":0.5})");
}

TEST_CASE("the request id is sent upstream only when asked") {
  SimFixture f;
  auto o = f.options();
  o.send_request_id = false;
  auto r = TaotokenClient(o).chat(SimFixture::ask("quiet"));
  REQUIRE(r.ok());
  CHECK_FALSE(r->request_id.empty());
  CHECK(f.sim.requests().at(0).header("x-client-request-id") == nullptr);
}

TEST_CASE("base URLs with trailing slashes, default headers and per-call headers") {
  SimFixture f;
  auto opts = f.options();
  opts.base_url += "///";
  opts.default_headers = {{"HTTP-Referer", "https://example.com"}, {"X-Title", "tests"}};
  opts.default_model = "gpt-4o-mini";
  TaotokenClient client(opts);
  CHECK(client.base_url() == f.sim.base_url());
  RequestOptions ro;
  ro.headers = {{"X-Feature", "search"}};
  ro.request_id = "req_custom_1";
  auto r = client.chat(SimFixture::ask("x"), ro);
  REQUIRE(r.ok());
  CHECK(r->model == "gpt-4o-mini");
  CHECK(r->request_id == "req_custom_1");
  auto q = f.sim.requests().at(0);
  CHECK(q.path == "/v1/chat/completions");
  CHECK(*q.header("http-referer") == "https://example.com");
  CHECK(*q.header("x-title") == "tests");
  CHECK(*q.header("x-feature") == "search");
  CHECK(*q.header("x-client-request-id") == "req_custom_1");
}

TEST_CASE("the base URL and API key come from the environment when not set") {
  SimFixture f;
  ::setenv("TAOTOKEN_BASE_URL", f.sim.base_url().c_str(), 1);
  ::setenv("TAOTOKEN_API_KEY", "sk-from-env", 1);
  TaotokenClient client;
  ::unsetenv("TAOTOKEN_BASE_URL");
  ::unsetenv("TAOTOKEN_API_KEY");
  CHECK(client.base_url() == f.sim.base_url());
  CHECK(client.default_model() == "claude-sonnet-4-6");
  REQUIRE(client.chat(SimFixture::ask("env")).ok());
  CHECK(*f.sim.requests().at(0).header("authorization") == "Bearer sk-from-env");
}

TEST_CASE("calls reuse one kept-alive connection") {
  SimFixture f;
  auto client = f.client();
  for (int i = 0; i < 10; ++i) REQUIRE(client.chat(SimFixture::ask("again")).ok());
  std::set<std::uint64_t> connections;
  for (const auto& q : f.sim.requests()) connections.insert(q.connection_id);
  CHECK(connections.size() == 1);
}

TEST_CASE("8 threads share one client (and its copies) safely") {
  SimFixture f;
  auto client = f.client();
  constexpr int kThreads = 8, kCalls = 40;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t, copy = client] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string text = "thread " + std::to_string(t) + " call " + std::to_string(i);
        auto r = (i % 2 ? copy : client).chat(SimFixture::ask(text));
        if (r.ok() && r->text() == "Echo: " + text) ++good;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(good == kThreads * kCalls);
  CHECK(f.sim.request_count() == kThreads * kCalls);
  std::set<std::string> ids;
  for (const auto& q : f.sim.requests()) ids.insert(*q.header("x-client-request-id"));
  CHECK(ids.size() == kThreads * kCalls);  // request ids are unique
  std::set<std::uint64_t> connections;
  for (const auto& q : f.sim.requests()) connections.insert(q.connection_id);
  CHECK(connections.size() <= kThreads);  // pooled, not one connection per call
}

TEST_CASE("n > 1 returns every choice") {
  SimFixture f;
  ChatRequest req = SimFixture::ask("three");
  req.n = 3;
  auto r = f.client().chat(req);
  REQUIRE(r.ok());
  REQUIRE(r->choices.size() == 3);
  CHECK(r->choices[2].index == 2);
  CHECK(r->choices[2].message.content == std::optional<std::string>("Echo: three"));
}

TEST_CASE("gzip-compressed responses are decoded") {
  SimFixture f;
  sim::Fault gz;
  gz.gzip = true;
  f.sim.push_fault(gz);
  auto r = f.client().chat(SimFixture::ask("compressed please"));
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: compressed please");
  // The simulator compresses only when asked, so the request must ask.
  const auto seen = f.sim.requests();
  const auto* ae = seen.at(0).header("accept-encoding");
  REQUIRE(ae);
  CHECK_THAT(*ae, Catch::Contains("gzip"));
}

TEST_CASE("every recorded response body decodes the same through HTTP") {
  SimFixture f;
  auto client = f.client();
  int played = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "json" || sc.name == "ns-openrouter-error-in-200") continue;
    DYNAMIC_SECTION(sc.name) {
      sim::Fault replay;
      replay.replace_body = true;
      replay.body = fixtures::read_file(fixtures::dir() + "/" + sc.file);
      replay.status = sc.status;
      replay.headers = sc.headers;
      replay.content_type.clear();  // the recorded headers carry it
      f.sim.push_fault(replay);
      auto r = client.chat(SimFixture::ask("replay"));
      REQUIRE(r.ok());
      fixtures::check_expect(*r, sc.expect_json);
      for (const auto& [k, v] : sc.headers)
        if (k == "x-request-id") CHECK(r->upstream_request_id == v);
    }
    ++played;
  }
  CHECK(played == 16);
}

TEST_CASE("list_models() returns the upstream's model list") {
  SimFixture f;
  auto models = f.client().list_models();
  REQUIRE(models.ok());
  REQUIRE(models->size() == 3);
  CHECK((*models)[0].id == "claude-sonnet-4-6");
  CHECK((*models)[0].owned_by == "taotoken-sim");
  auto q = f.sim.requests().at(0);
  CHECK(q.method == "GET");
  CHECK(q.path == "/v1/models");
}

TEST_CASE("the client works with a simulator that requires the key") {
  sim::SimulatorOptions so;
  so.api_key = "sk-test-secret-key-123";
  SimFixture f(so);
  CHECK(f.client().chat(SimFixture::ask("authorised")).ok());
  auto opts = f.options();
  opts.api_key = "sk-wrong-key-456";
  auto r = TaotokenClient(opts).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::authentication);
  CHECK(r.error().http_status == 401);
  CHECK(r.error().code == std::optional<std::string>("invalid_api_key"));
}
