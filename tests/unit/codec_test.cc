#include "codec.h"

#include <curl/curl.h>
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <ctime>
#include <limits>

#include "fixtures.h"

using namespace taotoken;
using detail::decode_chat_completion;
using detail::decode_error_response;
using detail::encode_chat_request;

namespace {

simdjson::dom::element parse(simdjson::dom::parser& p, const std::string& json) { return p.parse(json); }

ChatRequest hello() {
  ChatRequest r;
  r.messages.push_back(Message::user("Hello"));
  return r;
}

Result<ChatCompletion> decode(std::string body) { return decode_chat_completion(body); }

}  // namespace

TEST_CASE("a minimal request encodes to the minimal body, with the default model") {
  auto body = encode_chat_request(hello(), "claude-sonnet-4-6", false);
  REQUIRE(body.ok());
  CHECK(*body == R"({"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"Hello"}]})");
  ChatRequest named = hello();
  named.model = "gpt-4o-mini";
  CHECK(*encode_chat_request(named, "claude-sonnet-4-6", false) ==
        R"({"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]})");
}

TEST_CASE("every modelled request field is encoded in the schema's shape") {
  ChatRequest r;
  r.model = "gpt-4o";
  r.messages.push_back(Message::system("be brief"));
  r.messages.push_back(Message::developer("dev note"));
  Message user = Message::user({ContentPart::text_part("What is this?"),
                                ContentPart::image("https://example.com/a.png", "high"),
                                ContentPart::raw(R"({"type":"input_audio","input_audio":{"data":"AAA","format":"wav"}})")});
  user.name = "alice";
  r.messages.push_back(user);
  Message asst;
  asst.role = "assistant";
  asst.tool_calls.push_back({"call_1", "function", "get_weather", R"({"city":"Paris"})"});
  r.messages.push_back(asst);
  r.messages.push_back(Message::tool("call_1", "sunny"));
  r.temperature = 0.2;
  r.top_p = 0.9;
  r.max_tokens = 100;
  r.max_completion_tokens = 200;
  r.stop = {"END", "STOP"};
  r.n = 2;
  r.seed = 7;
  r.presence_penalty = 0.5;
  r.frequency_penalty = -0.5;
  r.logit_bias = {{"50256", -100}};
  r.logprobs = true;
  r.top_logprobs = 3;
  Tool t;
  t.name = "get_weather";
  t.description = "Weather by city";
  t.parameters_json = R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})";
  t.strict = true;
  r.tools.push_back(t);
  r.tool_choice = ToolChoice::function("get_weather");
  r.parallel_tool_calls = false;
  r.response_format = ResponseFormat::json_schema("answer", R"({"type":"object"})");
  r.user = "user-1";
  r.metadata = {{"feature", "search"}};
  r.reasoning_effort = "low";
  r.service_tier = "auto";
  r.store = false;
  r.stream_options = StreamOptions{true};

  auto body = encode_chat_request(r, "unused", false);
  REQUIRE(body.ok());
  simdjson::dom::parser p;
  auto doc = parse(p, *body);
  CHECK(std::string_view(doc["model"]) == "gpt-4o");
  auto msgs = doc["messages"];
  CHECK(std::string_view(msgs.at(0)["role"]) == "system");
  CHECK(std::string_view(msgs.at(1)["role"]) == "developer");
  CHECK(std::string_view(msgs.at(2)["name"]) == "alice");
  CHECK(std::string_view(msgs.at(2)["content"].at(0)["type"]) == "text");
  CHECK(std::string_view(msgs.at(2)["content"].at(1)["image_url"]["url"]) == "https://example.com/a.png");
  CHECK(std::string_view(msgs.at(2)["content"].at(1)["image_url"]["detail"]) == "high");
  CHECK(std::string_view(msgs.at(2)["content"].at(2)["input_audio"]["format"]) == "wav");
  CHECK(msgs.at(3)["content"].is_null());
  CHECK(std::string_view(msgs.at(3)["tool_calls"].at(0)["function"]["arguments"]) == R"({"city":"Paris"})");
  CHECK(std::string_view(msgs.at(3)["tool_calls"].at(0)["type"]) == "function");
  CHECK(std::string_view(msgs.at(4)["tool_call_id"]) == "call_1");
  CHECK(double(doc["temperature"]) == 0.2);
  CHECK(int64_t(doc["max_tokens"]) == 100);
  CHECK(int64_t(doc["max_completion_tokens"]) == 200);
  CHECK(std::string_view(doc["stop"].at(1)) == "STOP");
  CHECK(int64_t(doc["n"]) == 2);
  CHECK(int64_t(doc["seed"]) == 7);
  CHECK(int64_t(doc["logit_bias"]["50256"]) == -100);
  CHECK(bool(doc["logprobs"]));
  CHECK(int64_t(doc["top_logprobs"]) == 3);
  CHECK(std::string_view(doc["tools"].at(0)["function"]["parameters"]["required"].at(0)) == "city");
  CHECK(bool(doc["tools"].at(0)["function"]["strict"]));
  CHECK(std::string_view(doc["tool_choice"]["function"]["name"]) == "get_weather");
  CHECK_FALSE(bool(doc["parallel_tool_calls"]));
  CHECK(std::string_view(doc["response_format"]["type"]) == "json_schema");
  CHECK(std::string_view(doc["response_format"]["json_schema"]["name"]) == "answer");
  CHECK(std::string_view(doc["metadata"]["feature"]) == "search");
  CHECK(std::string_view(doc["reasoning_effort"]) == "low");
  // stream and stream_options belong to streaming calls only.
  CHECK(doc["stream"].error() == simdjson::NO_SUCH_FIELD);
  CHECK(doc["stream_options"].error() == simdjson::NO_SUCH_FIELD);

  auto streamed = encode_chat_request(r, "unused", true);
  auto sdoc = parse(p, *streamed);
  CHECK(bool(sdoc["stream"]));
  CHECK(bool(sdoc["stream_options"]["include_usage"]));
}

TEST_CASE("tool_choice modes and response formats") {
  simdjson::dom::parser p;
  ChatRequest r = hello();
  r.tool_choice = ToolChoice::required();
  r.response_format = ResponseFormat::json_object();
  auto doc = parse(p, *encode_chat_request(r, "m", false));
  CHECK(std::string_view(doc["tool_choice"]) == "required");
  CHECK(simdjson::minify(doc["response_format"]) == R"({"type":"json_object"})");
}

TEST_CASE("extra fields are merged after validation") {
  ChatRequest r = hello();
  r.extra = {{"prediction", R"( {"type":"content","content":"x"} )"}, {"top_k", "40"}};
  auto body = encode_chat_request(r, "m", false);
  REQUIRE(body.ok());
  CHECK(*body ==
        R"({"model":"m","messages":[{"role":"user","content":"Hello"}],"prediction":{"type":"content","content":"x"},"top_k":40})");

  SECTION("a malformed fragment is an error, not a broken request") {
    r.extra = {{"prediction", R"({"type": )"}};
    auto bad = encode_chat_request(r, "m", false);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().kind() == ErrorKind::invalid_argument);
    CHECK_THAT(bad.error().message(), Catch::Contains("prediction"));
  }
  SECTION("two values glued together are rejected") {
    r.extra = {{"x", "1 2"}};
    CHECK_FALSE(encode_chat_request(r, "m", false).ok());
  }
  SECTION("a field that repeats a typed one is rejected") {
    r.temperature = 1.0;
    r.extra = {{"temperature", "0.5"}};
    auto dup = encode_chat_request(r, "m", false);
    REQUIRE_FALSE(dup.ok());
    CHECK_THAT(dup.error().message(), Catch::Contains("duplicates"));
  }
}

TEST_CASE("requests that cannot be sent are invalid_argument") {
  ChatRequest empty;
  CHECK(encode_chat_request(empty, "m", false).error().kind() == ErrorKind::invalid_argument);
  ChatRequest bad_utf8;
  bad_utf8.messages.push_back(Message::user("bad \xC3\x28 byte"));
  auto e = encode_chat_request(bad_utf8, "m", false);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.error().message(), Catch::Contains("UTF-8"));
  ChatRequest bad_tool = hello();
  bad_tool.tools.push_back(Tool{"function", "f", std::nullopt, "{not json", std::nullopt});
  CHECK(encode_chat_request(bad_tool, "m", false).error().kind() == ErrorKind::invalid_argument);
  ChatRequest nan = hello();
  nan.temperature = std::numeric_limits<double>::quiet_NaN();
  CHECK(encode_chat_request(nan, "m", false).error().kind() == ErrorKind::invalid_argument);
  ChatRequest stream_extra = hello();
  stream_extra.extra = {{"stream", "true"}};
  CHECK(encode_chat_request(stream_extra, "m", false).error().kind() == ErrorKind::invalid_argument);
  ChatRequest no_role = hello();
  no_role.messages[0].role.clear();
  CHECK(encode_chat_request(no_role, "m", false).error().kind() == ErrorKind::invalid_argument);
}

TEST_CASE("every recorded non-streaming body decodes to its expectation") {
  int checked = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "json") continue;
    DYNAMIC_SECTION(sc.name) {
      auto r = decode(fixtures::read_file(fixtures::dir() + "/" + sc.file));
      if (sc.name == "ns-openrouter-error-in-200") {
        // An error object in a 200 body is a failed call, never an empty success.
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().kind() == ErrorKind::rate_limited);
        CHECK(r.error().message() == "Provider returned error");
        CHECK(r.error().code == std::optional<std::string>("429"));
        CHECK(r.error().http_status == 200);
      } else {
        REQUIRE(r.ok());
        fixtures::check_expect(*r, sc.expect_json);
      }
    }
    ++checked;
  }
  CHECK(checked == 17);
}

TEST_CASE("provider, upstream cost and raw fields of aggregator responses are kept") {
  auto r = decode(fixtures::read_file(fixtures::dir() + "/nonstream/openrouter-cache-write-cost.json"));
  REQUIRE(r.ok());
  CHECK(r->provider == std::optional<std::string>("Azure"));
  CHECK(r->usage->cost == Approx(0.0540125));
  CHECK_THAT(r->raw_body, Catch::Contains("upstream_inference_cost"));
  auto spec = decode(fixtures::read_file(fixtures::dir() + "/nonstream/openai-spec-default.json"));
  CHECK(spec->service_tier == std::optional<std::string>("default"));
  auto lp = decode(fixtures::read_file(fixtures::dir() + "/nonstream/openai-spec-logprobs.json"));
  REQUIRE(lp->choices[0].logprobs_json);
  CHECK_THAT(*lp->choices[0].logprobs_json, Catch::StartsWith("{"));
  CHECK_FALSE(lp->system_fingerprint.has_value());  // null in the body
}

TEST_CASE("decoding tolerates missing, null and unknown fields") {
  auto r = decode(R"({"id":"x","choices":[{"message":{"content":null,"future":1}}],"usage":null,"new_field":[1,{"a":2}]})");
  REQUIRE(r.ok());
  CHECK(r->choices.size() == 1);
  CHECK_FALSE(r->choices[0].message.content);
  CHECK_FALSE(r->choices[0].finish_reason);
  CHECK_FALSE(r->usage);
  CHECK(r->text().empty());

  auto empty = decode(R"({"id":"y","choices":[],"usage":{"prompt_tokens":3}})");
  REQUIRE(empty.ok());
  CHECK(empty->choices.empty());
  CHECK(empty->usage->prompt_tokens == 3);
  CHECK_FALSE(empty->usage->completion_tokens);  // unknown, not 0
}

TEST_CASE("content parts, reasoning aliases and float token counts") {
  auto r = decode(
      R"({"choices":[{"index":0,"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"reasoning_content":"think"}},)"
      R"({"index":1,"message":{"content":"c","reasoning":"deep"}}],"usage":{"prompt_tokens":5.0,"total_tokens":7}})");
  REQUIRE(r.ok());
  CHECK(r->choices[0].message.content == std::optional<std::string>("ab"));
  CHECK(r->choices[0].message.reasoning == std::optional<std::string>("think"));
  CHECK(r->choices[1].message.reasoning == std::optional<std::string>("deep"));
  CHECK(r->usage->prompt_tokens == 5);
}

TEST_CASE("malformed bodies are bad_response with a clear message") {
  for (const char* body : {"", "not json", "{\"id\":", "[1,2]", "{\"choices\":{}}", "{\"id\":\"a\xC3\x28\"}",
                           "{\"choices\":[{\"index\":\"zero\"}]}", "<html>502</html>"}) {
    INFO(body);
    auto r = decode(body);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::bad_response);
    CHECK_THAT(r.error().message(), Catch::StartsWith("malformed response"));
  }
}

TEST_CASE("every recorded error body decodes to its upstream fields") {
  int checked = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "raw") continue;
    DYNAMIC_SECTION(sc.name) {
      std::string body = fixtures::read_file(fixtures::dir() + "/" + sc.file);
      simdjson::dom::parser p;
      simdjson::dom::element expect = p.parse(sc.expect_json);
      Error e = decode_error_response(sc.status, "application/json", body);
      CHECK(e.http_status == sc.status);
      CHECK(e.kind() == detail::kind_for_status(sc.status));
      auto err = expect["error"];
      CHECK(e.message() == std::string_view(err["message"]));
      auto opt_text = [](simdjson::dom::element v) -> std::optional<std::string> {
        if (v.is_null()) return std::nullopt;
        if (v.is_string()) return std::string(std::string_view(v));
        return simdjson::minify(v);
      };
      simdjson::dom::element field;
      CHECK(e.type == (err["type"].get(field) ? std::nullopt : opt_text(field)));
      CHECK(e.code == (err["code"].get(field) ? std::nullopt : opt_text(field)));
      CHECK(e.param == (err["param"].get(field) ? std::nullopt : opt_text(field)));
      const std::string* ms = nullptr;
      const std::string* secs = nullptr;
      for (const auto& [k, v] : sc.headers) {
        if (curl_strequal(k.c_str(), "retry-after-ms")) ms = &v;
        if (curl_strequal(k.c_str(), "retry-after")) secs = &v;
      }
      auto wait = detail::parse_retry_after(ms, secs);
      double expect_s = 0;
      if (expect["retry_after_s"].get(expect_s) == simdjson::SUCCESS) {
        REQUIRE(wait);
        CHECK(wait->count() == static_cast<long>(expect_s * 1000));
      } else {
        CHECK_FALSE(wait);
      }
    }
    ++checked;
  }
  CHECK(checked == 9);
}

TEST_CASE("non-JSON error bodies keep a short printable excerpt") {
  std::string html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\n<body>" + std::string(500, 'x') + "</body></html>";
  Error e = decode_error_response(502, "text/html", html);
  CHECK(e.kind() == ErrorKind::server_error);
  CHECK(e.http_status == 502);
  CHECK_THAT(e.message(), Catch::Contains("HTTP 502") && Catch::Contains("text/html"));
  REQUIRE(e.body_excerpt);
  CHECK_THAT(*e.body_excerpt, Catch::StartsWith("<html> <head><title>502 Bad Gateway</title>"));
  CHECK(e.body_excerpt->size() <= 203);
  CHECK(e.body_excerpt->find('\n') == std::string::npos);

  std::string empty;
  Error e2 = decode_error_response(503, "", empty);
  CHECK_THAT(e2.message(), Catch::Contains("empty body"));
  CHECK_FALSE(e2.body_excerpt);

  std::string detail = R"({"detail":"Not authenticated"})";
  CHECK(decode_error_response(401, "application/json", detail).message() == "Not authenticated");
  std::string plain_error = R"({"error":"model not found"})";
  Error e3 = decode_error_response(404, "application/json", plain_error);
  CHECK(e3.kind() == ErrorKind::not_found);
  CHECK(e3.message() == "model not found");
}

TEST_CASE("excerpts never cut a UTF-8 sequence or pass binary through") {
  std::string s = std::string(198, 'a') + "\xE4\xBD\xA0\xE5\xA5\xBD";
  auto ex = detail::excerpt(s, 200);
  CHECK(simdjson::validate_utf8(ex.data(), ex.size()));
  std::string binary = "\xFF\xFE\x00\x01garbage\xC3";
  auto bx = detail::excerpt(binary, 200);
  CHECK(simdjson::validate_utf8(bx.data(), bx.size()));
}

TEST_CASE("status codes map to error kinds like the official SDKs") {
  using detail::kind_for_status;
  CHECK(kind_for_status(400) == ErrorKind::invalid_request);
  CHECK(kind_for_status(401) == ErrorKind::authentication);
  CHECK(kind_for_status(403) == ErrorKind::permission_denied);
  CHECK(kind_for_status(404) == ErrorKind::not_found);
  CHECK(kind_for_status(408) == ErrorKind::timeout);
  CHECK(kind_for_status(409) == ErrorKind::conflict);
  CHECK(kind_for_status(418) == ErrorKind::invalid_request);
  CHECK(kind_for_status(422) == ErrorKind::unprocessable);
  CHECK(kind_for_status(429) == ErrorKind::rate_limited);
  CHECK(kind_for_status(500) == ErrorKind::server_error);
  CHECK(kind_for_status(529) == ErrorKind::server_error);
}

TEST_CASE("Retry-After: milliseconds first, then seconds or an HTTP date") {
  using detail::parse_retry_after;
  std::string ms = "250", secs = "1", frac = "0.5", junk = "soon";
  CHECK(parse_retry_after(&ms, &secs) == std::chrono::milliseconds(250));
  CHECK(parse_retry_after(nullptr, &frac) == std::chrono::milliseconds(500));
  CHECK_FALSE(parse_retry_after(nullptr, &junk));
  CHECK_FALSE(parse_retry_after(&junk, nullptr));
  char date[64];
  const std::time_t later = std::time(nullptr) + 30;
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", std::gmtime(&later));
  std::string http_date = date;
  auto wait = parse_retry_after(nullptr, &http_date);
  REQUIRE(wait);
  CHECK(wait->count() >= 28000);
  CHECK(wait->count() <= 30000);
}

TEST_CASE("forward bodies get the default model only when they name none") {
  using detail::fill_default_model;
  CHECK(*fill_default_model(R"({"messages":[]})", "m1") == R"({"model":"m1","messages":[]})");
  CHECK(*fill_default_model(R"(  {} )", "m1") == R"(  {"model":"m1"} )");
  const std::string has = R"({"messages":[],"model":"x"})";
  CHECK(*fill_default_model(has, "m1") == has);
  // A nested "model" does not count.
  CHECK(*fill_default_model(R"({"metadata":{"model":"y"}})", "m1") == R"({"model":"m1","metadata":{"model":"y"}})");
  CHECK(fill_default_model("[1]", "m").error().kind() == ErrorKind::invalid_argument);
  CHECK(fill_default_model("{\"a\":", "m").error().kind() == ErrorKind::invalid_argument);
}
