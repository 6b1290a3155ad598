// A simulator started on 127.0.0.1:0 for one test, and a client pointed at it.
#ifndef TAOTOKEN_TESTS_SUPPORT_SIM_FIXTURE_H
#define TAOTOKEN_TESTS_SUPPORT_SIM_FIXTURE_H

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

  taotoken::sim::Simulator sim;
};

#endif
