// Failures through real HTTP: every error kind, network faults, limits,
// hardening. Each must be a typed error, never a crash, hang or a fake success.
#include <catch2/catch.hpp>
#include <chrono>

#include "fixtures.h"
#include "sim_fixture.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {

sim::Fault respond(int status, std::string body, std::string content_type = "application/json") {
  sim::Fault f;
  f.status = status;
  f.replace_body = true;
  f.body = std::move(body);
  f.content_type = std::move(content_type);
  return f;
}

Error fails(SimFixture& f, const TaotokenClient& client, sim::Fault fault) {
  f.sim.push_fault(std::move(fault));
  auto r = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  return r.error();
}

}  // namespace

TEST_CASE("HTTP statuses map to error kinds, with JSON, HTML and empty bodies") {
  SimFixture f;
  auto client = f.client();
  const std::pair<int, ErrorKind> cases[] = {
      {400, ErrorKind::invalid_request}, {401, ErrorKind::authentication}, {403, ErrorKind::permission_denied},
      {404, ErrorKind::not_found},       {408, ErrorKind::timeout},        {409, ErrorKind::conflict},
      {422, ErrorKind::unprocessable},   {429, ErrorKind::rate_limited},   {500, ErrorKind::server_error},
      {502, ErrorKind::server_error},    {503, ErrorKind::server_error},   {418, ErrorKind::invalid_request}};
  for (auto [status, kind] : cases) {
    DYNAMIC_SECTION("HTTP " << status) {
      Error json = fails(f, client, respond(status, R"({"error":{"message":"upstream says no","type":"t","code":"c","param":"p"}})"));
      CHECK(json.kind() == kind);
      CHECK(json.http_status == status);
      CHECK(json.message() == "upstream says no");
      CHECK(json.type == std::optional<std::string>("t"));
      CHECK(json.code == std::optional<std::string>("c"));
      CHECK(json.param == std::optional<std::string>("p"));
      CHECK(json.attempts == 1);
      CHECK_FALSE(json.request_id.empty());
      CHECK_THAT(json.upstream_request_id, Catch::StartsWith("sim-"));

      Error html = fails(f, client, respond(status, "<html><body><h1>Oops</h1></body></html>", "text/html"));
      CHECK(html.kind() == kind);
      CHECK(html.http_status == status);
      REQUIRE(html.body_excerpt);
      CHECK_THAT(*html.body_excerpt, Catch::Contains("<h1>Oops</h1>"));

      Error empty = fails(f, client, respond(status, "", ""));
      CHECK(empty.kind() == kind);
      CHECK_THAT(empty.message(), Catch::Contains("empty body"));
    }
  }
}

TEST_CASE("recorded error responses keep the upstream's fields through HTTP") {
  SimFixture f;
  auto client = f.client();
  int played = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "raw") continue;
    DYNAMIC_SECTION(sc.name) {
      sim::Fault replay = respond(sc.status, fixtures::read_file(fixtures::dir() + "/" + sc.file), "");
      replay.headers = sc.headers;
      Error e = fails(f, client, replay);
      CHECK(e.http_status == sc.status);
      simdjson::dom::parser p;
      simdjson::dom::element expect = p.parse(sc.expect_json);
      CHECK(e.message() == std::string_view(expect["error"]["message"]));
      double secs = 0;
      if (expect["retry_after_s"].get(secs) == simdjson::SUCCESS) {
        REQUIRE(e.retry_after);
        CHECK(e.retry_after->count() == static_cast<long>(secs * 1000));
      } else {
        CHECK_FALSE(e.retry_after);
      }
      for (const auto& [k, v] : sc.headers)
        if (k == "x-request-id") CHECK(e.upstream_request_id == v);
    }
    ++played;
  }
  CHECK(played == 9);
}

TEST_CASE("an error object inside a 200 body is a failed call") {
  SimFixture f;
  Error e = fails(f, f.client(),
                  respond(200, fixtures::read_file(fixtures::dir() + "/nonstream/openrouter-error-in-200.json")));
  CHECK(e.kind() == ErrorKind::rate_limited);
  CHECK(e.http_status == 200);
  CHECK(e.message() == "Provider returned error");
}

TEST_CASE("timeouts are typed and bounded") {
  SimFixture f;
  auto opts = f.options();
  opts.timeout = 300ms;
  TaotokenClient client(opts);
  sim::Fault slow;
  slow.delay = 5s;
  f.sim.push_fault(slow);
  const auto start = std::chrono::steady_clock::now();
  auto r = client.chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::timeout);
  CHECK(std::chrono::steady_clock::now() - start < 4s);  // a hang would take 5 s

  SECTION("a per-call timeout overrides the client's") {
    auto long_opts = f.options();
    long_opts.timeout = 60s;
    f.sim.push_fault(slow);
    RequestOptions ro;
    ro.timeout = 200ms;
    auto r2 = TaotokenClient(long_opts).chat(SimFixture::ask("x"), ro);
    REQUIRE_FALSE(r2.ok());
    CHECK(r2.error().kind() == ErrorKind::timeout);
  }
}

TEST_CASE("connection refused is a connection error") {
  int port = 0;
  {
    sim::Simulator closed;
    closed.start();
    port = closed.port();
  }  // stopped: nothing listens there now
  ClientOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  std::vector<std::chrono::milliseconds> waits;
  o.sleep_for = [&](std::chrono::milliseconds d) { waits.push_back(d); };
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::connection);
  CHECK(r.error().attempts == 3);  // the default policy retried twice
  CHECK(r.error().attempt_log.size() == 3);
  CHECK(waits.size() == 2);
  CHECK(r.error().http_status == 0);
}

TEST_CASE("a body cut short is a connection error, never a parsed prefix") {
  SimFixture f;
  auto client = f.client();
  SECTION("closed (FIN) before the announced length") {
    sim::Fault cut;
    cut.close_after_bytes = 40;
    Error e = fails(f, client, cut);
    CHECK(e.kind() == ErrorKind::connection);
    CHECK(e.http_status == 0);
  }
  SECTION("reset (RST) mid-body") {
    sim::Fault reset;
    reset.reset_after_bytes = 40;
    CHECK(fails(f, client, reset).kind() == ErrorKind::connection);
  }
  SECTION("closed without any response") {
    sim::Fault drop;
    drop.drop = true;
    CHECK(fails(f, client, drop).kind() == ErrorKind::connection);
  }
  SECTION("a complete JSON prefix of a chunked body") {
    // The cut falls right after a complete "{}" chunk: only the transport can tell.
    sim::Fault cut = respond(200, "{}" + std::string(100, ' '));
    cut.chunked = true;
    cut.close_after_bytes = 9;
    CHECK(fails(f, client, cut).kind() == ErrorKind::connection);
  }
  // The client recovers on the next call.
  CHECK(client.chat(SimFixture::ask("after")).ok());
}

TEST_CASE("oversized responses are an error, not unbounded memory") {
  SimFixture f;
  auto opts = f.options();
  opts.max_response_bytes = 64 * 1024;
  TaotokenClient client(opts);
  const std::string big = R"({"id":"x","choices":[],"pad":")" + std::string(200 * 1024, 'a') + "\"}";
  SECTION("with Content-Length") {
    Error e = fails(f, client, respond(200, big));
    CHECK(e.kind() == ErrorKind::bad_response);
    CHECK_THAT(e.message(), Catch::Contains("65536"));
  }
  SECTION("chunked, length unknown in advance") {
    sim::Fault chunked = respond(200, big);
    chunked.chunked = true;
    Error e = fails(f, client, chunked);
    CHECK(e.kind() == ErrorKind::bad_response);
    CHECK_THAT(e.message(), Catch::Contains("max_response_bytes"));
  }
  SECTION("an error body counts too") {
    CHECK(fails(f, client, respond(500, big)).kind() == ErrorKind::bad_response);
  }
  CHECK(client.chat(SimFixture::ask("small")).ok());
}

TEST_CASE("malformed JSON and invalid UTF-8 from upstream are bad_response") {
  SimFixture f;
  auto client = f.client();
  CHECK(fails(f, client, respond(200, "{\"id\": \"x\", \"choices\": [")).kind() == ErrorKind::bad_response);
  CHECK(fails(f, client, respond(200, "{\"id\":\"\xFF\xFE\",\"choices\":[]}")).kind() == ErrorKind::bad_response);
  CHECK(fails(f, client, respond(200, "<html>gateway</html>", "text/html")).kind() == ErrorKind::bad_response);
  CHECK(fails(f, client, respond(200, "")).kind() == ErrorKind::bad_response);
}

TEST_CASE("CR/LF in headers is rejected before anything is sent") {
  SimFixture f;
  auto opts = f.options();
  opts.default_headers = {{"X-Evil", "a\r\nX-Injected: 1"}};
  auto created = TaotokenClient::create(opts);
  REQUIRE_FALSE(created.ok());
  CHECK(created.error().kind() == ErrorKind::invalid_argument);
  CHECK_THROWS_AS(TaotokenClient(opts), Error);

  RequestOptions ro;
  ro.headers = {{"X-Evil", "a\nb"}};
  auto r = f.client().chat(SimFixture::ask("x"), ro);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::invalid_argument);
  CHECK(r.error().attempts == 0);
  RequestOptions bad_name;
  bad_name.headers = {{"X Bad:", "v"}};
  CHECK(f.client().chat(SimFixture::ask("x"), bad_name).error().kind() == ErrorKind::invalid_argument);
  RequestOptions bad_id;
  bad_id.request_id = "id with\r\nnewline";
  CHECK(f.client().chat(SimFixture::ask("x"), bad_id).error().kind() == ErrorKind::invalid_argument);
  CHECK(f.sim.request_count() == 0);
}

TEST_CASE("invalid options are reported at construction") {
  ClientOptions o;
  o.base_url = "ftp://example.com";
  CHECK(TaotokenClient::create(o).error().kind() == ErrorKind::invalid_argument);
  o.base_url = "http://exa mple.com";
  CHECK_FALSE(TaotokenClient::create(o).ok());
  o.base_url = "http://127.0.0.1:1/v1";
  o.api_key = "key\nwith newline";
  CHECK_FALSE(TaotokenClient::create(o).ok());
}

TEST_CASE("the API key never appears in an error") {
  SimFixture f;
  const std::string key = "sk-test-secret-key-123";
  Error e = fails(f, f.client(),
                  respond(401, R"({"error":{"message":"Incorrect API key provided: sk-test-secret-key-123.","type":"invalid_request_error"}})"));
  CHECK(e.kind() == ErrorKind::authentication);
  CHECK(e.message() == "Incorrect API key provided: [REDACTED].");
  CHECK(e.describe().find(key) == std::string::npos);
  CHECK(std::string(e.what()).find(key) == std::string::npos);
  Error html = fails(f, f.client(), respond(403, "<p>Bearer sk-test-secret-key-123 is not allowed</p>", "text/html"));
  REQUIRE(html.body_excerpt);
  CHECK(html.body_excerpt->find(key) == std::string::npos);
  CHECK(html.describe().find(key) == std::string::npos);
}

TEST_CASE("a non-loopback base URL without an API key is a clear error") {
  ClientOptions o;
  o.base_url = "https://api.example.invalid/v1";
  o.api_key.clear();
  ::unsetenv("TAOTOKEN_API_KEY");
  auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::invalid_argument);
  CHECK_THAT(r.error().message(), Catch::Contains("TAOTOKEN_API_KEY"));
  CHECK(r.error().attempts == 0);

  SimFixture f;  // loopback: allowed without a key, and no Authorization is sent
  auto lo = f.options();
  lo.api_key.clear();
  REQUIRE(TaotokenClient(lo).chat(SimFixture::ask("x")).ok());
  CHECK(f.sim.requests().at(0).header("authorization") == nullptr);
}

TEST_CASE("headers that frame the message cannot be set by callers (no request smuggling)") {
  SimFixture f;
  auto client = f.client();
  for (const char* name : {"Content-Length", "transfer-encoding", "Host", "Connection", "Expect", "TE", "Upgrade"}) {
    INFO(name);
    RequestOptions ro;
    ro.headers = {{name, "10"}};
    auto r = client.chat(SimFixture::ask("x"), ro);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::invalid_argument);
    auto opts = f.options();
    opts.default_headers = {{name, "10"}};
    CHECK_FALSE(TaotokenClient::create(opts).ok());
  }
  CHECK(f.sim.request_count() == 0);
}

TEST_CASE("a caller's Authorization or Accept replaces the client's instead of doubling it") {
  SimFixture f;
  RequestOptions ro;
  ro.headers = {{"authorization", "Bearer sk-per-tenant"}, {"Accept", "application/json; q=1"}};
  REQUIRE(f.client().chat(SimFixture::ask("x"), ro).ok());
  auto q = f.sim.requests().at(0);
  int auth = 0, accept = 0;
  for (const auto& [k, v] : q.headers) {
    if (k == "authorization" || k == "Authorization") ++auth;
    if (k == "Accept" || k == "accept") ++accept;
  }
  CHECK(auth == 1);
  CHECK(accept == 1);
  CHECK(*q.header("authorization") == "Bearer sk-per-tenant");
}

TEST_CASE("only real loopback hosts may be used without a key") {
  ::unsetenv("TAOTOKEN_API_KEY");
  for (const char* url : {"http://127.0.0.1.example.invalid/v1", "http://evil.invalid#@127.0.0.1/v1",
                          "http://localhost.example.invalid/v1", "http://128.0.0.1/v1"}) {
    INFO(url);
    ClientOptions o;
    o.base_url = url;
    auto r = TaotokenClient(o).chat(SimFixture::ask("x"));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::invalid_argument);
    CHECK(r.error().attempts == 0);
  }
}

TEST_CASE("the API key is scrubbed from every error field, also when an excerpt cuts it") {
  SimFixture f;
  const std::string key = "sk-test-secret-key-123";
  Error e = fails(f, f.client(),
                  respond(401, R"({"error":{"message":"no","type":"sk-test-secret-key-123","code":"Bearer sk-test-secret-key-123","param":"sk-test-secret-key-123"}})"));
  CHECK(e.describe().find(key) == std::string::npos);
  CHECK(e.type == std::optional<std::string>("[REDACTED]"));
  // Put the key across the 200-byte excerpt cut.
  Error cut = fails(f, f.client(), respond(502, std::string(190, 'x') + " " + key + " tail", "text/plain"));
  REQUIRE(cut.body_excerpt);
  CHECK(cut.body_excerpt->find("sk-test-secr") == std::string::npos);
  CHECK_THAT(*cut.body_excerpt, Catch::Contains("[REDACTED]"));
}

TEST_CASE("a 2xx that is not the expected JSON is a clear bad_response") {
  SimFixture f;
  Error html = fails(f, f.client(), respond(200, "<html><body>Sign in to the Wi-Fi</body></html>", "text/html"));
  CHECK(html.kind() == ErrorKind::bad_response);
  CHECK(html.http_status == 200);
  CHECK_THAT(html.message(), Catch::Contains("text/html"));
  REQUIRE(html.body_excerpt);
  CHECK_THAT(*html.body_excerpt, Catch::Contains("Wi-Fi"));
  // Trailing documents and garbage in fields nobody reads are still malformed.
  CHECK(fails(f, f.client(), respond(200, R"({"id":"a","choices":[]}{"error":{"message":"x"}})")).kind() ==
        ErrorKind::bad_response);
  CHECK(fails(f, f.client(), respond(200, R"({"id":"a","choices":[],"zzz":[1,,2]})")).kind() ==
        ErrorKind::bad_response);
}

TEST_CASE("an error inside a 200 body keeps the server's Retry-After") {
  SimFixture f;
  sim::Fault in_body = respond(200, fixtures::read_file(fixtures::dir() + "/nonstream/openrouter-error-in-200.json"));
  in_body.headers = {{"Retry-After", "2"}};
  Error e = fails(f, f.client(), in_body);
  CHECK(e.kind() == ErrorKind::rate_limited);
  CHECK(e.retry_after == std::chrono::milliseconds(2000));
}

TEST_CASE("list_models() reports an error object inside a 200") {
  SimFixture f;
  sim::Fault in_body = respond(200, R"({"error":{"message":"forbidden here","code":403}})");
  in_body.path = "/v1/models";
  f.sim.push_fault(in_body);
  auto r = f.client().list_models();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::permission_denied);
  CHECK(r.error().message() == "forbidden here");
}

TEST_CASE("absurd numbers from upstream do not overflow") {
  SimFixture f;
  Error e = fails(f, f.client(), respond(429, R"({"error":{"message":"slow"}})"));
  (void)e;
  sim::Fault huge = respond(429, R"({"error":{"message":"slow"}})");
  huge.headers = {{"retry-after-ms", "1e300"}};
  Error h = fails(f, f.client(), huge);
  REQUIRE(h.retry_after);
  CHECK(h.retry_after->count() == 86400 * 1000);
  CHECK(fails(f, f.client(), respond(200, R"({"id":"a","choices":[],"usage":{"prompt_tokens":1e300}})")).kind() ==
        ErrorKind::bad_response);
}

TEST_CASE("a per-call Authorization key is scrubbed from errors too") {
  SimFixture f;
  RequestOptions ro;
  ro.headers = {{"Authorization", "Bearer sk-tenant-key-987654"}};
  f.sim.push_fault(respond(401, R"({"error":{"message":"bad key sk-tenant-key-987654","code":"sk-tenant-key-987654"}})"));
  auto r = f.client().chat(SimFixture::ask("x"), ro);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().describe().find("sk-tenant-key-987654") == std::string::npos);
  CHECK(r.error().message() == "bad key [REDACTED]");
}
