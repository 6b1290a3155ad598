#include "stream_assembler.h"

#include <simdjson.h>

#include <algorithm>

#include "codec.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

namespace {

// Appends the raw elements of `logprobs.<field>` (an array) to `out`.
void collect_logprobs(const std::string& logprobs_json, const char* field, std::vector<std::string>& out) {
  thread_local simdjson::dom::parser parser;  // a parser allocates: one per thread, not per chunk
  simdjson::dom::element root;
  if (parser.parse(logprobs_json).get(root) != simdjson::SUCCESS) return;
  simdjson::dom::array arr;
  if (root[field].get_array().get(arr) != simdjson::SUCCESS) return;
  for (auto el : arr) out.push_back(simdjson::minify(el));
}

}  // namespace

StreamAssembler::ChoiceAcc& StreamAssembler::choice(int index) {
  for (std::size_t i = 0; i < n_choices_; ++i)
    if (choices_[i].index == index) return choices_[i];
  if (n_choices_ == choices_.size()) choices_.emplace_back();
  ChoiceAcc& c = choices_[n_choices_++];
  c.index = index;
  c.role.reset();
  c.finish_reason.reset();
  c.content.clear();
  c.refusal.clear();
  c.reasoning.clear();
  c.tools.clear();
  c.logprobs_content.clear();
  c.logprobs_refusal.clear();
  c.has_logprobs = false;
  return c;
}

StreamAssembler::Step StreamAssembler::on_event(const SseEvent& ev) {
  if (finished()) return Step::ignored;
  if (ev.type == "error") {
    scratch_.assign(ev.data);
    error_ = decode_stream_error(scratch_);
    return Step::failed;
  }
  if (ev.type != "message") {
    ++ignored_;
    return Step::ignored;
  }
  if (ev.data == "[DONE]") {
    done_ = true;
    return Step::done;
  }
  // SseDecoder leaves padding after the data, so it is parsed in place.
  // (The error slots live in the assembler: a std::optional<Error> made per
  // event was a 416-byte `rep stos`, the costliest line of this function.)
  const bool held = held_;
  held_ = true;  // (a failed decode leaves the chunk as it left it too)
  event_ = ev.data;
  deferred_ = false;  // (stale now: any decode rewrites the chunk, or defers again)
  if (!decode_chunk_into(ev.data, *chunk_, in_stream_, &prefix_, chunk_error_, held, &deferred_)) {
    error_ = std::move(chunk_error_);
    chunk_error_.reset();
    in_stream_.reset();  // an error object decoded before the failure
    return Step::failed;
  }
  if (!deferred_ || !apply_hit()) {
    settle();
    apply(*chunk_);
  }
  if (in_stream_) {
    error_ = std::move(in_stream_);
    in_stream_.reset();
    return Step::failed;
  }
  return Step::chunk;
}

bool StreamAssembler::apply_hit() {
  const ChatCompletionChunk& t = prefix_.chunk;
  if (simple_generation_ != prefix_.generation) {
    simple_generation_ = prefix_.generation;
    simple_ = false;
    if (t.choices.size() == 1 && t.choices[0].tool_calls.empty() && !t.choices[0].logprobs_json) {
      const ChoiceDelta& d = t.choices[0];
      const int texts = int(d.content.has_value()) + int(d.refusal.has_value()) + int(d.reasoning.has_value());
      simple_ = texts == 1;
    }
  }
  const ChunkPrefix::StringSlot& slot = prefix_.slots[prefix_.hit_slot];
  if (!simple_ || slot.field == ChunkPrefix::StringSlot::arguments) return false;
  // (With one text in the chunk, the slot is that text's.)
  ChoiceAcc& acc = choice(t.choices[0].index);
  const std::string_view value = prefix_.hit_value;
  switch (slot.field) {
    case ChunkPrefix::StringSlot::content: acc.content.add(value); break;
    case ChunkPrefix::StringSlot::refusal: acc.refusal.add(value); break;
    case ChunkPrefix::StringSlot::reasoning: acc.reasoning.add(value); break;
    case ChunkPrefix::StringSlot::arguments: break;
  }
  if (!value.empty()) has_token_ = true;
  return true;
}

void StreamAssembler::reset() {
  deferred_ = false;
  event_ = {};
  prefix_.reset();  // the templates stay: the next stream's chunks may match them
  n_choices_ = 0;
  if (choices_.size() > 4) choices_.resize(4);  // an unusual n keeps nothing beyond that
  id_.clear();
  object_ = "chat.completion";
  model_.clear();
  created_ = 0;
  fingerprint_.reset();
  provider_.reset();
  usage_.reset();
  error_.reset();
  in_stream_.reset();
  chunk_error_.reset();
  done_ = false;
  has_token_ = false;
  ignored_ = 0;
}

std::size_t StreamAssembler::retained_bytes() const noexcept {
  auto chunk_bytes = [](const ChatCompletionChunk& c) {
    std::size_t n = c.raw_json.capacity() + c.id.capacity() + c.model.capacity();
    for (const auto& d : c.choices) {
      for (const auto* t : {&d.content, &d.refusal, &d.reasoning}) n += *t ? (*t)->capacity() : 0;
      for (const auto& tool : d.tool_calls) n += tool.arguments.capacity();
    }
    return n;
  };
  std::size_t texts = 0;
  for (const auto& c : choices_) texts += c.content.s.capacity() + c.refusal.s.capacity() + c.reasoning.s.capacity();
  std::size_t values = 0;
  for (const auto& v : prefix_.first_values) values += v.capacity();
  return chunk_bytes(*chunk_) + chunk_bytes(prefix_.chunk) + chunk_bytes(prefix_.repeat) + chunk_bytes(prefix_.counts) +
         chunk_bytes(prefix_.first) + values + prefix_.bytes.capacity() + prefix_.scratch.capacity() +
         prefix_.unescaped.capacity() + scratch_.capacity() + texts;
}

void StreamAssembler::on_end(const SseDecoder& decoder) {
  if (finished()) return;
  if (decoder.has_unterminated_tail() && decoder.pending_data() == "[DONE]") done_ = true;
}

void StreamAssembler::apply(const ChatCompletionChunk& c) {
  if (id_.empty()) id_ = c.id;
  if (model_.empty()) model_ = c.model;
  if (created_ == 0) created_ = c.created;
  if (!fingerprint_ && c.system_fingerprint) fingerprint_ = c.system_fingerprint;
  if (c.provider) provider_ = c.provider;
  if (c.usage) usage_ = c.usage;  // the last one wins
  for (const auto& d : c.choices) {
    ChoiceAcc& acc = choice(d.index);
    if (d.role && !acc.role) acc.role = d.role;
    if ((d.content && !d.content->empty()) || (d.refusal && !d.refusal->empty()) ||
        (d.reasoning && !d.reasoning->empty()) || !d.tool_calls.empty())
      has_token_ = true;
    acc.content.add(d.content);
    acc.refusal.add(d.refusal);
    acc.reasoning.add(d.reasoning);
    if (d.finish_reason) acc.finish_reason = d.finish_reason;
    for (const auto& t : d.tool_calls) {
      auto it = std::find_if(acc.tools.begin(), acc.tools.end(), [&](const ToolAcc& x) { return x.index == t.index; });
      if (it == acc.tools.end()) {
        acc.tools.push_back({t.index, ToolCall{}});
        it = std::prev(acc.tools.end());
      }
      ToolCall& call = it->call;
      if (t.id && call.id.empty()) call.id = *t.id;
      if (t.type && !t.type->empty()) call.type = *t.type;
      if (t.name && call.name.empty()) call.name = *t.name;
      call.arguments += t.arguments;
    }
    if (d.logprobs_json) {
      acc.has_logprobs = true;
      collect_logprobs(*d.logprobs_json, "content", acc.logprobs_content);
      collect_logprobs(*d.logprobs_json, "refusal", acc.logprobs_refusal);
    }
  }
}

ChatCompletion StreamAssembler::assemble() const {
  ChatCompletion out;
  out.id = id_;
  out.object = object_;
  out.created = created_;
  out.model = model_;
  out.system_fingerprint = fingerprint_;
  out.provider = provider_;
  out.usage = usage_;
  out.streamed = true;
  // In index order (one choice, the usual case, needs no sorting).
  const ChoiceAcc* one = n_choices_ == 1 ? &choices_[0] : nullptr;
  std::vector<const ChoiceAcc*> sorted;
  if (!one) {
    for (std::size_t i = 0; i < n_choices_; ++i) sorted.push_back(&choices_[i]);
    std::sort(sorted.begin(), sorted.end(), [](const ChoiceAcc* a, const ChoiceAcc* b) { return a->index < b->index; });
  }
  out.choices.reserve(n_choices_);
  auto add = [&out](const ChoiceAcc* c) {
    Choice ch;
    ch.index = c->index;
    ch.message.role = c->role.value_or("assistant");
    // An empty first delta ("content": "") followed by tool calls means no text.
    if (c->content.set && !(c->content.s.empty() && !c->tools.empty())) ch.message.content = c->content.s;
    ch.message.refusal = c->refusal.get();
    ch.message.reasoning = c->reasoning.get();
    if (!c->tools.empty()) {
      std::vector<const ToolAcc*> tools;
      for (const auto& t : c->tools) tools.push_back(&t);
      std::sort(tools.begin(), tools.end(), [](const ToolAcc* a, const ToolAcc* b) { return a->index < b->index; });
      for (const ToolAcc* t : tools) ch.message.tool_calls.push_back(t->call);
    }
    ch.finish_reason = c->finish_reason;
    if (c->has_logprobs) {
      std::string lp = "{\"content\":[";
      for (std::size_t i = 0; i < c->logprobs_content.size(); ++i) lp += (i ? "," : "") + c->logprobs_content[i];
      lp += "],\"refusal\":[";
      for (std::size_t i = 0; i < c->logprobs_refusal.size(); ++i) lp += (i ? "," : "") + c->logprobs_refusal[i];
      lp += "]}";
      ch.logprobs_json = std::move(lp);
    }
    out.choices.push_back(std::move(ch));
  };
  if (one) add(one);
  for (const ChoiceAcc* c : sorted) add(c);
  return out;
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE
