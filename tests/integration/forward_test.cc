// forward(): a proxy's pass-through, byte for byte.
#include <catch2/catch.hpp>

#include "sim_fixture.h"

using namespace taotoken;

TEST_CASE("forward() sends the body as is and returns the upstream's bytes unchanged") {
  SimFixture f;
  auto client = f.client();
  const std::string body = R"({"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \u00e9"}],"x_vendor":{"a":[1,2.50]}})";
  auto r = client.forward(body);
  REQUIRE(r.ok());
  CHECK(r->status == 200);
  CHECK(f.sim.requests().at(0).body == body);
  CHECK_THAT(r->body, Catch::Contains("\"content\":\"Echo: hi \xC3\xA9\""));
  CHECK(r->header("content-type"));
  CHECK(r->upstream_request_id == "sim-1");
  CHECK_FALSE(r->request_id.empty());

  SECTION("error statuses and odd bodies are passed through, not interpreted") {
    sim::Fault odd;
    odd.status = 503;
    odd.replace_body = true;
    odd.body = std::string("not json \x00\xFF\r\n bytes", 20);
    odd.content_type = "application/octet-stream";
    odd.headers = {{"Retry-After", "7"}, {"X-Custom", "kept"}};
    f.sim.push_fault(odd);
    auto e = client.forward(body);
    REQUIRE(e.ok());
    CHECK(e->status == 503);
    CHECK(e->body == odd.body);
    REQUIRE(e->header("retry-after"));
    CHECK(*e->header("Retry-After") == "7");
    CHECK(*e->header("x-custom") == "kept");
    CHECK(*e->header("content-length") == "20");
  }
  SECTION("no compression is requested, so bytes stay as the upstream sent them") {
    sim::Fault gz;
    gz.gzip = true;
    f.sim.push_fault(gz);
    auto plain = client.forward(body);
    REQUIRE(plain.ok());
    CHECK(plain->header("content-encoding") == nullptr);
    CHECK(f.sim.requests().back().header("accept-encoding") == nullptr);
  }
}

TEST_CASE("forward() fills in the default model only when the body has none") {
  SimFixture f;
  auto client = f.client();
  REQUIRE(client.forward(R"({"messages":[{"role":"user","content":"a"}]})").ok());
  CHECK(f.sim.requests().at(0).body == R"({"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"a"}]})");
}

TEST_CASE("forward() rejects bodies that are not a JSON object before sending") {
  SimFixture f;
  auto client = f.client();
  for (const char* bad : {"", "{", "[]", "{\"a\":1}{}", "\"str\""}) {
    INFO(bad);
    auto r = client.forward(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::invalid_argument);
  }
  CHECK(f.sim.request_count() == 0);
}

TEST_CASE("forward() reports transport failures as errors") {
  SimFixture f;
  sim::Fault cut;
  cut.close_after_bytes = 10;
  f.sim.push_fault(cut);
  auto r = f.client().forward(R"({"messages":[]})");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::connection);
}
