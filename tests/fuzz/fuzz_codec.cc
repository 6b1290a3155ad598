// libFuzzer target: every decoder of upstream bytes (completion, chunk,
// error body, models list, Retry-After) and forward()'s model filling; and
// a stream chunk decoded from the previous chunk's prefix against the same
// chunk decoded whole (the input is that previous chunk, a newline, and
// what follows its prefix); and a chunk decoded from the previous chunk's
// template against the same chunk decoded whole (the input is that
// previous chunk, a newline, a byte that picks one of its string slots and
// the new string's bytes, which replace the slot's); and the same after
// the templates moved onto the next stream's prefix; and a usage chunk's
// counts template against the chunk with new digits decoded whole; and a
// stream's first event decoded from the last stream's first event.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "codec.h"

namespace {

using namespace taotoken;

bool same(const std::optional<std::string>& a, const std::optional<std::string>& b) { return a == b; }

bool same(const ChatCompletionChunk& a, const ChatCompletionChunk& b) {
  if (a.id != b.id || a.object != b.object || a.created != b.created || a.model != b.model ||
      !same(a.system_fingerprint, b.system_fingerprint) || !same(a.provider, b.provider) ||
      a.raw_json != b.raw_json || a.usage.has_value() != b.usage.has_value() || a.choices.size() != b.choices.size())
    return false;
  if (a.usage) {
    const Usage &u = *a.usage, &v = *b.usage;
    if (u.prompt_tokens != v.prompt_tokens || u.completion_tokens != v.completion_tokens ||
        u.total_tokens != v.total_tokens || u.cached_tokens != v.cached_tokens ||
        u.reasoning_tokens != v.reasoning_tokens || u.cost.has_value() != v.cost.has_value() ||
        (u.cost && !(*u.cost == *v.cost || (*u.cost != *u.cost && *v.cost != *v.cost))))
      return false;
  }
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

bool same(const std::optional<Error>& a, const std::optional<Error>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->kind() == b->kind() && a->message() == b->message() && a->type == b->type && a->code == b->code &&
         a->param == b->param && a->http_status == b->http_status;
}

using taotoken::detail::ChunkPrefix;

// The input's first `n` newline-terminated lines into `lines`, and what
// follows into `rest`; false when it has fewer.
bool split_lines(const std::string& input, std::size_t n, std::vector<std::string>& lines, std::string& rest) {
  std::size_t at = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t nl = input.find('\n', at);
    if (nl == std::string::npos) return false;
    lines.push_back(input.substr(at, nl - at));
    at = nl + 1;
  }
  rest = input.substr(at);
  return true;
}

// Decodes `first` (a stream's previous event) with `prefix`, so that the
// prefix cache and template are set as a stream would leave them.
void decode_first(std::string first, ChatCompletionChunk& chunk, ChunkPrefix& prefix) {
  taotoken::detail::ensure_padding(first);
  std::optional<Error> in_stream;
  prefix.last_full = true;  // as after an event decoded the full way: a template is made
  (void)taotoken::detail::decode_chunk(first, chunk, in_stream, &prefix);
}

// `second` decoded with the stream's state (into a copy of the previous
// chunk, as a reused object would be) must equal `second` decoded alone.
void cross_check(std::string second, const ChatCompletionChunk& previous, ChunkPrefix& prefix) {
  taotoken::detail::ensure_padding(second);
  ChatCompletionChunk with = previous, alone;
  std::optional<Error> in_stream_with, in_stream_alone;
  const auto err_with = taotoken::detail::decode_chunk(second, with, in_stream_with, &prefix);
  const auto err_alone = taotoken::detail::decode_chunk(second, alone, in_stream_alone, nullptr);
  if (!same(err_with, err_alone) || !same(in_stream_with, in_stream_alone) || (!err_alone && !same(with, alone)))
    std::abort();
}

// Input: an event, a newline, the next event's bytes after the first
// event's prefix (the prefix path).
void check_prefix_reuse(const std::string& input) {
  const std::size_t nl = input.find('\n');
  if (nl == std::string::npos) return;
  ChunkPrefix prefix;
  ChatCompletionChunk chunk;
  decode_first(input.substr(0, nl), chunk, prefix);
  cross_check(prefix.bytes + input.substr(nl + 1), chunk, prefix);
}

// Input: an event, a newline, a byte that picks one of its string slots,
// then a new string for that slot (the template path).
void check_template(const std::string& input) {
  const std::size_t nl = input.find('\n');
  if (nl == std::string::npos || nl + 1 >= input.size()) return;
  const std::string first = input.substr(0, nl);
  ChunkPrefix prefix;
  ChatCompletionChunk chunk;
  decode_first(first, chunk, prefix);
  if (prefix.slots.empty()) return;
  const auto& slot = prefix.slots[static_cast<unsigned char>(input[nl + 1]) % prefix.slots.size()];
  cross_check(first.substr(0, slot.open) + input.substr(nl + 2) + first.substr(slot.close), chunk, prefix);
}

// A stream's first two events: `first`, then `rest` after the prefix it
// made (decoded so that a template is made). False when `first` made no
// prefix.
bool first_two(const std::string& first, const std::string& rest, ChunkPrefix& prefix, ChatCompletionChunk& chunk) {
  decode_first(first, chunk, prefix);
  if (prefix.bytes.empty()) return false;
  decode_first(prefix.bytes + rest, chunk, prefix);
  return true;
}

// Input: an event, a newline, the next event's bytes after its prefix, a
// newline, a new stream's first event, a newline, a byte that picks a slot
// and a new string for it. The templates the second event made are moved
// onto the new stream's prefix (ChunkPrefix::reset() between the streams);
// the new stream's events with the second event's rest, as it was and
// with the slot's new string, must decode as they do alone.
void check_moved_templates(const std::string& input) {
  std::vector<std::string> lines;
  std::string tail;
  if (!split_lines(input, 3, lines, tail)) return;
  ChunkPrefix prefix;
  ChatCompletionChunk chunk;
  const std::string& rest = lines[1];
  if (!first_two(lines[0], rest, prefix, chunk)) return;
  prefix.reset();
  {
    // As a stream's first event: no template is made from it.
    std::string first = lines[2];
    taotoken::detail::ensure_padding(first);
    std::optional<Error> in_stream;
    (void)taotoken::detail::decode_chunk(first, chunk, in_stream, &prefix);
  }
  cross_check(prefix.bytes + rest, chunk, prefix);
  if (prefix.slots.empty() || tail.empty()) return;
  const auto& slot = prefix.slots[static_cast<unsigned char>(tail[0]) % prefix.slots.size()];
  const std::string t = prefix.chunk.raw_json;
  cross_check(t.substr(0, slot.open) + tail.substr(1) + t.substr(slot.close), chunk, prefix);
}

// Input: an event, a newline, the next event's bytes after its prefix (a
// usage chunk's, say), a newline, then digits. That second event makes the
// counts template; the same event with each integer literal after the
// prefix replaced by the next run of the input's digits (up to 20, any
// leading zeros, or none: then a '-') must decode as it does alone.
void check_counts(const std::string& input) {
  std::vector<std::string> lines;
  std::string source;
  if (!split_lines(input, 2, lines, source)) return;
  ChunkPrefix prefix;
  ChatCompletionChunk chunk;
  const std::string& rest = lines[1];
  if (!first_two(lines[0], rest, prefix, chunk) || prefix.counts.raw_json.empty()) return;
  std::string changed = prefix.bytes;
  std::size_t src = 0;
  for (std::size_t i = 0; i < rest.size();) {
    const char ch = rest[i];
    if (ch >= '0' && ch <= '9') {
      std::size_t j = i;
      while (j < rest.size() && rest[j] >= '0' && rest[j] <= '9') ++j;
      std::string digits;
      while (src < source.size() && digits.size() < 20 && source[src] >= '0' && source[src] <= '9')
        digits += source[src++];
      if (src < source.size()) ++src;  // (the separator)
      changed += digits.empty() ? std::string("-") : digits;
      i = j;
    } else {
      changed += ch;
      ++i;
    }
  }
  cross_check(changed, chunk, prefix);
}

// Input: a stream's first event, a newline, the next stream's first event,
// a newline, that stream's next event after its prefix. The first makes
// the first-event template; the second, decoded with it after reset(),
// must decode as it does alone, and so must the third after the prefix
// the second made (from the template or not).
void check_first(const std::string& input) {
  std::vector<std::string> lines;
  std::string rest;
  if (!split_lines(input, 2, lines, rest)) return;
  ChunkPrefix prefix;
  ChatCompletionChunk chunk;
  {
    std::string first = lines[0];
    taotoken::detail::ensure_padding(first);
    std::optional<Error> in_stream;
    (void)taotoken::detail::decode_chunk(first, chunk, in_stream, &prefix);
  }
  if (prefix.first.raw_json.empty()) return;
  prefix.reset();
  cross_check(lines[1], chunk, prefix);
  if (prefix.bytes.empty()) return;
  cross_check(prefix.bytes + rest, chunk, prefix);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  using namespace taotoken::detail;
  {
    std::string body = input;
    (void)decode_chat_completion(body);
  }
  {
    std::string body = input;
    std::optional<taotoken::Error> in_stream;
    (void)decode_chunk(body, in_stream);
  }
  check_prefix_reuse(input);
  check_template(input);
  check_moved_templates(input);
  check_counts(input);
  check_first(input);
  {
    std::string body = input;
    (void)decode_stream_error(body);
  }
  {
    std::string body = input;
    (void)decode_models(body);
  }
  {
    std::string body = input;
    (void)decode_error_response(500, "application/json", body);
  }
  (void)fill_default_model(input, "m");
  (void)parse_retry_after(&input, &input);
  (void)excerpt(input);
  return 0;
}
