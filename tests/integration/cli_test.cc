// The taotoken CLI as a user runs it: a separate process against the simulator.
#include <simdjson.h>
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "fixtures.h"
#include "sim_fixture.h"

using namespace taotoken;

namespace {

struct Run {
  int status;
  std::string out;
};

Run run(const std::string& args, const std::string& env = "TAOTOKEN_API_KEY=sk-cli-key") {
  const std::string cmd = "env -u TAOTOKEN_BASE_URL -u TAOTOKEN_API_KEY " + env + " " TAOTOKEN_CLI_PATH " " + args + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace

TEST_CASE("taotoken chat --json prints one JSON object describing the success") {
  SimFixture f;
  Run r = run("chat --json --base-url " + f.sim.base_url() + " --system 'be nice' --temperature 0.3 --max-tokens 20 'hello cli'");
  REQUIRE(r.status == 0);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(r.out);
  CHECK(bool(j["ok"]));
  CHECK(std::string_view(j["content"]) == "Echo: hello cli");
  CHECK(j["refusal"].is_null());
  CHECK(std::string_view(j["finish_reason"]) == "stop");
  CHECK(simdjson::dom::array(j["tool_calls"]).size() == 0);
  CHECK(simdjson::dom::array(j["choices"]).size() == 1);
  CHECK(int64_t(j["usage"]["prompt_tokens"]) > 0);
  CHECK(int64_t(j["usage"]["cached_tokens"]) == 0);
  CHECK(std::string_view(j["upstream_request_id"]) == "sim-1");
  CHECK(int64_t(j["attempts"]) == 1);
  CHECK(int64_t(j["latency_ms"]) >= 0);
  CHECK_THAT(std::string(std::string_view(j["request_id"])), Catch::StartsWith("req_"));
  const auto body = f.sim.requests().at(0).body;
  CHECK_THAT(body, Catch::Contains(R"("role":"system","content":"be nice")"));
  CHECK_THAT(body, Catch::Contains(R"("temperature":0.3,"max_tokens":20)"));
  CHECK(*f.sim.requests().at(0).header("authorization") == "Bearer sk-cli-key");
}

TEST_CASE("taotoken chat keeps null as null and reports tool calls") {
  SimFixture f;
  sim::Fault refusal;
  refusal.replace_body = true;
  refusal.body = fixtures::read_file(fixtures::dir() + "/nonstream/openai-py-refusal.json");
  f.sim.push_fault(refusal);
  Run r = run("chat --json --base-url " + f.sim.base_url() + " x");
  REQUIRE(r.status == 0);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(r.out);
  CHECK(j["content"].is_null());
  CHECK(std::string_view(j["refusal"]) == "I'm very sorry, but I can't assist with that.");
  CHECK(j["usage"]["cached_tokens"].is_null());  // not reported: unknown, not 0

  sim::Fault tools = refusal;
  tools.body = fixtures::read_file(fixtures::dir() + "/nonstream/openai-py-two-tool-calls.json");
  f.sim.push_fault(tools);
  Run t = run("chat --json --base-url " + f.sim.base_url() + " x");
  simdjson::dom::element tj = p.parse(t.out);
  CHECK(std::string_view(tj["tool_calls"].at(1)["name"]) == "get_stock_price");
  CHECK(std::string_view(tj["finish_reason"]) == "tool_calls");
}

TEST_CASE("taotoken chat --json describes failures, with distinct exit statuses") {
  SimFixture f;
  sim::Fault limited;
  limited.status = 429;
  limited.replace_body = true;
  limited.body = R"({"error":{"message":"Rate limit exceeded","type":"rate_limit_error","code":"rate_limit_exceeded","param":null}})";
  limited.headers = {{"retry-after-ms", "1500"}};
  f.sim.push_fault(limited);
  Run r = run("chat --json --max-retries 0 --base-url " + f.sim.base_url() + " x");
  CHECK(r.status == 5);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(r.out);
  CHECK_FALSE(bool(j["ok"]));
  CHECK(std::string_view(j["error"]["kind"]) == "rate_limited");
  CHECK(int64_t(j["error"]["http_status"]) == 429);
  CHECK(std::string_view(j["error"]["code"]) == "rate_limit_exceeded");
  CHECK(j["error"]["param"].is_null());
  CHECK(int64_t(j["error"]["retry_after_ms"]) == 1500);
  CHECK(int64_t(j["attempts"]) == 1);
  CHECK(r.out.find("sk-cli-key") == std::string::npos);

  sim::Fault server = limited;
  server.status = 500;
  server.headers.clear();
  f.sim.push_fault(server);
  CHECK(run("chat --json --max-retries 0 --base-url " + f.sim.base_url() + " x").status == 7);
  sim::Fault unauthorized;
  unauthorized.status = 401;
  f.sim.push_fault(unauthorized);
  CHECK(run("chat --base-url " + f.sim.base_url() + " x").status == 4);
  CHECK(run("chat --json --max-retries 0 --base-url http://127.0.0.1:1/v1 x").status == 8);
  CHECK(f.sim.request_count() == 3);  // 401 is never retried
}

TEST_CASE("taotoken chat retries by default and reports the attempts") {
  SimFixture f;
  sim::Fault limited;
  limited.status = 429;
  limited.replace_body = true;
  limited.body = R"({"error":{"message":"Rate limit exceeded","type":"rate_limit_error","code":null,"param":null}})";
  limited.headers = {{"retry-after-ms", "20"}};
  f.sim.push_fault(limited, 2);
  Run r = run("chat --json --base-url " + f.sim.base_url() + " again");
  REQUIRE(r.status == 0);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(r.out);
  CHECK(int64_t(j["attempts"]) == 3);
  CHECK(std::string_view(j["content"]) == "Echo: again");

  f.sim.push_fault(limited, 3);
  Run gave_up = run("chat --json --max-retries 1 --base-url " + f.sim.base_url() + " x");
  CHECK(gave_up.status == 5);
  simdjson::dom::element g = p.parse(gave_up.out);
  CHECK(int64_t(g["attempts"]) == 2);
  CHECK(int64_t(g["error"]["retry_after_ms"]) == 20);
}

TEST_CASE("taotoken chat names TAOTOKEN_API_KEY when the key is missing") {
  Run r = run("chat --json --base-url https://api.example.invalid/v1 x", "");
  CHECK(r.status == 3);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(r.out);
  CHECK(std::string_view(j["error"]["kind"]) == "invalid_argument");
  CHECK_THAT(std::string(std::string_view(j["error"]["message"])), Catch::Contains("TAOTOKEN_API_KEY"));
}

TEST_CASE("taotoken chat reads the prompt from stdin and prints text") {
  SimFixture f;
  Run r = run("chat --base-url " + f.sim.base_url() + " - < /dev/null");
  CHECK(r.status == 0);
  CHECK(r.out == "Echo: \n");
  const std::string file = "/tmp/taotoken-cli-test-" + std::to_string(::getpid());
  { std::ofstream(file) << "from stdin"; }
  Run piped = run("chat --base-url " + f.sim.base_url() + " - < " + file);
  std::remove(file.c_str());
  CHECK(piped.status == 0);
  CHECK(piped.out == "Echo: from stdin\n");
  Run echo = run("chat --base-url " + f.sim.base_url() + " 'plain text'");
  CHECK(echo.status == 0);
  CHECK(echo.out == "Echo: plain text\n");
}

TEST_CASE("taotoken rejects bad usage with status 2") {
  CHECK(run("").status == 2);
  CHECK(run("chat").status == 2);
  CHECK(run("chat --temperature hot x").status == 2);
  CHECK(run("chat --bogus x").status == 2);
  CHECK(run("--version").out == "taotoken " TAOTOKEN_VERSION_STRING "\n");
}

TEST_CASE("taotoken chat --stream prints tokens as they arrive; --json adds stream and ttft_ms") {
  SimFixture f;
  Run text = run("chat --stream --base-url " + f.sim.base_url() + " 'streamed words'");
  CHECK(text.status == 0);
  CHECK(text.out == "Echo: streamed words\n");
  Run json = run("chat --stream --json --idle-timeout 5 --base-url " + f.sim.base_url() + " 'streamed words'");
  REQUIRE(json.status == 0);
  simdjson::dom::parser p;
  simdjson::dom::element j = p.parse(json.out);
  CHECK(bool(j["stream"]));
  CHECK(int64_t(j["ttft_ms"]) >= 0);
  CHECK(std::string_view(j["content"]) == "Echo: streamed words");
  CHECK(int64_t(j["usage"]["completion_tokens"]) == 3);
  sim::Fault cut;
  cut.close_after_bytes = 500;
  f.sim.push_fault(cut);
  Run broken = run("chat --stream --json --base-url " + f.sim.base_url() + " 'several words so the stream is long enough'");
  CHECK(broken.status == 8);
  simdjson::dom::element b = p.parse(broken.out);
  CHECK(std::string_view(b["error"]["kind"]) == "stream_truncated");
}

TEST_CASE("taotoken chat --record, then usage and logs read it back") {
  SimFixture f;
  const std::string dir = "/tmp/taotoken-cli-usage-" + std::to_string(::getpid());
  std::remove((dir + ".db").c_str());
  const std::string db = "sqlite:" + dir + ".db";
  for (int i = 0; i < 3; ++i)
    REQUIRE(run("chat --record " + db + " --base-url " + f.sim.base_url() + " 'one two'").status == 0);
  REQUIRE(run("chat --record " + db + " --model gpt-4o-mini --base-url " + f.sim.base_url() + " x").status == 0);
  sim::Fault busy;
  busy.status = 500;
  f.sim.push_fault(busy, 3);
  CHECK(run("chat --record " + db + " --base-url " + f.sim.base_url() + " x").status == 7);

  Run usage = run("usage --db " + db + " --format json");
  REQUIRE(usage.status == 0);
  simdjson::dom::parser p;
  simdjson::dom::element u = p.parse(usage.out);
  CHECK(int64_t(u["total"]["requests"]) == 5);
  CHECK(int64_t(u["total"]["errors"]) == 1);
  CHECK(int64_t(u["by_model"]["claude-sonnet-4-6"]["requests"]) == 4);
  CHECK(int64_t(u["by_model"]["gpt-4o-mini"]["completion_tokens"]) == 2);
  CHECK(double(u["total"]["estimated_cost"]) > 0);  // the built-in estimates price these models

  Run csv = run("usage --db " + db + " --by day --format csv --since 1d");
  CHECK_THAT(csv.out, Catch::Contains("TOTAL,5,4,1,0"));
  Run none = run("usage --db " + db + " --format csv --until 2000-01-01");
  CHECK_THAT(none.out, Catch::Contains("TOTAL,0,0,0,0"));

  Run logs = run("logs --db " + db + " --limit 2 --json");
  REQUIRE(logs.status == 0);
  simdjson::dom::element l = p.parse(logs.out);
  REQUIRE(simdjson::dom::array(l).size() == 2);
  CHECK(std::string_view(l.at(0)["status"]) == "error");  // newest first
  CHECK(logs.out.find("sk-cli-key") == std::string::npos);
  CHECK(run("usage --db nosuch:x").status == 3);
  CHECK(run("usage").status == 2);
  std::remove((dir + ".db").c_str());
}
