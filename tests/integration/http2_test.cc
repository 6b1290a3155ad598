// HTTP/2 over TLS: against an upstream that offers it (nginx with
// `listen ... ssl http2` and a self-signed certificate given as ca_bundle),
// concurrent async calls and a sync call multiplex on one connection.
// nginx (Debian's nginx-light, installed by ./dev) runs on a free loopback
// port under `timeout`, and is stopped by the test.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <vector>

#include "local_server.h"
#include "taotoken/taotoken.h"

namespace {

namespace fs = std::filesystem;

std::string nginx_binary() {
  for (const char* p : {"/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"})
    if (::access(p, X_OK) == 0) return p;
  return "nginx";
}

constexpr const char* kCompletion =
    R"({"id":"chatcmpl-h2","object":"chat.completion","created":1,"model":"h2-model","choices":[{"index":0,)"
    R"("message":{"role":"assistant","content":"over h2"},"finish_reason":"stop"}],)"
    R"("usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}})";

// nginx with TLS and HTTP/2; its access log has one "<connection> <protocol>"
// line per request.
struct H2Server : test_support::ServerProcess {
  H2Server() {
    REQUIRE(prepare("h2"));
    fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
    const std::string d = dir.string();
    std::ofstream(dir / "nginx.conf")
        << "worker_processes 1;\ndaemon off;\npid " << d << "/nginx.pid;\nerror_log " << d << "/error.log warn;\n"
        << "events { worker_connections 256; }\n"
        << "http {\n  log_format h2 '$connection $server_protocol';\n  access_log " << d << "/access.log h2;\n"
        << "  client_body_temp_path " << d << "/cb;\n  proxy_temp_path " << d << "/p;\n  fastcgi_temp_path " << d
        << "/f;\n  uwsgi_temp_path " << d << "/u;\n  scgi_temp_path " << d << "/s;\n"
        << "  server {\n    listen 127.0.0.1:" << port << " ssl http2;\n    ssl_certificate " << d
        << "/cert.pem;\n    ssl_certificate_key " << d << "/key.pem;\n"
        << "    location = /v1/chat/completions { default_type application/json; return 200 '" << kCompletion
        << "'; }\n  }\n}\n";
    const std::string script = "exec timeout 120 " + nginx_binary() + " -p '" + d + "' -c '" + d +
                               "/nginx.conf' -e '" + d + "/error.log' >/dev/null 2>&1";
    const bool started = start(script);
    INFO("nginx did not start; is nginx-light installed (./dev installs it)? " << error_log());
    REQUIRE(started);
  }
  std::string error_log() const {
    std::ifstream in(dir / "error.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // (connection, protocol) per request, in order.
  std::vector<std::pair<std::string, std::string>> log() const {
    std::vector<std::pair<std::string, std::string>> out;
    std::ifstream in(dir / "access.log");
    std::string conn, proto;
    while (in >> conn >> proto) out.emplace_back(conn, proto);
    return out;
  }
};

}  // namespace

TEST_CASE("HTTP/2 over TLS: concurrent calls multiplex on one connection, sync calls share it") {
  H2Server server;
  taotoken::ClientOptions o;
  o.base_url = server.url();
  o.api_key = "sk-h2-test";
  o.ca_bundle = (server.dir / "cert.pem").string();
  o.retry_policy = taotoken::RetryPolicy::none();
  taotoken::TaotokenClient client(o);
  taotoken::ChatRequest req;
  req.messages.push_back(taotoken::Message::user("hello"));

  std::vector<std::future<taotoken::Result<taotoken::ChatCompletion>>> calls;
  for (int i = 0; i < 20; ++i) calls.push_back(client.chat_async(req));
  for (auto& c : calls) {
    auto r = c.get();
    INFO((r ? std::string() : r.error().describe()));
    REQUIRE(r.ok());
    CHECK(r->text() == "over h2");
  }
  auto sync = client.chat(req);
  REQUIRE(sync.ok());

  // nginx writes a request's log line just after sending its response:
  // wait (bounded) for all 21.
  auto lines = server.log();
  for (int i = 0; i < 400 && lines.size() < 21; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    lines = server.log();
  }
  REQUIRE(lines.size() == 21);
  std::set<std::string> connections;
  for (const auto& [conn, proto] : lines) {
    CHECK(proto == "HTTP/2.0");
    connections.insert(conn);
  }
  CHECK(connections.size() == 1);
}
