// Package test consumer: built against an installed taotoken (via
// find_package or pkg-config). Exits non-zero on any mismatch.
#include <taotoken/taotoken.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#ifndef CONSUMER_EXPECTED_VERSION
#define CONSUMER_EXPECTED_VERSION "0.1.0"
#endif

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() try {
  check(std::string(TAOTOKEN_VERSION_STRING) == CONSUMER_EXPECTED_VERSION,
        "TAOTOKEN_VERSION_STRING == " CONSUMER_EXPECTED_VERSION);
  check(taotoken::to_string(taotoken::ErrorKind::rate_limited) == "rate_limited",
        "to_string(ErrorKind::rate_limited) == \"rate_limited\"");

  // Nothing listens on the discard port of the loopback interface: the call
  // must come back as a failed Result of kind `connection`, not throw.
  taotoken::ClientOptions options;
  options.base_url = "http://127.0.0.1:9/v1";
  options.api_key = "x";
  options.connect_timeout = std::chrono::seconds(5);
  options.timeout = std::chrono::seconds(10);
  taotoken::TaotokenClient client(options);
  check(client.base_url() == "http://127.0.0.1:9/v1", "client.base_url()");

  taotoken::ChatRequest request;
  request.messages.push_back(taotoken::Message::user("ping"));
  auto result = client.chat(request);
  check(!result.ok(), "chat() against a closed port fails");
  if (!result.ok()) {
    std::printf("chat() failed as expected: %s\n", result.error().describe().c_str());
    check(result.error().kind() == taotoken::ErrorKind::connection, "error kind is connection");
  }

  if (failures != 0) return 1;
  std::puts("OK");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
  return 1;
}
