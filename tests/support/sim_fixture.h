// A simulator started on 127.0.0.1:0 for one test, and a client pointed at it.
#ifndef TAOTOKEN_TESTS_SUPPORT_SIM_FIXTURE_H
#define TAOTOKEN_TESTS_SUPPORT_SIM_FIXTURE_H

#include <chrono>

#include "taotoken/simulator.h"
#include "taotoken/taotoken.h"

struct SimFixture {
  explicit SimFixture(taotoken::sim::SimulatorOptions so = {}) : sim(so) { sim.start(); }

  // Retries are off unless a test asks for them, so that tests of one
  // failure see exactly one attempt; tests/integration/retry_test.cc
  // exercises the policies.
  taotoken::ClientOptions options(bool retries = false) const {
    taotoken::ClientOptions o;
    o.base_url = sim.base_url();
    o.api_key = "sk-test-secret-key-123";
    o.send_request_id = true;  // lets tests match the simulator's records to results
    if (!retries) o.retry_policy = taotoken::RetryPolicy::none();
    return o;
  }
  taotoken::TaotokenClient client() const { return taotoken::TaotokenClient(options()); }

  static taotoken::ChatRequest ask(std::string text) {
    taotoken::ChatRequest r;
    r.messages.push_back(taotoken::Message::user(std::move(text)));
    return r;
  }

  // The key-leak scenario: the upstream echoes the API key in a 401 error
  // body, then a chat, a stream and a forward are made (results ignored):
  // whatever the client writes afterwards must not contain the key.
  void calls_with_key_echo(const taotoken::TaotokenClient& client) {
    taotoken::sim::Fault echo;
    echo.status = 401;
    echo.replace_body = true;
    echo.body = R"({"error":{"message":"Bad key sk-test-secret-key-123","code":"sk-test-secret-key-123"}})";
    sim.push_fault(echo);
    (void)client.chat(ask("x"));
    (void)client.chat_stream(ask("y"), nullptr);
    (void)client.forward(R"({"messages":[{"role":"user","content":"z"}]})");
  }

  // The next response is a stream that stops after its first few chunks
  // (400 bytes) and then stays silent for `stall`: a call that must be
  // cancelled, not waited for. Ask it something long enough (seven words).
  void stall_next_stream(std::chrono::milliseconds stall = std::chrono::seconds(30)) {
    taotoken::sim::Fault f;
    f.stall_after_bytes = 400;
    f.stall = stall;
    sim.push_fault(f);
  }

  taotoken::sim::Simulator sim;
};

#endif
