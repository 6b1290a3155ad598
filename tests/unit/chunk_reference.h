// The stream-chunk decoder as it was before it was tuned for speed (one
// straightforward pass over simdjson's DOM), kept as the reference the
// differential tests compare detail::decode_chunk with.
#ifndef TAOTOKEN_TESTS_UNIT_CHUNK_REFERENCE_H
#define TAOTOKEN_TESTS_UNIT_CHUNK_REFERENCE_H

#include <fmt/format.h>
#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include "codec.h"
#include "taotoken/stream.h"

namespace chunkref {

namespace dom = simdjson::dom;
using dom::element_type;
using taotoken::Error;
using taotoken::ErrorKind;

inline std::string to_string(dom::element v) { return std::string(std::string_view(v)); }

inline std::optional<std::string> opt_string(dom::element v) {
  if (v.is_null()) return std::nullopt;
  return to_string(v);
}

inline std::optional<std::int64_t> opt_int(dom::element v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: return std::nullopt;
    case element_type::INT64: return v.get_int64().value();
    case element_type::UINT64: {
      const std::uint64_t u = v.get_uint64().value();
      if (u > static_cast<std::uint64_t>(INT64_MAX)) throw simdjson::simdjson_error(simdjson::NUMBER_OUT_OF_RANGE);
      return static_cast<std::int64_t>(u);
    }
    case element_type::DOUBLE: {
      const double d = v.get_double().value();
      if (!(std::fabs(d) < 9.2e18)) throw simdjson::simdjson_error(simdjson::NUMBER_OUT_OF_RANGE);
      return static_cast<std::int64_t>(std::llround(d));
    }
    default: throw simdjson::simdjson_error(simdjson::INCORRECT_TYPE);
  }
}

inline std::optional<double> opt_double(dom::element v) {
  if (v.is_null()) return std::nullopt;
  return static_cast<double>(v.get_double().value());
}

inline std::optional<std::string> opt_scalar_text(dom::element v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: return std::nullopt;
    case element_type::STRING: return to_string(v);
    default: return simdjson::minify(v);
  }
}

inline std::optional<std::string> content_text(dom::element v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: return std::nullopt;
    case element_type::ARRAY: {
      std::string out;
      for (dom::element part : v.get_array()) {
        dom::element text;
        if (part.is_object() && part["text"].get(text) == simdjson::SUCCESS && text.is_string())
          out += std::string_view(text);
      }
      return out;
    }
    default: return to_string(v);
  }
}

inline taotoken::Usage decode_usage(dom::element v) {
  taotoken::Usage u;
  for (dom::key_value_pair f : v.get_object()) {
    const std::string_view k = f.key;
    if (k == "prompt_tokens") u.prompt_tokens = opt_int(f.value);
    else if (k == "completion_tokens") u.completion_tokens = opt_int(f.value);
    else if (k == "total_tokens") u.total_tokens = opt_int(f.value);
    else if (k == "cost") u.cost = opt_double(f.value);
    else if (k == "prompt_tokens_details" && f.value.is_object()) {
      dom::element c;
      if (f.value["cached_tokens"].get(c) == simdjson::SUCCESS) u.cached_tokens = opt_int(c);
    } else if (k == "completion_tokens_details" && f.value.is_object()) {
      dom::element r;
      if (f.value["reasoning_tokens"].get(r) == simdjson::SUCCESS) u.reasoning_tokens = opt_int(r);
    }
  }
  return u;
}

inline Error decode_error_value(dom::element v, ErrorKind kind) {
  if (v.is_string()) return Error(kind, to_string(v));
  std::string message;
  std::optional<std::string> type, code, param;
  for (dom::key_value_pair f : v.get_object()) {
    const std::string_view k = f.key;
    if (k == "message") message = opt_scalar_text(f.value).value_or("");
    else if (k == "type") type = opt_scalar_text(f.value);
    else if (k == "code") code = opt_scalar_text(f.value);
    else if (k == "param") param = opt_scalar_text(f.value);
  }
  if (message.empty()) message = "upstream reported an error without a message";
  Error e(kind, std::move(message));
  e.type = std::move(type);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

inline bool decode_envelope(std::string_view k, dom::element v, taotoken::ChatCompletionChunk& c) {
  auto text = [&](std::string& to) {
    if (v.is_null()) to.clear();
    else to.assign(std::string_view(v));
  };
  if (k == "id") text(c.id);
  else if (k == "object") text(c.object);
  else if (k == "created") c.created = opt_int(v).value_or(0);
  else if (k == "model") text(c.model);
  else if (k == "usage") {
    if (v.is_object()) c.usage = decode_usage(v);
  } else if (k == "system_fingerprint") c.system_fingerprint = opt_string(v);
  else if (k == "provider") c.provider = opt_scalar_text(v);
  else return false;
  return true;
}

inline Error in_body_error_result(Error e) {
  int code = 0;
  if (e.code) std::from_chars(e.code->data(), e.code->data() + e.code->size(), code);
  Error out(code >= 400 && code <= 599 ? taotoken::detail::kind_for_status(code) : ErrorKind::server_error,
            e.message());
  out.type = std::move(e.type);
  out.code = std::move(e.code);
  out.param = std::move(e.param);
  out.http_status = 200;
  return out;
}

inline Error bad_json(const char* what, simdjson::error_code e) {
  return Error(ErrorKind::bad_response, fmt::format("malformed {}: {}", what, simdjson::error_message(e)));
}

inline void decode_tool_call_deltas(dom::element v, std::vector<taotoken::ToolCallDelta>& out) {
  if (v.is_null()) return;
  for (dom::element item : v.get_array()) {
    taotoken::ToolCallDelta tc;
    for (dom::key_value_pair f : item.get_object()) {
      const std::string_view k = f.key;
      if (k == "index") tc.index = static_cast<int>(opt_int(f.value).value_or(0));
      else if (k == "id") tc.id = opt_string(f.value);
      else if (k == "type") tc.type = opt_string(f.value);
      else if (k == "function" && f.value.is_object()) {
        for (dom::key_value_pair g : f.value.get_object()) {
          if (g.key == "name") tc.name = opt_string(g.value);
          else if (g.key == "arguments") tc.arguments = opt_scalar_text(g.value).value_or("");
        }
      }
    }
    out.push_back(std::move(tc));
  }
}

inline taotoken::ChoiceDelta decode_choice_delta(dom::element v) {
  taotoken::ChoiceDelta c;
  for (dom::key_value_pair f : v.get_object()) {
    const std::string_view k = f.key;
    if (k == "index") c.index = static_cast<int>(opt_int(f.value).value_or(0));
    else if (k == "finish_reason") c.finish_reason = opt_string(f.value);
    else if (k == "logprobs") {
      if (f.value.is_object()) c.logprobs_json = simdjson::minify(f.value);
    } else if (k == "delta" && f.value.is_object()) {
      for (dom::key_value_pair g : f.value.get_object()) {
        const std::string_view gk = g.key;
        if (gk == "role") c.role = opt_string(g.value);
        else if (gk == "content") c.content = content_text(g.value);
        else if (gk == "refusal") c.refusal = opt_string(g.value);
        else if (gk == "reasoning_content" || gk == "reasoning") {
          if (auto r = opt_string(g.value)) c.reasoning = std::move(r);
        } else if (gk == "tool_calls") decode_tool_call_deltas(g.value, c.tool_calls);
      }
    }
  }
  return c;
}

// Returns the decoding error (bad_response) or decodes into `c` (a fresh
// chunk each time: nothing carries over).
inline std::optional<Error> decode_chunk(std::string_view padded, taotoken::ChatCompletionChunk& c,
                                         std::optional<Error>& in_stream_error) {
  thread_local dom::parser parser;
  c = taotoken::ChatCompletionChunk();
  dom::element root;
  if (auto err = parser.parse(padded.data(), padded.size(), false).get(root))
    return bad_json("JSON in a stream event", err);
  try {
    for (dom::key_value_pair f : root.get_object()) {
      const std::string_view k = f.key;
      dom::element v = f.value;
      if (decode_envelope(k, v, c)) continue;
      if (k == "choices") {
        if (!v.is_null())
          for (dom::element ch : v.get_array()) c.choices.push_back(decode_choice_delta(ch));
      } else if (k == "error") {
        if (!v.is_null()) in_stream_error = in_body_error_result(decode_error_value(v, ErrorKind::server_error));
      }
    }
  } catch (const simdjson::simdjson_error& e) {
    return bad_json("stream chunk", e.error());
  }
  c.raw_json.assign(padded);
  return std::nullopt;
}

}  // namespace chunkref

#endif  // TAOTOKEN_TESTS_UNIT_CHUNK_REFERENCE_H
