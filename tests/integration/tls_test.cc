// TLS verification is always on: a server with a self-signed certificate is
// refused, and accepted once its CA is given in ClientOptions::ca_bundle.
// The server is `openssl s_server -WWW` on 127.0.0.1, stopped by the test
// (and by `timeout` should the test die).
#include <catch2/catch.hpp>
#include <fstream>

#include "local_server.h"
#include "taotoken/taotoken.h"

namespace {

namespace fs = std::filesystem;

struct TlsServer : test_support::ServerProcess {
  TlsServer() {
    REQUIRE(prepare("tls"));
    fs::create_directories(dir / "v1");
    std::ofstream(dir / "v1" / "models") << R"({"object":"list","data":[{"id":"tls-model","object":"model","created":1,"owned_by":"me"}]})";
    REQUIRE(start("cd '" + dir.string() + "' && exec timeout 120 openssl s_server -quiet -WWW -accept 127.0.0.1:" +
                  std::to_string(port) + " -cert cert.pem -key key.pem >/dev/null 2>&1"));
  }
};

}  // namespace

TEST_CASE("TLS: an untrusted certificate is refused; the configured CA bundle is used") {
  TlsServer server;
  taotoken::ClientOptions o;
  o.base_url = server.url();
  o.api_key = "sk-tls-test";

  auto refused = taotoken::TaotokenClient(o).list_models();
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().kind() == taotoken::ErrorKind::connection);
  CHECK_THAT(refused.error().message(), Catch::Contains("certificate"));

  o.ca_bundle = (server.dir / "cert.pem").string();
  auto trusted = taotoken::TaotokenClient(o).list_models();
  REQUIRE(trusted.ok());
  REQUIRE(trusted->size() == 1);
  CHECK(trusted->at(0).id == "tls-model");
}
