// Prints, one per line, request bodies the library encodes for a range of
// requests, then a simulator response: validate_schema.py checks every line
// against the OpenAPI schema (the contract for request and response shapes).
#include <cstdio>
#include <string>

#include "codec.h"
#include "taotoken/simulator.h"

using namespace taotoken;

namespace {
void print(const Result<std::string>& body) {
  if (!body) {
    std::fprintf(stderr, "encode failed: %s\n", body.error().describe().c_str());
    std::exit(1);
  }
  std::printf("request %s\n", body->c_str());
}
}  // namespace

int main() {
  ChatRequest minimal;
  minimal.messages.push_back(Message::user("Hello"));
  print(detail::encode_chat_request(minimal, "claude-sonnet-4-6", false));

  ChatRequest full;
  full.model = "gpt-4o";
  full.messages.push_back(Message::system("be brief"));
  full.messages.push_back(Message::developer("dev note"));
  Message user = Message::user({ContentPart::text_part("What is in this image?"),
                                ContentPart::image("https://example.com/a.png", "high"),
                                ContentPart::image("data:image/png;base64,iVBORw0KGgo=")});
  user.name = "alice";
  full.messages.push_back(user);
  Message asst;
  asst.role = "assistant";
  asst.tool_calls.push_back({"call_1", "function", "get_weather", R"({"city":"Paris"})"});
  full.messages.push_back(asst);
  full.messages.push_back(Message::tool("call_1", "sunny"));
  Message refused = Message::assistant("");
  refused.content.reset();
  refused.refusal = "I can't help with that.";
  full.messages.push_back(refused);
  full.temperature = 0.2;
  full.top_p = 0.9;
  full.max_tokens = 100;
  full.max_completion_tokens = 200;
  full.stop = {"END"};
  full.n = 2;
  full.seed = 7;
  full.presence_penalty = 0.5;
  full.frequency_penalty = -0.5;
  full.logit_bias = {{"50256", -100}};
  full.logprobs = true;
  full.top_logprobs = 3;
  Tool t;
  t.name = "get_weather";
  t.description = "Weather by city";
  t.parameters_json = R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})";
  t.strict = true;
  full.tools.push_back(t);
  full.tool_choice = ToolChoice::function("get_weather");
  full.parallel_tool_calls = false;
  full.response_format = ResponseFormat::json_schema("answer", R"({"type":"object"})");
  full.user = "user-1";
  full.metadata = {{"feature", "search"}};
  full.reasoning_effort = "low";
  full.service_tier = "auto";
  full.store = false;
  full.stream_options = StreamOptions{true};
  print(detail::encode_chat_request(full, "unused", false));
  print(detail::encode_chat_request(full, "unused", true));

  for (auto choice : {ToolChoice::none(), ToolChoice::automatic(), ToolChoice::required()}) {
    ChatRequest r = minimal;
    r.tools = full.tools;
    r.tool_choice = choice;
    r.response_format = ResponseFormat::json_object();
    print(detail::encode_chat_request(r, "m", false));
  }
  ChatRequest text_format = minimal;
  text_format.response_format = ResponseFormat::text();
  text_format.extra = {{"prediction", R"({"type":"content","content":"x"})"}};
  print(detail::encode_chat_request(text_format, "m", false));

  int status = 0;
  const std::string sim_body = sim::completion_for(*detail::encode_chat_request(full, "m", false), status);
  if (status != 200) return 1;
  std::printf("response %s\n", sim_body.c_str());
  return 0;
}
