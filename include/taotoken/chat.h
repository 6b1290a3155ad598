#ifndef TAOTOKEN_CHAT_H
#define TAOTOKEN_CHAT_H

/// @file
/// Request and response types of `POST {base}/chat/completions`, following
/// the OpenAI OpenAPI schema (`CreateChatCompletionRequest`,
/// `CreateChatCompletionResponse`). Plain structs with public members.
///
/// Optional request fields are `std::optional` (or empty containers): unset
/// means "not sent", so the upstream's default applies. Fields this header
/// does not model go in `ChatRequest::extra` as raw JSON.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "taotoken/error.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// One part of a multi-part message content.
struct ContentPart {
  /// "text", "image_url", or any other type (then `raw_json` is sent as is).
  std::string type = "text";
  /// The text, for type "text".
  std::string text;
  /// The image URL (https or data: URL), for type "image_url".
  std::string image_url;
  /// Image detail: "auto", "low" or "high"; unset means not sent.
  std::optional<std::string> detail;
  /// For other part types (input_audio, file, …): the complete part object
  /// as JSON; it is validated before sending.
  std::string raw_json;

  /// A text part.
  static ContentPart text_part(std::string text);
  /// An image part.
  static ContentPart image(std::string url, std::optional<std::string> detail = std::nullopt);
  /// Any other part, as a complete JSON object.
  static ContentPart raw(std::string json_object);
};

/// A function call the assistant asked for (request and response side).
struct ToolCall {
  std::string id;
  std::string type = "function";
  std::string name;
  /// The arguments as the model produced them: a JSON text, not validated.
  std::string arguments;
};

/// One message of the conversation.
struct Message {
  /// "system", "developer", "user", "assistant" or "tool".
  std::string role;
  /// String content. When `parts` is non-empty, `parts` is sent instead.
  /// Unset is sent as `null` (valid for an assistant message with tool calls).
  std::optional<std::string> content;
  /// Multi-part content (text, image_url, …).
  std::vector<ContentPart> parts;
  /// Optional participant name.
  std::optional<std::string> name;
  /// Assistant messages: the tool calls it made.
  std::vector<ToolCall> tool_calls;
  /// Tool messages: the id of the call this message answers.
  std::optional<std::string> tool_call_id;
  /// Assistant messages: a refusal the model gave earlier.
  std::optional<std::string> refusal;

  static Message system(std::string content);
  static Message developer(std::string content);
  static Message user(std::string content);
  static Message user(std::vector<ContentPart> parts);
  static Message assistant(std::string content);
  static Message tool(std::string tool_call_id, std::string content);
};

/// A function tool the model may call.
struct Tool {
  std::string type = "function";
  std::string name;
  std::optional<std::string> description;
  /// JSON Schema of the parameters, as JSON text; empty means not sent.
  std::string parameters_json;
  std::optional<bool> strict;
};

/// `tool_choice`: "none", "auto", "required", or one named function.
struct ToolChoice {
  /// "none", "auto" or "required"; ignored when `function_name` is set.
  std::string mode = "auto";
  /// Forces this function.
  std::string function_name;

  static ToolChoice none() { return {"none", {}}; }
  static ToolChoice automatic() { return {"auto", {}}; }
  static ToolChoice required() { return {"required", {}}; }
  static ToolChoice function(std::string name) { return {"auto", std::move(name)}; }
};

/// `response_format`: "text", "json_object" or "json_schema".
struct ResponseFormat {
  std::string type = "text";
  /// For "json_schema": the schema's name (required by the API).
  std::string schema_name;
  /// For "json_schema": the JSON Schema as JSON text.
  std::string schema_json;
  std::optional<std::string> description;
  std::optional<bool> strict;

  static ResponseFormat text() { return {}; }
  static ResponseFormat json_object() { return {"json_object", {}, {}, {}, {}}; }
  static ResponseFormat json_schema(std::string name, std::string schema, std::optional<bool> strict = true) {
    return {"json_schema", std::move(name), std::move(schema), std::nullopt, strict};
  }
};

/// `stream_options`.
struct StreamOptions {
  bool include_usage = true;
};

/// The body of a chat-completion request.
struct ChatRequest {
  /// Model id; empty means the client's default model.
  std::string model;
  std::vector<Message> messages;

  std::optional<double> temperature;
  std::optional<double> top_p;
  /// Legacy output cap; prefer `max_completion_tokens` with newer models.
  std::optional<std::int64_t> max_tokens;
  std::optional<std::int64_t> max_completion_tokens;
  /// Up to 4 stop sequences.
  std::vector<std::string> stop;
  std::optional<int> n;
  std::optional<std::int64_t> seed;
  std::optional<double> presence_penalty;
  std::optional<double> frequency_penalty;
  /// Token id (as text) → bias in [-100, 100].
  std::map<std::string, int> logit_bias;
  std::optional<bool> logprobs;
  std::optional<int> top_logprobs;
  std::vector<Tool> tools;
  std::optional<ToolChoice> tool_choice;
  std::optional<bool> parallel_tool_calls;
  std::optional<ResponseFormat> response_format;
  std::optional<std::string> user;
  std::map<std::string, std::string> metadata;
  std::optional<std::string> reasoning_effort;
  std::optional<std::string> service_tier;
  std::optional<bool> store;
  /// Sent only on streaming calls.
  std::optional<StreamOptions> stream_options;

  /// Any other top-level field, as (name, raw JSON value). Each value is
  /// validated before sending; a name that repeats a field set above is an
  /// `invalid_argument` error (no silent duplicate keys).
  std::vector<std::pair<std::string, std::string>> extra;
};

/// Token counts. Each count is unset when the upstream did not report it,
/// so "unknown" is distinguishable from 0.
struct Usage {
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
  std::optional<std::int64_t> total_tokens;
  /// `prompt_tokens_details.cached_tokens`.
  std::optional<std::int64_t> cached_tokens;
  /// `completion_tokens_details.reasoning_tokens`.
  std::optional<std::int64_t> reasoning_tokens;
  /// Cost reported by the upstream (aggregators: `usage.cost`), in its
  /// currency (USD credits for OpenRouter-style services).
  std::optional<double> cost;
};

/// The assistant message of a choice.
struct AssistantMessage {
  std::string role = "assistant";
  /// Unset when the upstream sent `null` or omitted it (tool calls, refusals).
  std::optional<std::string> content;
  std::optional<std::string> refusal;
  /// Reasoning text, from `reasoning_content` or `reasoning` when present.
  std::optional<std::string> reasoning;
  std::vector<ToolCall> tool_calls;
};

/// One choice of a completion.
struct Choice {
  int index = 0;
  AssistantMessage message;
  /// "stop", "length", "tool_calls", "content_filter", or a vendor's value.
  std::optional<std::string> finish_reason;
  /// The `logprobs` object as raw JSON; unset when absent or null.
  std::optional<std::string> logprobs_json;
};

/// A chat-completion response.
struct ChatCompletion {
  std::string id;
  std::string object;
  std::int64_t created = 0;
  /// The model the upstream says answered.
  std::string model;
  std::vector<Choice> choices;
  /// Unset when the response had no `usage` object.
  std::optional<Usage> usage;
  std::optional<std::string> system_fingerprint;
  std::optional<std::string> service_tier;
  /// Provider that served the request, when an aggregator reports it.
  std::optional<std::string> provider;

  /// The response body exactly as received, for fields not modelled here.
  std::string raw_body;
  /// Our request id (`req_<unix ms>_<9 base-36 chars>`).
  std::string request_id;
  /// The upstream's `x-request-id`, when it sent one.
  std::string upstream_request_id;
  /// HTTP status of the response (200 on success).
  int http_status = 0;
  /// Attempts made.
  int attempts = 0;
  /// Every attempt, oldest first (the last one succeeded).
  std::vector<AttemptRecord> attempt_log;
  /// Wall time from the call to the result.
  std::chrono::milliseconds latency{0};
  /// True when it was assembled from a stream.
  bool streamed = false;
  /// Streams: from the call to the first content (or tool-call/refusal) delta.
  std::optional<std::chrono::milliseconds> time_to_first_token;

  /// Content of choice 0, or "" when there is none.
  const std::string& text() const noexcept;
};

/// An entry of `GET {base}/models`.
struct Model {
  std::string id;
  std::string object;
  std::int64_t created = 0;
  std::string owned_by;
};

/// One response header, as received (name case preserved).
using Header = std::pair<std::string, std::string>;

/// An upstream response passed through unchanged (see `forward()`).
struct RawResponse {
  int status = 0;
  /// Headers in the order received, without the status line.
  std::vector<Header> headers;
  /// Body bytes exactly as sent by the upstream.
  std::string body;
  std::string request_id;
  std::string upstream_request_id;
  int attempts = 0;
  std::vector<AttemptRecord> attempt_log;
  std::chrono::milliseconds latency{0};
  /// `forward_stream()` of a 2xx event stream: what the library decoded from
  /// the bytes it passed through (usage, model, content), for accounting.
  std::shared_ptr<const ChatCompletion> decoded;
  /// `forward_stream()`: how the decoded stream failed although its bytes
  /// were passed on (an error event, no `[DONE]`); unset when it completed.
  std::shared_ptr<const Error> stream_error;

  /// First header with this name (case-insensitive), or nullptr.
  const std::string* header(std::string_view name) const noexcept;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_CHAT_H
