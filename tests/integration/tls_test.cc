// TLS verification is always on: a server with a self-signed certificate is
// refused, and accepted once its CA is given in ClientOptions::ca_bundle.
// The server is `openssl s_server -WWW` on 127.0.0.1, stopped by the test
// (and by `timeout` should the test die).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "local_server.h"
#include "taotoken/taotoken.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;


struct TlsServer {
  TlsServer() {
    dir = fs::temp_directory_path() / ("taotoken-tls-" + std::to_string(::getpid()));
    fs::create_directories(dir / "v1");
    std::ofstream(dir / "v1" / "models") << R"({"object":"list","data":[{"id":"tls-model","object":"model","created":1,"owned_by":"me"}]})";
    REQUIRE(test_support::make_self_signed_cert(dir));
    port = test_support::free_port();
    const std::string script = "cd '" + dir.string() + "' && exec timeout 120 openssl s_server -quiet -WWW -accept 127.0.0.1:" +
                               std::to_string(port) + " -cert cert.pem -key key.pem >/dev/null 2>&1";
    const char* argv[] = {"/bin/sh", "-c", script.c_str(), nullptr};
    REQUIRE(::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) == 0);
    for (int i = 0; i < 200 && !test_support::can_connect(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    REQUIRE(test_support::can_connect(port));
  }
  ~TlsServer() {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port) + "/v1"; }

  fs::path dir;
  int port = 0;
  pid_t pid = 0;
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
