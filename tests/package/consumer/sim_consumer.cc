// Package test consumer of the sim component (taotoken::sim): starts the
// simulator and sends it one chat request. Exits non-zero on any mismatch.
#include <taotoken/simulator.h>
#include <taotoken/taotoken.h>

#include <cstdio>
#include <exception>
#include <string>

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
  taotoken::sim::Simulator simulator;
  simulator.start();

  taotoken::ClientOptions options;
  options.base_url = simulator.base_url();
  options.api_key = "x";
  taotoken::TaotokenClient client(options);

  taotoken::ChatRequest request;
  request.messages.push_back(taotoken::Message::user("hello"));
  auto result = client.chat(request);
  check(result.ok(), "chat() against the simulator succeeds");
  if (result.ok()) {
    check(result->text() == "Echo: hello", "reply is \"Echo: hello\"");
    check(result->http_status == 200, "HTTP status 200");
  } else {
    std::fprintf(stderr, "  error: %s\n", result.error().describe().c_str());
  }
  check(simulator.request_count() == 1, "the simulator received one request");
  simulator.stop();

  if (failures != 0) return 1;
  std::puts("OK");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
  return 1;
}
