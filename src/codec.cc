#include "codec.h"

#include <curl/curl.h>
#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <ctime>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "json_writer.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {
namespace {


Error invalid(std::string message) { return Error(ErrorKind::invalid_argument, std::move(message)); }

// Keys written so far, to reject `extra` fields that would duplicate one.
class KeyedWriter {
 public:
  explicit KeyedWriter(std::string& out) : w_(out) { keys_.reserve(32); }
  JsonWriter& key(std::string_view k) {
    keys_.push_back(k);
    return w_.key(k);
  }
  JsonWriter& key_lit(std::string_view k) {
    keys_.push_back(k);
    return w_.key_lit(k);
  }
  bool has(std::string_view k) const { return std::find(keys_.begin(), keys_.end(), k) != keys_.end(); }
  JsonWriter& w() { return w_; }

 private:
  JsonWriter w_;
  std::vector<std::string_view> keys_;
};

std::string_view trim(std::string_view s) {
  const auto* ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// Validates a raw fragment and returns it trimmed, or an error naming `what`.
std::optional<Error> raw_value(JsonWriter& w, std::string_view what, std::string_view json,
                               bool must_be_object) {
  if (auto err = validate_json(json)) return invalid(fmt::format("{} is not valid JSON: {}", what, *err));
  auto t = trim(json);
  if (must_be_object && t.front() != '{') return invalid(fmt::format("{} must be a JSON object", what));
  w.raw(t);
  return std::nullopt;
}

std::optional<Error> encode_message(JsonWriter& w, const Message& m, std::size_t i) {
  if (m.role.empty()) return invalid(fmt::format("messages[{}] has an empty role", i));
  w.begin_object();
  w.key_lit("role").string(m.role);
  w.key_lit("content");
  if (!m.parts.empty()) {
    w.begin_array();
    for (std::size_t p = 0; p < m.parts.size(); ++p) {
      const auto& part = m.parts[p];
      if (part.type == "text") {
        w.begin_object().key_lit("type").string("text").key_lit("text").string(part.text).end_object();
      } else if (part.type == "image_url") {
        if (part.image_url.empty()) return invalid(fmt::format("messages[{}].content[{}] has no image URL", i, p));
        w.begin_object().key_lit("type").string("image_url").key_lit("image_url").begin_object();
        w.key_lit("url").string(part.image_url);
        if (part.detail) w.key_lit("detail").string(*part.detail);
        w.end_object().end_object();
      } else {
        if (part.raw_json.empty())
          return invalid(fmt::format("messages[{}].content[{}] of type '{}' needs raw_json", i, p, part.type));
        if (auto e = raw_value(w, fmt::format("messages[{}].content[{}]", i, p), part.raw_json, true)) return e;
      }
    }
    w.end_array();
  } else if (m.content) {
    w.string(*m.content);
  } else {
    w.null();
  }
  if (m.name) w.key_lit("name").string(*m.name);
  if (m.refusal) w.key_lit("refusal").string(*m.refusal);
  if (!m.tool_calls.empty()) {
    w.key_lit("tool_calls").begin_array();
    for (const auto& tc : m.tool_calls) {
      w.begin_object().key_lit("id").string(tc.id).key_lit("type").string(tc.type);
      w.key_lit("function").begin_object().key_lit("name").string(tc.name).key_lit("arguments").string(tc.arguments);
      w.end_object().end_object();
    }
    w.end_array();
  }
  if (m.tool_call_id) w.key_lit("tool_call_id").string(*m.tool_call_id);
  w.end_object();
  return std::nullopt;
}

// ---- decoding helpers
//
// Responses are decoded from simdjson's DOM: one parse with the CPU's
// fastest kernel (runtime dispatch) that validates the whole document
// (garbage in fields we do not read, a second document after the first and
// invalid UTF-8 are all bad_response). The on-demand front end would
// compile to the generic kernel with Debian's headers and needed a second
// validating pass; measured, the DOM is the cheaper of the two here.
// simdjson exceptions are caught at each entry point.

namespace dom = simdjson::dom;
using dom::element_type;

std::string to_string(dom::element v) { return std::string(std::string_view(v)); }

std::optional<std::string> opt_string(dom::element v) {
  if (v.is_null()) return std::nullopt;
  return to_string(v);
}

std::optional<std::int64_t> opt_int(const dom::element& v) {
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

std::optional<double> opt_double(dom::element v) {
  if (v.is_null()) return std::nullopt;
  return static_cast<double>(v.get_double().value());
}

// A scalar as text: strings unquoted, anything else as minified JSON;
// null → nullopt.
std::optional<std::string> opt_scalar_text(dom::element v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: return std::nullopt;
    case element_type::STRING: return to_string(v);
    default: return simdjson::minify(v);
  }
}

// Key tests: a length check, then a memcmp of constant size that the
// compiler turns into one or two integer compares (string_view's == calls
// an out-of-line compare() and memcmp on every key).
template <std::size_t N>
inline bool key_is(std::string_view k, const char (&lit)[N]) {
  return k.size() == N - 1 && std::memcmp(k.data(), lit, N - 1) == 0;
}

// Calls f(key, value) for each field, the value by reference. On the hot
// path dom::elements are never copied: GCC copies the 16-byte element,
// just written with two 8-byte stores, with one 16-byte load, which cannot
// be store-forwarded; that stall was the hottest instruction of decode_chunk
// (a third of its own time) while the helpers took elements by value.
template <typename F>
inline void for_each_field(dom::object obj, F&& f) {
  for (auto it = obj.begin(), end = obj.end(); it != end; ++it) f(it.key(), it.value());
}

// The assign_* helpers decode like opt_string/opt_scalar_text (same values,
// same exceptions, thrown before `to` changes) but write into the target in
// place: no temporary optional, no move, and an engaged string keeps its
// buffer.
void assign_text(std::optional<std::string>& to, std::string_view s) {
  if (to) to->assign(s);
  else to.emplace(s);
}

void assign_opt_string(std::optional<std::string>& to, const dom::element& v) {
  if (v.is_null()) to.reset();
  else assign_text(to, std::string_view(v));
}

void assign_scalar_text(std::string& to, const dom::element& v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: to.clear(); break;
    case element_type::STRING: to.assign(std::string_view(v)); break;
    default: to = simdjson::minify(v);
  }
}

void assign_opt_scalar_text(std::optional<std::string>& to, const dom::element& v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: to.reset(); break;
    case element_type::STRING: assign_text(to, std::string_view(v)); break;
    default: to = simdjson::minify(v);
  }
}

// Message content: a string, null, or (some gateways) an array of parts
// whose text parts are concatenated.
std::optional<std::string> content_text(dom::element v) {
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

// content_text() into a delta's optional, in place.
void assign_content(std::optional<std::string>& to, const dom::element& v) {
  switch (v.type()) {
    case element_type::NULL_VALUE: to.reset(); break;
    case element_type::STRING: assign_text(to, std::string_view(v)); break;
    default: to = content_text(v);
  }
}

void decode_tool_calls(dom::element v, std::vector<ToolCall>& out) {
  if (v.is_null()) return;
  for (dom::element item : v.get_array()) {
    ToolCall tc;
    for (dom::key_value_pair f : item.get_object()) {
      if (f.key == "id") tc.id = opt_string(f.value).value_or("");
      else if (f.key == "type") tc.type = opt_string(f.value).value_or("function");
      else if (f.key == "function") {
        for (dom::key_value_pair g : f.value.get_object()) {
          if (g.key == "name") tc.name = opt_string(g.value).value_or("");
          else if (g.key == "arguments") tc.arguments = opt_scalar_text(g.value).value_or("");
        }
      }
    }
    out.push_back(std::move(tc));
  }
}

void decode_message(dom::element v, AssistantMessage& m) {
  if (v.is_null()) return;
  for (dom::key_value_pair f : v.get_object()) {
    const std::string_view k = f.key;
    if (k == "role") m.role = opt_string(f.value).value_or("assistant");
    else if (k == "content") m.content = content_text(f.value);
    else if (k == "refusal") m.refusal = opt_string(f.value);
    else if (k == "reasoning_content" || k == "reasoning") {
      if (auto r = opt_string(f.value)) m.reasoning = std::move(r);
    } else if (k == "tool_calls") decode_tool_calls(f.value, m.tool_calls);
  }
}

Choice decode_choice(dom::element v) {
  Choice c;
  for (dom::key_value_pair f : v.get_object()) {
    const std::string_view k = f.key;
    if (k == "index") c.index = static_cast<int>(opt_int(f.value).value_or(0));
    else if (k == "message") decode_message(f.value, c.message);
    else if (k == "finish_reason") c.finish_reason = opt_string(f.value);
    else if (k == "logprobs") {
      if (f.value.is_object()) c.logprobs_json = simdjson::minify(f.value);
    }
  }
  return c;
}

Usage decode_usage(dom::element v) {
  Usage u;
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

// Fills an Error from an OpenAI-style error object (or a bare string).
Error decode_error_value(dom::element v, ErrorKind kind) {
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

// The top-level fields a completion and a chunk share; false for others.
template <typename T>
bool decode_envelope(std::string_view k, const dom::element& v, T& c) {
  // assign() into the existing strings: a reused chunk object keeps their
  // buffers, so a stream does not allocate for id/object/model per chunk.
  auto text = [&](std::string& to) {
    if (v.is_null()) to.clear();
    else to.assign(std::string_view(v));
  };
  if (key_is(k, "id")) text(c.id);
  else if (key_is(k, "object")) text(c.object);
  else if (key_is(k, "created")) c.created = opt_int(v).value_or(0);
  else if (key_is(k, "model")) text(c.model);
  else if (key_is(k, "usage")) {
    if (v.is_object()) c.usage = decode_usage(v);
  } else if (key_is(k, "system_fingerprint")) assign_opt_string(c.system_fingerprint, v);
  else if (key_is(k, "provider")) assign_opt_scalar_text(c.provider, v);
  else return false;
  return true;
}

// An error object inside a 2xx body. Aggregators put the upstream's HTTP
// status in a numeric code; that picks the kind.
Error in_body_error_result(Error e) {
  int code = 0;
  if (e.code) std::from_chars(e.code->data(), e.code->data() + e.code->size(), code);
  const ErrorKind kind = code >= 400 && code <= 599 ? kind_for_status(code) : ErrorKind::server_error;
  std::string message = e.message();
  Error out = reworded(std::move(e), kind, std::move(message));
  out.http_status = 200;
  return out;
}

// Parses a padded buffer (see ensure_padding) with the per-thread parser.
// The element stays valid until the thread's next parse.
simdjson::error_code parse_padded(const std::string& body, dom::element& root) {
  thread_local dom::parser parser;
  return parser.parse(body.data(), body.size(), false).get(root);
}

Error bad_json(const char* what, simdjson::error_code e) {
  return Error(ErrorKind::bad_response, fmt::format("malformed {}: {}", what, simdjson::error_message(e)));
}

}  // namespace

Error reworded(Error e, ErrorKind kind, std::string message) {
  Error out(kind, std::move(message));
  out.http_status = e.http_status;
  out.type = std::move(e.type);
  out.code = std::move(e.code);
  out.param = std::move(e.param);
  out.body_excerpt = std::move(e.body_excerpt);
  out.retry_after = e.retry_after;
  out.request_id = std::move(e.request_id);
  out.upstream_request_id = std::move(e.upstream_request_id);
  out.attempts = e.attempts;
  out.should_retry = e.should_retry;
  out.attempt_log = std::move(e.attempt_log);
  out.partial = std::move(e.partial);
  return out;
}

void ensure_padding(std::string& s) {
  if (s.capacity() < s.size() + simdjson::SIMDJSON_PADDING) s.reserve(s.size() + simdjson::SIMDJSON_PADDING);
}

std::optional<std::string> validate_json(std::string_view json) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element el;
  auto err = parser.parse(json.data(), json.size(), true).get(el);
  if (err != simdjson::SUCCESS) return std::string(simdjson::error_message(err));
  return std::nullopt;
}

Result<std::string> encode_chat_request(const ChatRequest& r, std::string_view default_model, bool stream,
                                        bool include_usage) {
  if (r.messages.empty()) return invalid("the request has no messages");
  std::string out;
  std::size_t estimate = 256;
  for (const auto& m : r.messages) estimate += m.content ? m.content->size() + 32 : 64;
  out.reserve(estimate);

  KeyedWriter kw(out);
  JsonWriter& w = kw.w();
  w.begin_object();
  const std::string_view model = r.model.empty() ? default_model : std::string_view(r.model);
  if (model.empty()) return invalid("the request names no model and the client has no default model");
  kw.key_lit("model").string(model);
  kw.key_lit("messages").begin_array();
  for (std::size_t i = 0; i < r.messages.size(); ++i)
    if (auto e = encode_message(w, r.messages[i], i)) return std::move(*e);
  w.end_array();

  for (auto [name, v] : {std::pair{"temperature", r.temperature}, std::pair{"top_p", r.top_p},
                         std::pair{"presence_penalty", r.presence_penalty},
                         std::pair{"frequency_penalty", r.frequency_penalty}})
    if (v && !std::isfinite(*v)) return invalid(fmt::format("{} must be a finite number", name));
  if (r.temperature) kw.key_lit("temperature").number(*r.temperature);
  if (r.top_p) kw.key_lit("top_p").number(*r.top_p);
  if (r.max_tokens) kw.key_lit("max_tokens").number(*r.max_tokens);
  if (r.max_completion_tokens) kw.key_lit("max_completion_tokens").number(*r.max_completion_tokens);
  if (!r.stop.empty()) {
    kw.key_lit("stop").begin_array();
    for (const auto& s : r.stop) w.string(s);
    w.end_array();
  }
  if (r.n) kw.key_lit("n").number(static_cast<std::int64_t>(*r.n));
  if (r.seed) kw.key_lit("seed").number(*r.seed);
  if (r.presence_penalty) kw.key_lit("presence_penalty").number(*r.presence_penalty);
  if (r.frequency_penalty) kw.key_lit("frequency_penalty").number(*r.frequency_penalty);
  if (!r.logit_bias.empty()) {
    kw.key_lit("logit_bias").begin_object();
    for (const auto& [token, bias] : r.logit_bias) w.key(token).number(static_cast<std::int64_t>(bias));
    w.end_object();
  }
  if (r.logprobs) kw.key_lit("logprobs").boolean(*r.logprobs);
  if (r.top_logprobs) kw.key_lit("top_logprobs").number(static_cast<std::int64_t>(*r.top_logprobs));
  if (!r.tools.empty()) {
    kw.key_lit("tools").begin_array();
    for (std::size_t i = 0; i < r.tools.size(); ++i) {
      const auto& t = r.tools[i];
      if (t.name.empty()) return invalid(fmt::format("tools[{}] has no name", i));
      w.begin_object().key_lit("type").string(t.type).key_lit("function").begin_object();
      w.key_lit("name").string(t.name);
      if (t.description) w.key_lit("description").string(*t.description);
      if (!t.parameters_json.empty()) {
        w.key_lit("parameters");
        if (auto e = raw_value(w, fmt::format("tools[{}].parameters_json", i), t.parameters_json, true))
          return std::move(*e);
      }
      if (t.strict) w.key_lit("strict").boolean(*t.strict);
      w.end_object().end_object();
    }
    w.end_array();
  }
  if (r.tool_choice) {
    kw.key_lit("tool_choice");
    if (!r.tool_choice->function_name.empty()) {
      w.begin_object().key_lit("type").string("function").key_lit("function").begin_object();
      w.key_lit("name").string(r.tool_choice->function_name).end_object().end_object();
    } else {
      w.string(r.tool_choice->mode);
    }
  }
  if (r.parallel_tool_calls) kw.key_lit("parallel_tool_calls").boolean(*r.parallel_tool_calls);
  if (r.response_format) {
    const auto& f = *r.response_format;
    kw.key_lit("response_format").begin_object().key_lit("type").string(f.type);
    if (f.type == "json_schema") {
      if (f.schema_name.empty()) return invalid("response_format json_schema needs a schema_name");
      w.key_lit("json_schema").begin_object().key_lit("name").string(f.schema_name);
      if (f.description) w.key_lit("description").string(*f.description);
      if (!f.schema_json.empty()) {
        w.key_lit("schema");
        if (auto e = raw_value(w, "response_format.schema_json", f.schema_json, true)) return std::move(*e);
      }
      if (f.strict) w.key_lit("strict").boolean(*f.strict);
      w.end_object();
    }
    w.end_object();
  }
  if (r.user) kw.key_lit("user").string(*r.user);
  if (!r.metadata.empty()) {
    kw.key_lit("metadata").begin_object();
    for (const auto& [k, v] : r.metadata) w.key(k).string(v);
    w.end_object();
  }
  if (r.reasoning_effort) kw.key_lit("reasoning_effort").string(*r.reasoning_effort);
  if (r.service_tier) kw.key_lit("service_tier").string(*r.service_tier);
  if (r.store) kw.key_lit("store").boolean(*r.store);
  if (stream) {
    kw.key_lit("stream").boolean(true);
    const bool usage = r.stream_options ? r.stream_options->include_usage : include_usage;
    kw.key_lit("stream_options").begin_object().key_lit("include_usage").boolean(usage);
    w.end_object();
  }
  for (const auto& [name, value] : r.extra) {
    if (name.empty()) return invalid("an extra field has an empty name");
    if (name == "stream" || name == "stream_options")
      return invalid(fmt::format("extra field '{}' is reserved: streaming is chosen by the method you call", name));
    if (kw.has(name)) return invalid(fmt::format("extra field '{}' duplicates a field the request already sets", name));
    kw.key(name);
    if (auto e = raw_value(w, fmt::format("extra field '{}'", name), value, false)) return std::move(*e);
  }
  w.end_object();
  if (!simdjson::validate_utf8(out.data(), out.size()))
    return invalid("the request contains text that is not valid UTF-8");
  return out;
}

Result<ChatCompletion> decode_chat_completion(std::string& body) {
  ensure_padding(body);
  dom::element root;
  if (auto err = parse_padded(body, root)) return bad_json("response", err);
  ChatCompletion c;
  std::optional<Error> in_body_error;
  try {
    for (dom::key_value_pair f : root.get_object()) {
      const std::string_view k = f.key;
      dom::element v = f.value;
      if (decode_envelope(k, v, c)) continue;
      if (k == "choices") {
        if (!v.is_null())
          for (dom::element ch : v.get_array()) c.choices.push_back(decode_choice(ch));
      } else if (k == "service_tier") c.service_tier = opt_string(v);
      else if (k == "error") {
        if (!v.is_null()) in_body_error = decode_error_value(v, ErrorKind::server_error);
      }
    }
  } catch (const simdjson::simdjson_error& e) {
    return bad_json("response", e.error());
  }
  if (in_body_error) return in_body_error_result(std::move(*in_body_error));
  c.raw_body = std::move(body);
  return c;
}

namespace {

void decode_tool_call_deltas(const dom::element& v, std::vector<ToolCallDelta>& out) {
  if (v.is_null()) return;
  for (dom::element item : v.get_array()) {
    dom::object fields = item.get_object();
    ToolCallDelta& tc = out.emplace_back();
    for_each_field(fields, [&](std::string_view k, const dom::element& fv) {
      if (key_is(k, "index")) tc.index = static_cast<int>(opt_int(fv).value_or(0));
      else if (key_is(k, "id")) assign_opt_string(tc.id, fv);
      else if (key_is(k, "type")) assign_opt_string(tc.type, fv);
      else if (key_is(k, "function") && fv.is_object()) {
        for_each_field(fv.get_object().value_unsafe(), [&](std::string_view gk, const dom::element& gv) {
          if (key_is(gk, "name")) assign_opt_string(tc.name, gv);
          else if (key_is(gk, "arguments")) assign_scalar_text(tc.arguments, gv);
        });
      }
    });
  }
}

void decode_delta(dom::object delta, ChoiceDelta& c) {
  for_each_field(delta, [&](std::string_view k, const dom::element& v) {
    if (key_is(k, "content")) assign_content(c.content, v);
    else if (key_is(k, "role")) assign_opt_string(c.role, v);
    else if (key_is(k, "refusal")) assign_opt_string(c.refusal, v);
    else if (key_is(k, "reasoning_content") || key_is(k, "reasoning")) {
      if (!v.is_null()) assign_text(c.reasoning, std::string_view(v));
    } else if (key_is(k, "tool_calls")) decode_tool_call_deltas(v, c.tool_calls);
  });
}

// Empties a delta of the previous chunk for reuse: cheaper than a fresh
// one, whose value-initialization is a 272-byte `rep stos` (perf: a
// quarter of decode_chunk's own time). Must name every ChoiceDelta field;
// the differential test in chunk_decode_test.cc catches one left over.
void reset(ChoiceDelta& d) {
  d.index = 0;
  d.role.reset();
  d.content.reset();
  d.refusal.reset();
  d.reasoning.reset();
  d.tool_calls.clear();
  d.finish_reason.reset();
  d.logprobs_json.reset();
}

// Decodes into an empty delta (in the vector's storage, not moved in).
void decode_choice_delta(dom::object fields, ChoiceDelta& c) {
  for_each_field(fields, [&](std::string_view k, const dom::element& v) {
    if (key_is(k, "delta")) {
      if (v.is_object()) decode_delta(v.get_object().value_unsafe(), c);
    } else if (key_is(k, "index")) c.index = static_cast<int>(opt_int(v).value_or(0));
    else if (key_is(k, "finish_reason")) assign_opt_string(c.finish_reason, v);
    else if (key_is(k, "logprobs")) {
      if (v.is_object()) c.logprobs_json = simdjson::minify(v);
    }
  });
}

}  // namespace

namespace {

// The first quote or backslash in [p, end), or end. Strings are most of a
// chunk's bytes; a loop over single bytes spent about 4 cycles on each (the
// scans below ran longer than the JSON parse they follow), 16 at a time it
// is well under one.
inline const char* find_quote_or_backslash(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  for (; end - p >= 16; p += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
    if (m != 0) return p + __builtin_ctz(static_cast<unsigned>(m));
  }
#endif
  for (; p < end; ++p)
    if (*p == '"' || *p == '\\') return p;
  return end;
}

// From just after a string's opening quote: the offset of its closing quote
// (json.size() if there is none); `escaped` is set when it holds a backslash.
inline std::size_t string_end(std::string_view json, std::size_t i, bool& escaped) {
  const char* const end = json.data() + json.size();
  const char* p = json.data() + i;
  for (;;) {
    p = find_quote_or_backslash(p, end);
    if (p == end || *p == '"') return static_cast<std::size_t>(p - json.data());
    escaped = true;
    if (end - p <= 2) return json.size();  // nothing after the escaped byte
    p += 2;                                 // the backslash and the byte it escapes
  }
}

// The offset of the comma in front of top-level member `member` (> 0) of
// `json`, a valid JSON object text; npos if there is none.
std::size_t member_comma(std::string_view json, std::size_t member) {
  int depth = 0;
  std::size_t commas = 0;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char ch = json[i];
    if (ch == '"') {
      bool escaped = false;
      i = string_end(json, i + 1, escaped);
    } else if (ch == '{' || ch == '[') {
      ++depth;
    } else if (ch == '}' || ch == ']') {
      --depth;
    } else if (ch == ',' && depth == 1 && ++commas == member) {
      return i;
    }
  }
  return std::string_view::npos;
}

// ---- the "same shape, new string" path
//
// Consecutive chunks of a stream are usually the same bytes but for one
// string value: the delta's content (or reasoning, refusal, a tool call's
// arguments). ChunkPrefix keeps the last event decoded the full way (E),
// its chunk, and the string values of E that each set exactly one field
// (slots). An event N equal to E outside one slot's string body, whose new
// body simdjson 3.0 accepts as a string (json_string_value: no quote or
// control character, only valid escapes with its surrogate rules, valid
// UTF-8), decodes to E's chunk with that field set to the new string:
// - N is valid exactly when E is: the body is bounded by the same
//   unescaped quotes (its backslashes all start complete escapes), so stage
//   1 finds the same structure, with the same bytes everywhere else (UTF-8
//   validity splits at the ASCII quotes); stage 2 parses the same tokens,
//   this string included; the size is bounded far below the parser's
//   capacity limit.
// - The decoder walks the same members with the same types and values but
//   for this one string, and a slot's value reaches exactly one field, as
//   a plain assignment: find_slots only names a string when the keys on its
//   path are unescaped (an escaped key could spell one we look for) and
//   unique (`choices` at the top, `delta` in its choice, `tool_calls` in
//   the delta, `function` in the tool call: a repeated one appends or
//   decodes twice), and the string is the member that decides the field
//   (the last `content`, `refusal` or `arguments`; for reasoning, the last
//   non-null `reasoning_content`/`reasoning`, since null ones are skipped).
// - E set no in-stream error (or there is no template), so N sets none.
// Anything else is decoded the full way, which reports any error.

// Events beyond this are always parsed (far below simdjson's limit).
constexpr std::size_t kMaxTemplateEvent = std::size_t(1) << 20;

int hex_digit(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  ch |= 0x20;  // only 'A'-'F' land on 'a'-'f'
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

// Four hex digits at p (both cases), or -1.
long hex4(const char* p) {
  long v = 0;
  for (int i = 0; i < 4; ++i) {
    const int d = hex_digit(static_cast<unsigned char>(p[i]));
    if (d < 0) return -1;
    v = v << 4 | d;
  }
  return v;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | cp >> 6));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | cp >> 12));
    out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | cp >> 18));
    out.push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The value of the JSON string whose bytes between the quotes are `body`,
// as simdjson 3.0's DOM gives it (stage 1: no unescaped control character,
// valid UTF-8; stringparsing.h: escapes from its escape_map, \uXXXX with a
// high surrogate only followed by \u and a low one, no lone low surrogate);
// `value` views `body` or `scratch`. False when simdjson would reject it,
// or when `body` holds an unescaped quote (then it is not one string).
// `body` must be followed by 15 readable bytes (the template path's events
// have SIMDJSON_PADDING): the bytes are checked 16 at a time, past the end
// too (those are ignored).
bool json_string_value(std::string_view body, std::string_view& value, std::string& scratch) {
  const char* q = body.data();
  const char* const end = q + body.size();
  bool non_ascii = false;
#if defined(__SSE2__)
  // Plain bytes (printable ASCII, no quote, no backslash) skipped 16 at a
  // time; the loop below takes over at the first other byte. A new
  // string is a word or two: one step, where the loop took 4-5 cycles a
  // byte.
  {
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    std::size_t i = 0;
    for (; i < body.size(); i += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(body.data() + i));
      // (signed: bytes >= 0x80 are below 0x20 too)
      const __m128i special =
          _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), _mm_cmplt_epi8(v, space));
      const unsigned m = static_cast<unsigned>(_mm_movemask_epi8(special));
      if (m != 0) {
        i += __builtin_ctz(m);
        break;
      }
    }
    if (i >= body.size()) {
      value = body;
      return true;
    }
    q += i;
  }
#endif
  for (; q < end && *q != '\\'; ++q) {
    const auto ch = static_cast<unsigned char>(*q);
    if (ch == '"' || ch < 0x20) return false;
    non_ascii |= ch >= 0x80;
  }
  if (q == end) {
    if (non_ascii && !simdjson::validate_utf8(body.data(), body.size())) return false;
    value = body;
    return true;
  }
  scratch.assign(body.data(), q);
  while (q < end) {
    const auto ch = static_cast<unsigned char>(*q);
    if (ch == '"' || ch < 0x20) return false;
    if (ch != '\\') {
      non_ascii |= ch >= 0x80;
      scratch.push_back(*q++);
      continue;
    }
    if (end - q < 2) return false;  // the closing quote would be escaped
    char simple = 0;
    switch (q[1]) {
      case '"': simple = '"'; break;
      case '\\': simple = '\\'; break;
      case '/': simple = '/'; break;
      case 'b': simple = '\b'; break;
      case 'f': simple = '\f'; break;
      case 'n': simple = '\n'; break;
      case 'r': simple = '\r'; break;
      case 't': simple = '\t'; break;
      case 'u': break;
      default: return false;
    }
    if (simple) {
      scratch.push_back(simple);
      q += 2;
      continue;
    }
    if (end - q < 6) return false;
    long cp = hex4(q + 2);
    if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return false;
    q += 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (end - q < 6 || q[0] != '\\' || q[1] != 'u') return false;
      const long low = hex4(q + 2);
      if (low < 0xDC00 || low > 0xDFFF) return false;
      cp = (((cp - 0xD800) << 10) | (low - 0xDC00)) + 0x10000;
      q += 6;
    }
    append_utf8(scratch, static_cast<std::uint32_t>(cp));
  }
  if (non_ascii && !simdjson::validate_utf8(body.data(), body.size())) return false;
  value = scratch;
  return true;
}

// A forward scan over an event simdjson accepted (so it trusts the
// grammar, but checks bounds and returns false on anything unexpected).
class ShapeScan {
 public:
  explicit ShapeScan(std::string_view s) : s_(s) {}
  std::size_t pos() const { return i_; }
  void seek(std::size_t i) { i_ = i; }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  // At a quote: moves past the string; [open, close) are its bytes inside
  // the quotes; `escaped` when they hold a backslash.
  bool string(std::size_t& open, std::size_t& close, bool& escaped) {
    if (peek() != '"') return false;
    open = ++i_;
    escaped = false;
    i_ = string_end(s_, i_, escaped);
    if (i_ >= s_.size()) return false;
    close = i_++;
    return true;
  }
  bool skip_value() {
    std::size_t open, close;
    bool escaped;
    const char ch = peek();
    if (ch == '"') return string(open, close, escaped);
    if (ch == '{' || ch == '[') {
      int depth = 0;
      while (i_ < s_.size()) {
        const char c = s_[i_];
        if (c == '"') {
          if (!string(open, close, escaped)) return false;
          continue;
        }
        ++i_;
        if (c == '{' || c == '[') ++depth;
        else if ((c == '}' || c == ']') && --depth == 0) return true;
      }
      return false;
    }
    const std::size_t start = i_;
    while (i_ < s_.size() && !ends_scalar(s_[i_])) ++i_;
    return i_ > start;
  }
  // At '{': f(key, escaped) for each member, at its value, which f must
  // move past.
  template <typename F>
  bool members(F&& f) {
    if (peek() != '{') return false;
    ++i_;
    ws();
    if (peek() == '}') return ++i_, true;
    for (;;) {
      std::size_t open, close;
      bool escaped;
      ws();
      if (!string(open, close, escaped)) return false;
      ws();
      if (peek() != ':') return false;
      ++i_;
      ws();
      if (!f(s_.substr(open, close - open), escaped)) return false;
      ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != '}') return false;
      ++i_;
      return true;
    }
  }
  // At '[': f(index) for each element, at it, which f must move past.
  template <typename F>
  bool elements(F&& f) {
    if (peek() != '[') return false;
    ++i_;
    ws();
    if (peek() == ']') return ++i_, true;
    for (std::uint32_t n = 0;; ++n) {
      ws();
      if (!f(n)) return false;
      ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ']') return false;
      ++i_;
      return true;
    }
  }

 private:
  static bool ends_scalar(char c) {
    return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
  }
  std::string_view s_;
  std::size_t i_ = 0;
};

using StringSlot = ChunkPrefix::StringSlot;
constexpr std::size_t kMaxSlots = 8;

// What a member's value is, for the "last one decides" rules.
struct ValueAt {
  enum Kind : std::uint8_t { none, string, null, other } kind = none;
  std::size_t open = 0, close = 0;  // string bytes
};

ValueAt scan_value(ShapeScan& s, bool& ok) {
  ValueAt v;
  bool escaped;
  if (s.peek() == '"') {
    v.kind = ValueAt::string;
    ok = s.string(v.open, v.close, escaped);
  } else {
    v.kind = s.peek() == 'n' ? ValueAt::null : ValueAt::other;
    ok = s.skip_value();
  }
  return v;
}

void add_slot(std::vector<StringSlot>& slots, const ValueAt& v, StringSlot::Field field, std::uint32_t choice,
              std::uint32_t tool) {
  if (v.kind != ValueAt::string || slots.size() >= kMaxSlots) return;
  StringSlot slot;
  slot.open = v.open;
  slot.close = v.close;
  slot.choice = choice;
  slot.tool = tool;
  slot.field = field;
  slots.push_back(slot);
}

// At an object: f() at the value of its member `key` (which f moves
// past), once, for the first such member. The slots f added are dropped
// again when the key turns out to be repeated or any key of the object is
// escaped (it could spell `key`).
template <typename F>
bool at_unique_member(ShapeScan& s, std::string_view key, std::vector<StringSlot>& slots, F&& f) {
  const std::size_t before = slots.size();
  std::size_t count = 0;
  bool escaped_key = false;
  if (!s.members([&](std::string_view k, bool escaped) {
        escaped_key |= escaped;
        if (k == key && ++count == 1) return f();
        return s.skip_value();
      }))
    return false;
  if (escaped_key || count != 1) slots.resize(before);
  return true;
}

// The slots of a delta object (at s) of chunk.choices[choice].
bool delta_slots(ShapeScan& s, std::uint32_t choice, std::vector<StringSlot>& slots) {
  ValueAt content, refusal, reasoning;
  const std::size_t before = slots.size();
  std::size_t tool_calls = 0;
  bool escaped_key = false;
  const bool ok = s.members([&](std::string_view k, bool escaped) {
    escaped_key |= escaped;
    bool fine = true;
    if (key_is(k, "content")) {
      content = scan_value(s, fine);
    } else if (key_is(k, "refusal")) {
      refusal = scan_value(s, fine);
    } else if (key_is(k, "reasoning_content") || key_is(k, "reasoning")) {
      const ValueAt v = scan_value(s, fine);
      if (v.kind != ValueAt::null) reasoning = v;  // the decoder skips null ones
    } else if (key_is(k, "tool_calls") && ++tool_calls == 1 && s.peek() == '[') {
      // Each element appends a tool call (a second tool_calls member
      // appends more: then none of them is used).
      fine = s.elements([&](std::uint32_t tool) {
        if (s.peek() != '{') return s.skip_value();
        return at_unique_member(s, "function", slots, [&] {
          if (s.peek() != '{') return s.skip_value();
          ValueAt arguments;
          bool escaped_fn_key = false;
          const bool f = s.members([&](std::string_view gk, bool gescaped) {
            escaped_fn_key |= gescaped;
            bool g = true;
            if (key_is(gk, "arguments")) arguments = scan_value(s, g);
            else g = s.skip_value();
            return g;
          });
          if (!escaped_fn_key) add_slot(slots, arguments, StringSlot::arguments, choice, tool);
          return f;
        });
      });
    } else {
      fine = s.skip_value();
    }
    return fine;
  });
  if (!ok) return false;
  if (escaped_key || tool_calls > 1) slots.resize(before);
  if (escaped_key) return true;
  add_slot(slots, content, StringSlot::content, choice, 0);
  add_slot(slots, refusal, StringSlot::refusal, choice, 0);
  add_slot(slots, reasoning, StringSlot::reasoning, choice, 0);
  return true;
}

// The slots of an event the full decoder just accepted (see above).
void find_slots(std::string_view event, std::vector<StringSlot>& slots) {
  slots.clear();
  ShapeScan s(event);
  s.ws();
  const bool ok = at_unique_member(s, "choices", slots, [&] {
    if (s.peek() != '[') return s.skip_value();
    return s.elements([&](std::uint32_t choice) {
      if (s.peek() != '{') return s.skip_value();
      return at_unique_member(s, "delta", slots, [&] {
        if (s.peek() != '{') return s.skip_value();
        return delta_slots(s, choice, slots);
      });
    });
  });
  if (!ok) slots.clear();
}

// Whether the n bytes at a and b are equal: inline 8-byte compares for the
// short strings of a chunk's envelope (a memcmp call costs more than the
// compare itself there).
[[gnu::always_inline]] inline bool same_bytes(const char* a, const char* b, std::size_t n) {
  if (n > 64) return std::memcmp(a, b, n) == 0;
  auto load8 = [](const char* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  };
  if (n >= 8) {
    for (std::size_t i = 0; i + 8 <= n; i += 8)
      if (load8(a + i) != load8(b + i)) return false;
    return load8(a + n - 8) == load8(b + n - 8);  // the tail, overlapping
  }
  for (std::size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// Copies every field but raw_json, like operator= would, but writes a
// string only when it differs: the chunk a stream decodes into mostly
// holds the template's values already, and comparing short strings inline
// is cheaper than assigning them. Must name every field (like reset()).
[[gnu::always_inline]] inline void copy_text(std::string& to, const std::string& from) {
  if (to.size() != from.size() || !same_bytes(to.data(), from.data(), from.size())) to.assign(from);
}

[[gnu::always_inline]] inline void copy_text(std::optional<std::string>& to, const std::optional<std::string>& from) {
  if (!from) {
    if (to) to.reset();
  } else if (to) {
    copy_text(*to, *from);
  } else {
    to.emplace(*from);
  }
}

// The chunk of a template hit: `from` (the template's chunk) with the
// slot's field set to `value`. Every field is written once, the slot's from
// `value` (copying the template's string there first was work thrown away).
void copy_chunk(const ChatCompletionChunk& from, const StringSlot& slot, std::string_view value,
                ChatCompletionChunk& to) {
  copy_text(to.id, from.id);
  copy_text(to.object, from.object);
  to.created = from.created;
  copy_text(to.model, from.model);
  to.usage = from.usage;
  copy_text(to.system_fingerprint, from.system_fingerprint);
  copy_text(to.provider, from.provider);
  to.choices.resize(from.choices.size());
  for (std::size_t i = 0; i < from.choices.size(); ++i) {
    const ChoiceDelta& f = from.choices[i];
    ChoiceDelta& t = to.choices[i];
    const bool here = i == slot.choice;
    auto text = [&](std::optional<std::string>& out, const std::optional<std::string>& in, StringSlot::Field field) {
      if (here && slot.field == field) assign_text(out, value);
      else copy_text(out, in);
    };
    t.index = f.index;
    copy_text(t.role, f.role);
    text(t.content, f.content, StringSlot::content);
    text(t.refusal, f.refusal, StringSlot::refusal);
    text(t.reasoning, f.reasoning, StringSlot::reasoning);
    copy_text(t.finish_reason, f.finish_reason);
    copy_text(t.logprobs_json, f.logprobs_json);
    t.tool_calls.resize(f.tool_calls.size());
    for (std::size_t j = 0; j < f.tool_calls.size(); ++j) {
      const ToolCallDelta& g = f.tool_calls[j];
      ToolCallDelta& u = t.tool_calls[j];
      u.index = g.index;
      copy_text(u.id, g.id);
      copy_text(u.type, g.type);
      copy_text(u.name, g.name);
      if (here && slot.field == StringSlot::arguments && j == slot.tool) u.arguments.assign(value);
      else copy_text(u.arguments, g.arguments);
    }
  }
}

// All of `from` but raw_json into `to`, as copy_chunk does (a slot that is
// none of the chunk's).
void copy_whole(const ChatCompletionChunk& from, ChatCompletionChunk& to) {
  static const StringSlot none{0, 0, std::numeric_limits<std::uint32_t>::max(), 0, StringSlot::content};
  copy_chunk(from, none, {}, to);
}

// Whether an event that decoded to `c` can have slots: each slot's field
// is set (so most finish and usage chunks are not scanned).
bool may_have_slots(const ChatCompletionChunk& c) {
  for (const ChoiceDelta& d : c.choices)
    if (d.content || d.refusal || d.reasoning || !d.tool_calls.empty()) return true;
  return false;
}

// The "same shape, new string" path: true when `event` was decoded into
// `c` from the template.
bool decode_from_template(std::string_view event, ChatCompletionChunk& c, ChunkPrefix& t, bool held,
                          bool* deferred) {
  const std::string& old = t.chunk.raw_json;
  if (event.size() > kMaxTemplateEvent) return false;
  for (std::size_t i = 0; i < t.slots.size(); ++i) {
    const StringSlot& slot = t.slots[i];
    const std::size_t tail = old.size() - slot.close;  // from the closing quote on
    if (event.size() < slot.open + tail) continue;
    const std::size_t close = event.size() - tail;
    if (std::memcmp(event.data(), old.data(), slot.open) != 0 ||
        std::memcmp(event.data() + close, old.data() + slot.close, tail) != 0)
      continue;
    // The event differs from the template inside this slot alone (slots do
    // not overlap): no other slot can match.
    std::string_view value;
    if (!json_string_value(event.substr(slot.open, close - slot.open), value, t.unescaped)) return false;
    t.last_full = false;
    t.hit_value = value;
    if (held && t.hit == t.generation && t.hit_slot == i) {
      // `c` is this template's chunk but for this slot's field and raw_json.
      if (deferred) {
        *deferred = true;
        return true;
      }
      set_slot_field(c, slot, value);
    } else {
      copy_chunk(t.chunk, slot, value, c);
      t.hit = t.generation;
      t.hit_slot = i;
    }
    c.raw_json.assign(event);
    return true;
  }
  return false;
}

}  // namespace

std::string& slot_text(ChatCompletionChunk& c, const ChunkPrefix::StringSlot& slot) {
  ChoiceDelta& d = c.choices[slot.choice];
  switch (slot.field) {
    case StringSlot::content: return *d.content;
    case StringSlot::refusal: return *d.refusal;
    case StringSlot::reasoning: return *d.reasoning;
    case StringSlot::arguments: break;
  }
  return d.tool_calls[slot.tool].arguments;
}

void set_slot_field(ChatCompletionChunk& c, const ChunkPrefix::StringSlot& slot, std::string_view value) {
  slot_text(c, slot).assign(value);
}

namespace {

// The "same event again" path: true when `event` is the repeat template's
// event, decoded into `c` from it.
bool decode_repeat(std::string_view event, ChatCompletionChunk& c, ChunkPrefix& t) {
  const std::string& old = t.repeat.raw_json;
  if (event.size() != old.size() || old.empty() || std::memcmp(event.data(), old.data(), old.size()) != 0)
    return false;
  copy_whole(t.repeat, c);
  c.raw_json.assign(event);
  t.last_full = false;
  return true;
}

// Whether `c` has no slots and some choice's finish_reason (what the repeat
// template keeps: a stream's finish chunk).
bool finishes_without_slots(const ChatCompletionChunk& c) {
  if (may_have_slots(c)) return false;
  for (const ChoiceDelta& d : c.choices)
    if (d.finish_reason) return true;
  return false;
}

// Moves a template made after another prefix (`at` bytes of its raw_json;
// 0: it cannot move) onto `p`: p's bytes replace the old prefix, p's
// envelope the chunk's, and the slots move with the rest. Exact: the
// template's rest set no envelope field, so an event of p's bytes and the
// template's rest decodes to p's envelope and the rest's members (as the
// prefix path decodes it), and those are the template's.
// Copies the envelope fields (id, object, created, model, fingerprint,
// provider) from a chunk to a ChunkPrefix, or the other way.
template <typename From, typename To>
void copy_envelope(const From& f, To& t) {
  t.id.assign(f.id);
  t.object.assign(f.object);
  t.model.assign(f.model);
  t.created = f.created;
  t.system_fingerprint = f.system_fingerprint;
  t.provider = f.provider;
}

template <typename Slot>
void rebase(ChatCompletionChunk& t, std::size_t& at, std::vector<Slot>* slots, ChunkPrefix& p) {
  if (at == 0 || t.raw_json.empty()) return;
  const std::string& bytes = p.bytes;
  if (at == bytes.size() && t.raw_json.compare(0, at, bytes) == 0) return;  // the same prefix
  t.raw_json.replace(0, at, bytes);
  ++p.generation;  // (the chunk changes)
  if (slots)
    for (Slot& s : *slots) {
      s.open = s.open - at + bytes.size();
      s.close = s.close - at + bytes.size();
    }
  at = bytes.size();
  copy_envelope(p, t);
}

// Moves every template onto the prefix just made - the first two
// prefixes of a stream only: a stream whose chunks each have another id
// makes a prefix per event, and moving the templates each time would only
// cost (no later event has that prefix).
void rebase_templates(ChunkPrefix& p) {
  if (p.rebases >= 2) return;
  ++p.rebases;
  rebase(p.chunk, p.chunk_prefix, &p.slots, p);
  rebase(p.repeat, p.repeat_prefix, static_cast<std::vector<StringSlot>*>(nullptr), p);
  rebase(p.counts, p.counts_prefix, &p.number_slots, p);
}

// ---- the "same shape, new counts" path
//
// A stream's usage chunk differs from the last stream's in the digits of
// its counts (and its prefix, which rebase() moves). ChunkPrefix::counts
// keeps such an event E, its chunk, and the integer literals of E after
// the prefix, each with the count it sets: found by decoding E with that
// literal changed (to a number of another length) and comparing with E's
// chunk - a literal that changes exactly one count, to the new number,
// sets that count; one that changes nothing sets nothing; any other (a
// literal read as a double, one that changes more) is no slot, its digits
// must stay. An event N equal to E but for the digits of the slots, each a
// JSON integer of at most 18 digits without sign or leading zero, decodes
// to E's chunk with those counts:
// - N is valid exactly when E is: the same bytes but for integer tokens
//   replaced by integer tokens (the byte after each is E's, never a digit,
//   '.', 'e' or 'E'; the slot's digits are all taken);
// - simdjson parses the same structure, each literal an int64 either way
//   (18 digits fit), and the decoder reads each count from its own key
//   (decode_usage): what changing one literal does, it does alone, with
//   any value.
constexpr std::size_t kMaxCountsEvent = 4096;
constexpr std::size_t kMaxCountsLiterals = 16;
constexpr int kMaxCountsMade = 3;

std::optional<std::int64_t>* count_field(Usage& u, ChunkPrefix::NumberSlot::Field f) {
  switch (f) {
    case ChunkPrefix::NumberSlot::prompt: return &u.prompt_tokens;
    case ChunkPrefix::NumberSlot::completion: return &u.completion_tokens;
    case ChunkPrefix::NumberSlot::total: return &u.total_tokens;
    case ChunkPrefix::NumberSlot::cached: return &u.cached_tokens;
    case ChunkPrefix::NumberSlot::reasoning: return &u.reasoning_tokens;
    case ChunkPrefix::NumberSlot::none: break;
  }
  return nullptr;
}

bool same_opt(const std::optional<std::string>& a, const std::optional<std::string>& b) { return a == b; }

// Whether two chunks have equal envelopes.
bool same_envelope(const ChatCompletionChunk& a, const ChatCompletionChunk& b) {
  return a.id == b.id && a.object == b.object && a.created == b.created && a.model == b.model &&
         same_opt(a.system_fingerprint, b.system_fingerprint) && same_opt(a.provider, b.provider);
}

// Whether two chunks have equal choices.
bool same_choices(const ChatCompletionChunk& a, const ChatCompletionChunk& b) {
  if (a.choices.size() != b.choices.size()) return false;
  for (std::size_t i = 0; i < a.choices.size(); ++i) {
    const ChoiceDelta &c = a.choices[i], &d = b.choices[i];
    if (c.index != d.index || c.role != d.role || c.content != d.content || c.refusal != d.refusal ||
        c.reasoning != d.reasoning || c.finish_reason != d.finish_reason || c.logprobs_json != d.logprobs_json ||
        c.tool_calls.size() != d.tool_calls.size())
      return false;
    for (std::size_t j = 0; j < c.tool_calls.size(); ++j) {
      const ToolCallDelta &t = c.tool_calls[j], &u = d.tool_calls[j];
      if (t.index != u.index || t.id != u.id || t.type != u.type || t.name != u.name || t.arguments != u.arguments)
        return false;
    }
  }
  return true;
}

// Whether two costs are equal (NaN equal to NaN).
bool same_cost(const std::optional<double>& a, const std::optional<double>& b) {
  return a == b || (a && b && *a != *a && *b != *b);
}

bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

// The end of the number token at `i` (a JSON number of a valid event);
// `slot` is set when it is a plain integer of at most 18 digits (the
// literals the counts and first-event templates may change).
std::size_t number_end(std::string_view event, std::size_t i, std::size_t end, bool& slot) {
  std::size_t j = i;
  bool integer = true;
  for (; j < end && (is_digit(event[j]) || event[j] == '-' || event[j] == '+' || event[j] == '.' ||
                     event[j] == 'e' || event[j] == 'E');
       ++j)
    integer = integer && is_digit(event[j]);
  slot = integer && j - i <= 18;
  return j;
}

// The digits of a new integer at `i` where a template has an integer slot:
// their end, or npos unless they are a JSON integer of at most 18 digits
// without sign or leading zero. The value goes to *value when given.
std::size_t slot_digits(std::string_view event, std::size_t i, std::int64_t* value) {
  std::size_t d = i;
  while (d < event.size() && is_digit(event[d])) ++d;
  const std::size_t n = d - i;
  if (n == 0 || n > 18 || (n > 1 && event[i] == '0')) return std::string_view::npos;
  if (value) {
    std::int64_t v = 0;
    for (std::size_t k = i; k < d; ++k) v = v * 10 + (event[k] - '0');
    *value = v;
  }
  return d;
}

// `event` with bytes [open, close) replaced by `sentinel`, decoded alone
// into `decoded` (probing which field a literal sets); false when that
// fails or sets an in-stream error.
bool probe(std::string_view event, std::size_t open, std::size_t close, const char* sentinel,
           ChatCompletionChunk& decoded) {
  thread_local std::string text;
  text.assign(event.substr(0, open));
  text.append(sentinel);
  text.append(event.substr(close));
  ensure_padding(text);
  std::optional<Error> in_stream;
  return !decode_chunk(std::string_view(text), decoded, in_stream, nullptr) && !in_stream;
}

// Makes the counts template from `event` (decoded to `c` after a prefix of
// `plen` bytes): its integer literals after the prefix, each probed.
void make_counts(std::string_view event, const ChatCompletionChunk& c, std::size_t plen, ChunkPrefix& t) {
  // (The template before stays unless this event makes one.)
  // The number tokens outside strings (the event is valid JSON).
  std::vector<std::pair<std::size_t, std::size_t>> literals;
  for (std::size_t i = plen; i < event.size();) {
    const char ch = event[i];
    if (ch == '"') {
      bool escaped = false;
      i = string_end(event, i + 1, escaped) + 1;
    } else if (ch == '-' || is_digit(ch)) {
      bool slot = false;
      const std::size_t j = number_end(event, i, event.size(), slot);
      if (slot) {  // (others are no slots: their bytes must stay)
        literals.emplace_back(i, j);
        if (literals.size() > kMaxCountsLiterals) return;
      }
      i = j;
    } else {
      ++i;
    }
  }
  if (literals.empty()) return;
  ChatCompletionChunk decoded;
  std::vector<ChunkPrefix::NumberSlot> slots;
  for (const auto& [open, close] : literals) {
    const std::string_view old = event.substr(open, close - open);
    const char* sentinel = old == "987654321" ? "123456789" : "987654321";
    if (!probe(event, open, close, sentinel, decoded) || !decoded.usage || !same_envelope(decoded, c) ||
        !same_choices(decoded, c) || !same_cost(c.usage->cost, decoded.usage->cost))
      continue;  // (not a slot: its digits must stay)
    const Usage &was = *c.usage, &now = *decoded.usage;
    ChunkPrefix::NumberSlot slot{open, close, ChunkPrefix::NumberSlot::none};
    int changed = 0;
    for (auto f : {ChunkPrefix::NumberSlot::prompt, ChunkPrefix::NumberSlot::completion,
                   ChunkPrefix::NumberSlot::total, ChunkPrefix::NumberSlot::cached,
                   ChunkPrefix::NumberSlot::reasoning}) {
      Usage a = was, b = now;
      if (*count_field(a, f) == *count_field(b, f)) continue;
      ++changed;
      if (*count_field(b, f) == std::optional<std::int64_t>(std::strtoll(sentinel, nullptr, 10))) slot.field = f;
      else changed = 99;
    }
    if (changed == 0 || (changed == 1 && slot.field != ChunkPrefix::NumberSlot::none)) slots.push_back(slot);
  }
  if (slots.empty()) return;
  t.counts = c;
  t.counts.raw_json.assign(event);
  t.number_slots = std::move(slots);
  t.counts_prefix = plen;
}

// The "same shape, new counts" path: true when `event` was decoded into
// `c` from the counts template.
bool decode_counts(std::string_view event, ChatCompletionChunk& c, ChunkPrefix& t) {
  const std::string& old = t.counts.raw_json;
  if (old.empty()) return false;
  std::int64_t values[5] = {};
  std::size_t ti = 0, ei = 0;
  for (const ChunkPrefix::NumberSlot& slot : t.number_slots) {
    const std::size_t len = slot.open - ti;
    if (event.size() - ei < len || std::memcmp(event.data() + ei, old.data() + ti, len) != 0) return false;
    ei += len;
    const std::size_t d =
        slot_digits(event, ei, slot.field != ChunkPrefix::NumberSlot::none ? &values[slot.field] : nullptr);
    if (d == std::string_view::npos) return false;
    ei = d;
    ti = slot.close;
  }
  const std::size_t tail = old.size() - ti;
  if (event.size() - ei != tail || std::memcmp(event.data() + ei, old.data() + ti, tail) != 0) return false;
  copy_whole(t.counts, c);
  for (const ChunkPrefix::NumberSlot& slot : t.number_slots)
    if (slot.field != ChunkPrefix::NumberSlot::none) *count_field(*c.usage, slot.field) = values[slot.field];
  c.raw_json.assign(event);
  t.last_full = false;
  t.counts_keeping.hit();
  return true;
}

// ---- the "first event" path
//
// A stream's first event makes its prefix (a full parse). The first event
// of the stream before is usually the same bytes but for the values of
// some prefix members: the id, the created time. ChunkPrefix::first keeps
// such an event E (decoded the full way, its members after the prefix
// setting no envelope field), its chunk, and the string and integer values
// of E's top-level prefix members, each probed like the counts' (E decoded
// with that value changed): one that changes exactly one envelope field to
// the new value sets that field; one that changes nothing sets nothing;
// any other must stay. A first event N equal to E but for the slots'
// values decodes to E's chunk with those fields: N is valid exactly when E
// is (strings by the argument of the "same shape, new string" path,
// integers by the counts'), the decoder reads each value from its own
// member, and N's prefix is its bytes up to the same member's comma.
constexpr std::size_t kMaxFirstEvent = 4096;
constexpr std::size_t kMaxFirstValues = 16;
constexpr int kMaxFirstMade = 3;

std::string* envelope_text(ChatCompletionChunk& c, ChunkPrefix::ScalarSlot::Field f) {
  switch (f) {
    case ChunkPrefix::ScalarSlot::Field::id: return &c.id;
    case ChunkPrefix::ScalarSlot::Field::object: return &c.object;
    case ChunkPrefix::ScalarSlot::Field::model: return &c.model;
    case ChunkPrefix::ScalarSlot::Field::fingerprint: return c.system_fingerprint ? &*c.system_fingerprint : nullptr;
    case ChunkPrefix::ScalarSlot::Field::provider: return c.provider ? &*c.provider : nullptr;
    default: return nullptr;
  }
}

bool same_usage(const std::optional<Usage>& a, const std::optional<Usage>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->prompt_tokens == b->prompt_tokens && a->completion_tokens == b->completion_tokens &&
         a->total_tokens == b->total_tokens && a->cached_tokens == b->cached_tokens &&
         a->reasoning_tokens == b->reasoning_tokens && same_cost(a->cost, b->cost);
}

// Makes the first-event template from `event` (decoded to `c`, its prefix
// `plen` bytes).
void make_first(std::string_view event, const ChatCompletionChunk& c, std::size_t plen, ChunkPrefix& t) {
  // The string and integer values of the top-level members in the prefix.
  std::vector<ChunkPrefix::ScalarSlot> candidates;
  int depth = 0;
  bool value = false;  // the next token at depth 1 is a member's value
  for (std::size_t i = 0; i < plen;) {
    const char ch = event[i];
    if (ch == '"') {
      bool escaped = false;
      const std::size_t close = string_end(event, i + 1, escaped);
      if (close >= plen) return;
      if (depth == 1 && value) {
        candidates.push_back({i + 1, close, ChunkPrefix::ScalarSlot::Field::none, true});
        value = false;
      }
      i = close + 1;
      continue;
    }
    if (ch == '{' || ch == '[') {
      ++depth;
      value = false;
    } else if (ch == '}' || ch == ']') {
      --depth;
    } else if (ch == ':' && depth == 1) {
      value = true;
    } else if (ch == ',' && depth == 1) {
      value = false;
    } else if (depth == 1 && value && (ch == '-' || is_digit(ch))) {
      bool slot = false;
      const std::size_t j = number_end(event, i, plen, slot);
      if (slot) candidates.push_back({i, j, ChunkPrefix::ScalarSlot::Field::none, false});
      value = false;
      i = j;
      continue;
    } else if (depth == 1 && value && ch > ' ') {
      value = false;  // (true, false, null)
    }
    ++i;
  }
  if (candidates.empty() || candidates.size() > kMaxFirstValues) return;
  ChatCompletionChunk decoded;
  std::vector<ChunkPrefix::ScalarSlot> slots;
  for (ChunkPrefix::ScalarSlot slot : candidates) {
    const std::string_view old = event.substr(slot.open, slot.close - slot.open);
    const char* sentinel = slot.string ? (old == "zq9probe9qz" ? "qz9probe9zq" : "zq9probe9qz")
                                       : (old == "987654321" ? "123456789" : "987654321");
    if (!probe(event, slot.open, slot.close, sentinel, decoded) || !same_choices(decoded, c) ||
        !same_usage(decoded.usage, c.usage))
      continue;  // (not a slot: it must stay)
    int changed = 0;
    bool to_sentinel = false;
    auto check = [&](ChunkPrefix::ScalarSlot::Field f, bool differs, bool is_sentinel) {
      if (!differs) return;
      ++changed;
      slot.field = f;
      to_sentinel = is_sentinel;
    };
    const std::string s(sentinel);
    const std::int64_t n = slot.string ? 0 : std::strtoll(sentinel, nullptr, 10);
    check(ChunkPrefix::ScalarSlot::Field::id, decoded.id != c.id, decoded.id == s);
    check(ChunkPrefix::ScalarSlot::Field::object, decoded.object != c.object, decoded.object == s);
    check(ChunkPrefix::ScalarSlot::Field::model, decoded.model != c.model, decoded.model == s);
    check(ChunkPrefix::ScalarSlot::Field::fingerprint, decoded.system_fingerprint != c.system_fingerprint,
          decoded.system_fingerprint == std::optional<std::string>(s) && c.system_fingerprint);
    check(ChunkPrefix::ScalarSlot::Field::provider, decoded.provider != c.provider,
          decoded.provider == std::optional<std::string>(s) && c.provider);
    check(ChunkPrefix::ScalarSlot::Field::created, decoded.created != c.created, !slot.string && decoded.created == n);
    if (changed == 0) {
      slot.field = ChunkPrefix::ScalarSlot::Field::none;
      slots.push_back(slot);
    } else if (changed == 1 && to_sentinel && (slot.field == ChunkPrefix::ScalarSlot::Field::created) != slot.string) {
      slots.push_back(slot);
    }
  }
  if (slots.empty()) return;
  t.first = c;
  t.first.raw_json.assign(event);
  t.first_slots = std::move(slots);
  t.first_prefix = plen;
  t.first_values.resize(t.first_slots.size());
}

// The "first event" path: true when `event` was decoded into `c` from the
// first-event template, and the prefix made from it.
bool decode_first(std::string_view event, ChatCompletionChunk& c, ChunkPrefix& t) {
  const std::string& old = t.first.raw_json;
  if (old.empty() || event.size() > kMaxFirstEvent) return false;
  std::string_view values[kMaxFirstValues];
  std::int64_t created = 0;
  std::size_t ti = 0, ei = 0;
  for (std::size_t k = 0; k < t.first_slots.size(); ++k) {
    const ChunkPrefix::ScalarSlot& slot = t.first_slots[k];
    const std::size_t len = slot.open - ti;
    if (event.size() - ei < len || std::memcmp(event.data() + ei, old.data() + ti, len) != 0) return false;
    ei += len;
    if (slot.string) {
      bool escaped = false;
      const std::size_t close = string_end(event, ei, escaped);
      if (close >= event.size()) return false;
      std::string_view v;
      if (!json_string_value(event.substr(ei, close - ei), v, t.unescaped)) return false;
      if (v.data() == t.unescaped.data()) {
        t.first_values[k].assign(v);
        v = t.first_values[k];
      }
      values[k] = v;
      ei = close;
    } else {
      // (A free slot's digits are checked, not read.)
      const std::size_t d =
          slot_digits(event, ei, slot.field == ChunkPrefix::ScalarSlot::Field::created ? &created : nullptr);
      if (d == std::string_view::npos) return false;
      ei = d;
    }
    ti = slot.close;
  }
  const std::size_t tail = old.size() - ti;
  if (event.size() - ei != tail || std::memcmp(event.data() + ei, old.data() + ti, tail) != 0) return false;
  // The prefix: the same member's comma, moved by the values' new lengths.
  const std::size_t plen = t.first_prefix + ei - ti;
  if (plen < 2 || plen >= event.size() || event[plen - 1] != ',' || event[plen] != '"') return false;
  copy_whole(t.first, c);
  for (std::size_t k = 0; k < t.first_slots.size(); ++k) {
    const ChunkPrefix::ScalarSlot& slot = t.first_slots[k];
    if (slot.field == ChunkPrefix::ScalarSlot::Field::created) c.created = created;
    else if (std::string* text = envelope_text(c, slot.field)) text->assign(values[k]);
  }
  c.raw_json.assign(event);
  // As decode_chunk_full makes a prefix: its bytes and envelope (the
  // members after it set none), and the templates moved onto it.
  t.bytes.assign(event.substr(0, plen));
  copy_envelope(c, t);
  rebase_templates(t);
  t.last_full = true;  // (as the event decoded the full way it stands for)
  t.first_keeping.hit();
  return true;
}

// Decodes the members of a chunk's top-level object into `c` (whose
// envelope fields the caller has set), appending deltas from `n_choices`
// on. `at_member(i, key)` is called before member i is decoded; it
// returns false to stop looking at keys.
// `envelope` is set when a member sets an envelope field (usage aside),
// `envelope_after_body` when one after the first choices, usage or error
// member does.
template <typename AtMember>
void decode_chunk_members(dom::object root, ChatCompletionChunk& c, std::size_t& n_choices,
                          std::optional<Error>& in_stream_error, bool& envelope, bool& envelope_after_body,
                          AtMember&& at_member) {
  std::size_t i = 0;
  bool watch = true, body = false;
  for_each_field(root, [&](std::string_view k, const dom::element& v) {
    if (watch) watch = at_member(i++, k);
    body = body || key_is(k, "choices") || key_is(k, "usage") || key_is(k, "error");
    if (key_is(k, "choices")) {
      if (!v.is_null())
        for (dom::element ch : v.get_array()) {
          dom::object fields = ch.get_object();
          if (n_choices < c.choices.size()) reset(c.choices[n_choices]);
          else c.choices.emplace_back();
          decode_choice_delta(fields, c.choices[n_choices++]);
        }
    } else if (decode_envelope(k, v, c)) {
      envelope |= !key_is(k, "usage");
      envelope_after_body |= body && !key_is(k, "usage");
      return;
    } else if (key_is(k, "error")) {
      if (!v.is_null()) in_stream_error = in_body_error_result(decode_error_value(v, ErrorKind::server_error));
    }
  });
}

}  // namespace

namespace {

// decode_chunk_into past the template path. Kept out of line: inlined, its
// frame (over 1 KiB, five saved registers, arguments spilled and reloaded)
// was set up for every event, most of which the template decodes.
[[gnu::noinline]] bool decode_chunk_full(std::string_view padded, ChatCompletionChunk& c,
                                         std::optional<Error>& in_stream_error, ChunkPrefix* prefix,
                                         std::optional<Error>& error) {
  thread_local dom::parser parser;
  dom::element root;
  const bool had_in_stream_error = in_stream_error.has_value();
  // The chunks of a stream usually repeat the previous chunk's bytes up to
  // "choices" (id, object, created, model, system_fingerprint...). When
  // they do, only '{' + the rest is parsed, and the envelope is the one
  // decoded from those bytes before. Exactly equivalent (see ChunkPrefix):
  // the prefix is a valid object start ending in a top-level comma, so the
  // whole text is valid iff '{' + rest is (the rest starts with a key, so
  // '{' cannot make an empty object of it), the rest's members decode the
  // same after it, and simdjson reports the same error for both: stage 1's
  // errors (UTF-8, control characters in strings, an unclosed string) are
  // the rest's alone, and stage 2 reaches the rest's first key in the same
  // state at the same depth either way.
  const std::size_t plen = prefix ? prefix->bytes.size() : 0;
  const bool reuse = plen != 0 && padded.size() > plen && padded[plen] == '"' &&
                     std::memcmp(padded.data(), prefix->bytes.data(), plen) == 0;
  std::string_view text = padded;
  if (reuse) {
    std::string& rest = prefix->scratch;
    rest.assign(1, '{');
    rest.append(padded.substr(plen));
    ensure_padding(rest);
    text = rest;
  }
  if (auto err = parser.parse(text.data(), text.size(), false).get(root)) {
    error = bad_json("JSON in a stream event", err);
    return false;
  }
  if (reuse) {
    copy_envelope(*prefix, c);
  } else {
    c.id.clear();  // clear() keeps the buffers of a reused chunk
    c.object.clear();
    c.model.clear();
    c.system_fingerprint.reset();
    c.provider.reset();
    c.created = 0;
  }
  c.usage.reset();
  // The chunk's deltas are reused in order; the ones left over are dropped
  // at the end.
  std::size_t n_choices = 0;
  // A new prefix: the members in front of the first choices/usage/error
  // (the members that set only envelope fields, or nothing), with the
  // envelope they leave.
  std::size_t prefix_members = 0;
  ChatCompletionChunk* snapshot_from = nullptr;
  bool envelope_in_rest = false;  // (meaningful with reuse: then every member is the rest's)
  bool envelope_after_body = false;
  try {
    dom::object obj = root.get_object();
    if (reuse || !prefix) {
      decode_chunk_members(obj, c, n_choices, in_stream_error, envelope_in_rest, envelope_after_body,
                           [](std::size_t, std::string_view) { return false; });
    } else {
      decode_chunk_members(obj, c, n_choices, in_stream_error, envelope_in_rest, envelope_after_body,
                           [&](std::size_t i, std::string_view k) {
        if (!key_is(k, "choices") && !key_is(k, "usage") && !key_is(k, "error")) return true;
        prefix_members = i;
        if (i > 0) {
          copy_envelope(c, *prefix);
          snapshot_from = &c;
        }
        return false;
      });
    }
  } catch (const simdjson::simdjson_error& e) {
    c.choices.resize(n_choices);
    if (prefix && !reuse) prefix->bytes.clear();
    error = bad_json("stream chunk", e.error());
    return false;
  }
  c.choices.resize(n_choices);
  c.raw_json.assign(padded);
  if (prefix && !reuse) {
    prefix->bytes.clear();
    if (snapshot_from) {
      const std::size_t comma = member_comma(padded, prefix_members);
      if (comma != std::string_view::npos && comma + 1 < padded.size() && padded[comma + 1] == '"') {
        prefix->bytes.assign(padded.substr(0, comma + 1));
        rebase_templates(*prefix);
      }
    }
  }
  if (prefix) {
    // The template is the last event decoded here, if it has slots and
    // set no in-stream error (one set before cannot be told apart).
    // Only when the event before was decoded the full way too: the first
    // event of a new shape (a stream's role chunk, the first tool-call
    // delta) is rarely the shape of the next one, and scanning it for slots
    // and keeping a copy cost as much as a third of its decoding.
    // A template is kept until a new one replaces it: it decodes exactly
    // whatever event matches it, in this stream or a later one.
    const bool after_full = prefix->last_full;
    prefix->last_full = true;
    if (after_full && !had_in_stream_error && !in_stream_error && padded.size() <= kMaxTemplateEvent &&
        may_have_slots(c)) {
      auto& slots = prefix->found;
      find_slots(padded, slots);
      // (Never true: the scan and the decoder agree on the indexes. Kept
      // so that a disagreement costs the template, not memory safety.)
      slots.erase(std::remove_if(slots.begin(), slots.end(),
                                 [&](const ChunkPrefix::StringSlot& s) {
                                   return s.choice >= c.choices.size() ||
                                          (s.field == ChunkPrefix::StringSlot::arguments &&
                                           s.tool >= c.choices[s.choice].tool_calls.size());
                                 }),
                  slots.end());
      if (!slots.empty()) {
        prefix->slots.swap(slots);
        ++prefix->generation;
        prefix->chunk = c;
        prefix->chunk_prefix = reuse && !envelope_in_rest ? plen : 0;
      }
    }
    // A finish chunk is kept for the next stream's (see ChunkPrefix::repeat).
    if (reuse && !envelope_in_rest && !had_in_stream_error && !in_stream_error && !c.usage &&
        padded.size() <= kMaxTemplateEvent && finishes_without_slots(c)) {
      prefix->repeat = c;
      prefix->repeat_prefix = plen;
    }
    // A stream's first event: the first-event template (see
    // ChunkPrefix::first and ChunkPrefix::Keeping).
    if (!reuse && !prefix->bytes.empty() && !envelope_after_body && !had_in_stream_error && !in_stream_error &&
        padded.size() <= kMaxFirstEvent) {
      if (prefix->first_keeping.make_from(prefix->first.raw_json.empty(), kMaxFirstMade))
        make_first(padded, c, prefix->bytes.size(), *prefix);
    }
    // A usage chunk: the counts template (see ChunkPrefix::counts and
    // ChunkPrefix::Keeping).
    if (reuse && !envelope_in_rest && !had_in_stream_error && !in_stream_error && c.usage && !may_have_slots(c) &&
        padded.size() <= kMaxCountsEvent) {
      if (prefix->counts_keeping.make_from(prefix->counts.raw_json.empty(), kMaxCountsMade))
        make_counts(padded, c, plen, *prefix);
    }
  }
  return true;
}

}  // namespace

bool decode_chunk_into(std::string_view padded, ChatCompletionChunk& c, std::optional<Error>& in_stream_error,
                       ChunkPrefix* prefix, std::optional<Error>& error, bool held, bool* deferred) {
  if (prefix) {
    if (!prefix->slots.empty() && decode_from_template(padded, c, *prefix, held, deferred)) return true;
    prefix->hit = 0;  // whatever comes next rewrites the chunk
    if (prefix->bytes.empty() && decode_first(padded, c, *prefix)) return true;
    if (decode_repeat(padded, c, *prefix)) return true;
    if (decode_counts(padded, c, *prefix)) return true;
  }
  return decode_chunk_full(padded, c, in_stream_error, prefix, error);
}

std::optional<Error> decode_chunk(std::string_view padded, ChatCompletionChunk& c,
                                  std::optional<Error>& in_stream_error, ChunkPrefix* prefix) {
  std::optional<Error> error;
  decode_chunk_into(padded, c, in_stream_error, prefix, error);
  return error;
}

Result<ChatCompletionChunk> decode_chunk(std::string& data, std::optional<Error>& in_stream_error) {
  ensure_padding(data);
  ChatCompletionChunk c;
  if (auto e = decode_chunk(std::string_view(data), c, in_stream_error, nullptr)) return std::move(*e);
  return c;
}

Error decode_stream_error(std::string& data) {
  ensure_padding(data);
  dom::element root;
  if (!parse_padded(data, root) && root.is_object()) {
    try {
      dom::element v;
      if (root["error"].get(v) == simdjson::SUCCESS && !v.is_null())
        return in_body_error_result(decode_error_value(v, ErrorKind::server_error));
      if (root["message"].get(v) == simdjson::SUCCESS)
        return in_body_error_result(Error(ErrorKind::server_error, opt_scalar_text(v).value_or("")));
    } catch (const simdjson::simdjson_error&) {
    }
  }
  Error e(ErrorKind::server_error, "the upstream sent an error event: " + excerpt(data));
  e.http_status = 200;
  return e;
}

Result<std::vector<Model>> decode_models(std::string& body) {
  ensure_padding(body);
  dom::element root;
  if (auto err = parse_padded(body, root)) return bad_json("models list", err);
  std::vector<Model> models;
  std::optional<Error> in_body_error;
  auto decode_model = [&](dom::element item) {
    Model m;
    for (dom::key_value_pair f : item.get_object()) {
      const std::string_view k = f.key;
      if (k == "id") m.id = opt_string(f.value).value_or("");
      else if (k == "object") m.object = opt_string(f.value).value_or("");
      else if (k == "created") m.created = opt_int(f.value).value_or(0);
      else if (k == "owned_by") m.owned_by = opt_scalar_text(f.value).value_or("");
    }
    models.push_back(std::move(m));
  };
  try {
    if (root.is_array()) {  // some servers send a bare list
      for (dom::element item : root.get_array()) decode_model(item);
    } else {
      for (dom::key_value_pair f : root.get_object()) {
        if (f.key == "data") {
          for (dom::element item : f.value.get_array()) decode_model(item);
        } else if (f.key == "error" && !f.value.is_null()) {
          in_body_error = decode_error_value(f.value, ErrorKind::server_error);
        }
      }
    }
  } catch (const simdjson::simdjson_error& e) {
    return bad_json("models list", e.error());
  }
  if (in_body_error) return in_body_error_result(std::move(*in_body_error));
  return models;
}

ErrorKind kind_for_status(int status) noexcept {
  switch (status) {
    case 400: return ErrorKind::invalid_request;
    case 401: return ErrorKind::authentication;
    case 403: return ErrorKind::permission_denied;
    case 404: return ErrorKind::not_found;
    case 408: return ErrorKind::timeout;
    case 409: return ErrorKind::conflict;
    case 422: return ErrorKind::unprocessable;
    case 429: return ErrorKind::rate_limited;
    default: return status >= 500 ? ErrorKind::server_error : ErrorKind::invalid_request;
  }
}

std::string excerpt(std::string_view body, std::size_t max_bytes) {
  std::string out;
  out.reserve(std::min(body.size(), max_bytes));
  bool space = false;
  for (char ch : body) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      space = !out.empty();
      continue;
    }
    if (c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) {
      if (out.size() + 1 >= max_bytes) break;
      out.push_back(' ');
      space = false;
    }
    if (out.size() >= max_bytes && (c & 0xC0) != 0x80) break;
    out.push_back(ch);
  }
  // Never hand out broken UTF-8: drop a sequence cut at the end, and if
  // the text is still invalid (a binary body), mask every non-ASCII byte.
  for (int i = 0; i < 3 && !out.empty() && !simdjson::validate_utf8(out.data(), out.size()); ++i) {
    if (static_cast<unsigned char>(out.back()) < 0x80) break;
    out.pop_back();
  }
  if (!simdjson::validate_utf8(out.data(), out.size()))
    for (auto& b : out)
      if (static_cast<unsigned char>(b) >= 0x80) b = '?';
  if (body.size() > out.size() && out.size() >= max_bytes - 4) out += "...";
  return out;
}

Error decode_error_response(int status, std::string_view content_type, std::string& body) {
  const ErrorKind kind = kind_for_status(status);
  auto t = trim(body);
  if (t.empty()) {
    Error e(kind, fmt::format("upstream returned HTTP {} with an empty body", status));
    e.http_status = status;
    return e;
  }
  dom::element root;
  if (t.front() == '{' && (ensure_padding(body), !parse_padded(body, root))) {
    try {
      std::optional<Error> found;
      for (dom::key_value_pair f : root.get_object()) {
        if (f.key == "error" && !f.value.is_null()) found = decode_error_value(f.value, kind);
        else if ((f.key == "message" || f.key == "detail") && f.value.is_string() && !found)
          found = Error(kind, to_string(f.value));
      }
      if (found) {
        found->http_status = status;
        return std::move(*found);
      }
    } catch (const simdjson::simdjson_error&) {
      // Not the JSON it claimed to be: fall through to an excerpt.
    }
  }
  Error e(kind, fmt::format("upstream returned HTTP {} with a non-JSON body{}{}", status,
                            content_type.empty() ? "" : " of type ", content_type));
  e.http_status = status;
  e.body_excerpt = excerpt(body);
  return e;
}

std::optional<std::chrono::milliseconds> parse_retry_after(const std::string* retry_after_ms,
                                                           const std::string* retry_after) {
  auto parse_number = [](std::string_view s, double& out) {
    s = trim(s);
    if (s.empty()) return false;
    auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(out) && out >= 0;
  };
  // Clamped to a day: absurd values must not overflow the conversion.
  constexpr double kMaxMs = 86400.0 * 1000;
  auto to_ms = [&](double ms) { return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(std::min(ms, kMaxMs)))); };
  double v = 0;
  if (retry_after_ms && parse_number(*retry_after_ms, v)) return to_ms(v);
  if (retry_after) {
    if (parse_number(*retry_after, v)) return to_ms(v * 1000);
    const time_t when = curl_getdate(retry_after->c_str(), nullptr);
    if (when > 0) {
      return to_ms(std::max(0.0, std::difftime(when, std::time(nullptr))) * 1000);
    }
  }
  return std::nullopt;
}

Result<std::string> fill_default_model(std::string_view body, std::string_view default_model,
                                       std::string* model_out) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto err = parser.parse(body.data(), body.size(), true).get(root))
    return invalid(fmt::format("the request body is not valid JSON: {}", simdjson::error_message(err)));
  simdjson::dom::object obj;
  if (root.get_object().get(obj) != simdjson::SUCCESS) return invalid("the request body must be a JSON object");
  simdjson::dom::element model;
  if (obj["model"].get(model) == simdjson::SUCCESS) {
    if (model_out) model_out->assign(model.is_string() ? std::string_view(model) : std::string_view());
    return std::string(body);
  }
  if (model_out) model_out->assign(default_model);
  if (default_model.empty()) return invalid("the request body names no model and the client has no default model");
  const auto brace = body.find('{');
  std::string out;
  out.reserve(body.size() + default_model.size() + 16);
  out.append(body.substr(0, brace + 1));
  out.append("\"model\":");
  JsonWriter::append_quoted(out, default_model);
  if (obj.size() > 0) out.push_back(',');
  out.append(body.substr(brace + 1));
  return out;
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE
