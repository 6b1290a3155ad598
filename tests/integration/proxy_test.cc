// taotoken-proxy through real HTTP: a simulator upstream, the proxy
// in-process on 127.0.0.1:0, requests sent with libcurl.
#include <curl/curl.h>
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <thread>
#include <unistd.h>

#include "proxy_server.h"
#include "sim_fixture.h"

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const char* kKey = "internal-key-abcdef";

struct Proxy {
  explicit Proxy(SimFixture& f, std::string upstream = {}) {
    taotoken_proxy::ProxyOptions o;
    o.port = 0;
    o.keys = {kKey};
    db = (fs::temp_directory_path() / ("taotoken-proxy-" + std::to_string(::getpid()) + ".db")).string();
    fs::remove(db);
    o.db_path = db;
    o.client = f.options(/*retries=*/true);  // the library's retry policy, without the waits
    if (!upstream.empty()) o.client.base_url = upstream;
    o.client.sleep_for = [](std::chrono::milliseconds) {};
    server = std::make_unique<taotoken_proxy::ProxyServer>(o);
    thread = std::thread([this] { server->run(); });
  }
  ~Proxy() {
    server->stop();
    thread.join();
    server.reset();
    fs::remove(db);
  }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(server->port()) + path; }

  std::string db;
  std::unique_ptr<taotoken_proxy::ProxyServer> server;
  std::thread thread;
};

struct Reply {
  long status = 0;
  std::string body;
  std::string headers;
};

size_t append(char* d, size_t s, size_t n, void* u) {
  static_cast<std::string*>(u)->append(d, s * n);
  return s * n;
}

Reply http(const std::string& url, const std::string& body = {}, std::vector<std::string> headers = {{std::string("X-Internal-Key: ") + kKey}},
           bool post = true) {
  Reply r;
  CURL* h = curl_easy_init();
  curl_slist* list = nullptr;
  for (const auto& hd : headers) list = curl_slist_append(list, hd.c_str());
  list = curl_slist_append(list, "Content-Type: application/json");
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
  if (post) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, append);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(h);
  return r;
}

simdjson::dom::element json(simdjson::dom::parser& p, const std::string& s) { return p.parse(s); }

const std::string kHello = R"({"messages":[{"role":"user","content":"secret prompt text"}]})";

}  // namespace

TEST_CASE("proxy: chat, stream, models, health") {
  SimFixture f;
  Proxy proxy(f);
  simdjson::dom::parser p;
  Reply r = http(proxy.url("/v1/chat/completions"), kHello);
  CHECK(r.status == 200);
  CHECK(std::string_view(json(p, r.body)["choices"].at(0)["message"]["content"]) == "Echo: secret prompt text");
  CHECK_THAT(r.headers, Catch::Contains("x-request-id: sim-1"));
  CHECK_THAT(r.headers, Catch::Contains("X-Taotoken-Request-Id: req_"));
  CHECK(f.sim.requests().at(0).body.find("\"model\":\"claude-sonnet-4-6\"") != std::string::npos);

  Reply s = http(proxy.url("/v1/chat/completions"), R"({"stream":true,"messages":[{"role":"user","content":"a b"}]})");
  CHECK(s.status == 200);
  CHECK_THAT(s.headers, Catch::Contains("text/event-stream"));
  CHECK_THAT(s.body, Catch::Contains("data: [DONE]"));
  CHECK_THAT(s.body, Catch::Contains("\"usage\""));  // include_usage added so streams are costed
  Reply m = http(proxy.url("/v1/models"), {}, {std::string("Authorization: Bearer ") + kKey}, false);
  CHECK(m.status == 200);
  CHECK(std::string_view(json(p, m.body)["data"].at(0)["id"]) == "claude-sonnet-4-6");
  Reply h = http(proxy.url("/healthz"), {}, {}, false);
  CHECK(h.status == 200);
}

TEST_CASE("proxy: internal keys are required, in either header") {
  SimFixture f;
  Proxy proxy(f);
  CHECK(http(proxy.url("/v1/chat/completions"), kHello, {}).status == 401);
  CHECK(http(proxy.url("/v1/chat/completions"), kHello, {"X-Internal-Key: wrong-key-123456"}).status == 401);
  CHECK(http(proxy.url("/admin/logs"), {}, {}, false).status == 401);
  CHECK(http(proxy.url("/v1/chat/completions"), kHello, {std::string("Authorization: Bearer ") + kKey}).status == 200);
  CHECK(f.sim.request_count() == 1);
  CHECK(taotoken_proxy::constant_time_equal("abc", "abc"));
  CHECK_FALSE(taotoken_proxy::constant_time_equal("abc", "abd"));
  CHECK_FALSE(taotoken_proxy::constant_time_equal("abc", "abcd"));
}

TEST_CASE("proxy: without keys it refuses to listen beyond loopback") {
  SimFixture f;
  taotoken_proxy::ProxyOptions o;
  o.port = 0;
  o.bind = "0.0.0.0";
  o.db_path.clear();
  o.client = f.options();
  CHECK_THROWS_WITH(taotoken_proxy::ProxyServer(o), Catch::Contains("TAOTOKEN_PROXY_KEYS"));
}

TEST_CASE("proxy: bad requests get OpenAI-shaped errors") {
  SimFixture f;
  Proxy proxy(f);
  simdjson::dom::parser p;
  Reply bad = http(proxy.url("/v1/chat/completions"), "{not json");
  CHECK(bad.status == 400);
  CHECK(std::string_view(json(p, bad.body)["error"]["type"]) == "invalid_request_error");
  Reply big = http(proxy.url("/v1/chat/completions"), "{\"pad\":\"" + std::string(5 << 20, 'a') + "\"}");
  CHECK(big.status == 413);
  CHECK(std::string_view(json(p, big.body)["error"]["code"]) == "body_too_large");
  CHECK(f.sim.request_count() == 0);
}

TEST_CASE("proxy: upstream errors pass through with their status; a dead upstream is 502") {
  SimFixture f;
  Proxy proxy(f);
  taotoken::sim::Fault limited;
  limited.status = 429;
  limited.replace_body = true;
  limited.body = R"({"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}})";
  limited.headers = {{"Retry-After", "1"}};
  f.sim.push_fault(limited, 3);  // the proxy's client retries twice first
  Reply r = http(proxy.url("/v1/chat/completions"), kHello);
  CHECK(r.status == 429);
  CHECK(r.body == limited.body);
  CHECK_THAT(r.headers, Catch::Contains("Retry-After: 1"));
  taotoken::sim::Fault boom = limited;
  boom.status = 500;
  boom.headers.clear();
  f.sim.push_fault(boom, 3);
  CHECK(http(proxy.url("/v1/chat/completions"), kHello).status == 500);

  int dead_port = 0;
  {
    taotoken::sim::Simulator gone;
    gone.start();
    dead_port = gone.port();
  }
  Proxy orphan(f, "http://127.0.0.1:" + std::to_string(dead_port) + "/v1");
  simdjson::dom::parser p;
  Reply down = http(orphan.url("/v1/chat/completions"), kHello);
  CHECK(down.status == 502);
  CHECK(std::string_view(json(p, down.body)["error"]["code"]) == "connection");
  Reply down_stream = http(orphan.url("/v1/chat/completions"), R"({"stream":true,"messages":[{"role":"user","content":"x"}]})");
  CHECK(down_stream.status == 502);
}

TEST_CASE("proxy: a client leaving mid-stream cancels the upstream and records it") {
  SimFixture f;
  Proxy proxy(f);
  f.stall_next_stream(10s);
  // Read the first bytes, then hang up.
  CURL* h = curl_easy_init();
  curl_slist* list = curl_slist_append(nullptr, (std::string("X-Internal-Key: ") + kKey).c_str());
  const std::string body = R"({"stream":true,"messages":[{"role":"user","content":"one two three four five six seven"}]})";
  std::string got;
  curl_easy_setopt(h, CURLOPT_URL, proxy.url("/v1/chat/completions").c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, +[](char*, size_t s, size_t n, void* u) -> size_t {
    *static_cast<bool*>(u) = true;
    return s * n == 0 ? 0 : 0;  // abort at the first bytes
  });
  bool received = false;
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &received);
  curl_easy_perform(h);
  curl_slist_free_all(list);
  curl_easy_cleanup(h);
  REQUIRE(received);
  // The proxy notices when it next writes; the upstream is cancelled and recorded.
  simdjson::dom::parser p;
  std::string status;
  for (int i = 0; i < 100 && status.empty(); ++i) {
    std::this_thread::sleep_for(100ms);
    Reply logs = http(proxy.url("/admin/logs"), {}, {std::string("X-Internal-Key: ") + kKey}, false);
    simdjson::dom::array arr = json(p, logs.body)["logs"];
    if (arr.size() > 0) status = std::string(std::string_view(arr.at(0)["status"]));
  }
  CHECK(status == "cancelled");
}

TEST_CASE("proxy: /admin/logs shows exactly the requests made, without text or keys; /admin/usage sums them") {
  SimFixture f;
  Proxy proxy(f);
  for (int i = 0; i < 3; ++i) REQUIRE(http(proxy.url("/v1/chat/completions"), kHello).status == 200);
  REQUIRE(http(proxy.url("/v1/chat/completions"), R"({"stream":true,"messages":[{"role":"user","content":"x y"}]})").status == 200);
  Reply logs = http(proxy.url("/admin/logs"), {}, {std::string("X-Internal-Key: ") + kKey}, false);
  REQUIRE(logs.status == 200);
  simdjson::dom::parser p;
  auto j = json(p, logs.body);
  CHECK(simdjson::dom::array(j["logs"]).size() == 4);
  CHECK(std::string_view(j["logs"].at(0)["endpoint"]) == "forward_stream");  // newest first
  CHECK(int64_t(j["summary"]["total"]["requests"]) == 4);
  CHECK(int64_t(j["summary"]["total"]["completion_tokens"]) == 3 * 4 + 3);
  CHECK(logs.body.find("secret prompt text") == std::string::npos);
  CHECK(logs.body.find("sk-test-secret-key-123") == std::string::npos);
  CHECK(logs.body.find(kKey) == std::string::npos);
  Reply usage = http(proxy.url("/admin/usage?by=model&since=2020-01-01"), {}, {std::string("X-Internal-Key: ") + kKey}, false);
  REQUIRE(usage.status == 200);
  auto u = json(p, usage.body);
  CHECK(int64_t(u["total"]["requests"]) == 4);
  CHECK(int64_t(u["groups"]["claude-sonnet-4-6"]["requests"]) == 4);
  CHECK(http(proxy.url("/admin/usage?since=yesterday"), {}, {std::string("X-Internal-Key: ") + kKey}, false).status == 400);
}
