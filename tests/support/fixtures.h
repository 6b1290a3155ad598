// Test support: the recorded fixtures in tests/fixtures/ (copied from
// ../shared/fixtures) and a checker comparing a decoded completion with a
// scenario's `expect`.
#ifndef TAOTOKEN_TESTS_SUPPORT_FIXTURES_H
#define TAOTOKEN_TESTS_SUPPORT_FIXTURES_H

#include <simdjson.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "taotoken/chat.h"

namespace fixtures {

inline std::string dir() { return TAOTOKEN_FIXTURES_DIR; }

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Scenario {
  std::string name;
  std::string file;
  std::string kind;  // "json", "raw", "sse"
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string expect_json;  // the `expect` object, raw
};

inline std::vector<Scenario> scenarios() {
  static simdjson::dom::parser parser;
  static const std::string text = read_file(dir() + "/manifest.json");
  simdjson::dom::element root = parser.parse(text);
  std::vector<Scenario> out;
  for (simdjson::dom::element s : root["scenarios"].get_array()) {
    Scenario sc;
    sc.name = std::string(std::string_view(s["name"]));
    sc.file = std::string(std::string_view(s["file"]));
    sc.kind = std::string(std::string_view(s["kind"]));
    sc.status = static_cast<int>(int64_t(s["status"]));
    simdjson::dom::object headers;
    if (s["headers"].get_object().get(headers) == simdjson::SUCCESS)
      for (auto kv : headers) {
        std::string v(std::string_view(kv.value));
        if (v == "{{request_id}}") v = "req-fixture-" + sc.name;
        sc.headers.emplace_back(std::string(kv.key), v);
      }
    sc.expect_json = simdjson::minify(s["expect"]);
    out.push_back(std::move(sc));
  }
  return out;
}

inline std::optional<std::string> opt_str(simdjson::dom::element e) {
  if (e.is_null()) return std::nullopt;
  return std::string(std::string_view(e));
}

// Compares with the fixture's expectation. A usage key absent from `expect`
// must be unknown (unset) in the result: "unknown" is not 0.
inline void check_expect(const taotoken::ChatCompletion& c, const std::string& expect_json) {
  simdjson::dom::parser parser;
  simdjson::dom::element e = parser.parse(expect_json);
  CHECK(c.model == std::string_view(e["model"]));
  CHECK(c.id == std::string_view(e["id"]));
  simdjson::dom::array choices = e["choices"];
  REQUIRE(c.choices.size() == choices.size());
  std::size_t i = 0;
  for (simdjson::dom::element ch : choices) {
    const auto& got = c.choices[i++];
    CHECK(got.index == int64_t(ch["index"]));
    CHECK(got.finish_reason == opt_str(ch["finish_reason"]));
    CHECK(got.message.content == opt_str(ch["content"]));
    CHECK(got.message.refusal == opt_str(ch["refusal"]));
    simdjson::dom::array calls = ch["tool_calls"];
    REQUIRE(got.message.tool_calls.size() == calls.size());
    std::size_t j = 0;
    for (simdjson::dom::element tc : calls) {
      const auto& t = got.message.tool_calls[j++];
      CHECK(t.id == std::string_view(tc["id"]));
      CHECK(t.name == std::string_view(tc["name"]));
      CHECK(t.arguments == std::string_view(tc["arguments"]));
    }
  }
  simdjson::dom::element usage;
  if (e["usage"].get(usage) != simdjson::SUCCESS || usage.is_null()) {
    CHECK_FALSE(c.usage.has_value());
    return;
  }
  REQUIRE(c.usage.has_value());
  auto check_count = [&](const char* key, const std::optional<std::int64_t>& got) {
    INFO("usage." << key);
    simdjson::dom::element v;
    if (usage[key].get(v) == simdjson::SUCCESS) {
      REQUIRE(got.has_value());
      CHECK(*got == int64_t(v));
    } else {
      CHECK_FALSE(got.has_value());
    }
  };
  check_count("prompt_tokens", c.usage->prompt_tokens);
  check_count("completion_tokens", c.usage->completion_tokens);
  check_count("total_tokens", c.usage->total_tokens);
  check_count("cached_tokens", c.usage->cached_tokens);
  check_count("reasoning_tokens", c.usage->reasoning_tokens);
  simdjson::dom::element cost;
  if (usage["cost"].get(cost) == simdjson::SUCCESS) {
    REQUIRE(c.usage->cost.has_value());
    CHECK(*c.usage->cost == Approx(double(cost)));
  } else {
    CHECK_FALSE(c.usage->cost.has_value());
  }
}

}  // namespace fixtures

#endif
