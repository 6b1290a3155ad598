// Every field of a ChatCompletionChunk as text, so two chunks are equal
// exactly when their descriptions are (and a failed comparison shows what
// differs). Shared by the decoder's unit tests and the streaming tests.
#ifndef TAOTOKEN_TESTS_SUPPORT_CHUNK_DESCRIBE_H
#define TAOTOKEN_TESTS_SUPPORT_CHUNK_DESCRIBE_H

#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <string>

#include "taotoken/stream.h"

namespace test_support {

inline std::string show(const std::optional<std::string>& s) { return s ? "\"" + *s + "\"" : "(unset)"; }
inline std::string show(const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) : "(unset)"; }
inline std::string show(const std::optional<double>& v) { return v ? fmt::format("{}", *v) : "(unset)"; }

inline std::string describe(const taotoken::ChatCompletionChunk& c) {
  std::string out = fmt::format("id={} object={} created={} model={} fp={} provider={} raw={}\n", show(c.id),
                                show(c.object), c.created, show(c.model), show(c.system_fingerprint),
                                show(c.provider), show(c.raw_json));
  if (c.usage) {
    const taotoken::Usage& u = *c.usage;
    out += fmt::format("usage prompt={} completion={} total={} cached={} reasoning={} cost={}\n",
                       show(u.prompt_tokens), show(u.completion_tokens), show(u.total_tokens),
                       show(u.cached_tokens), show(u.reasoning_tokens), show(u.cost));
  } else {
    out += "usage (unset)\n";
  }
  for (const auto& d : c.choices) {
    out += fmt::format("choice index={} role={} content={} refusal={} reasoning={} finish={} logprobs={}\n",
                       d.index, show(d.role), show(d.content), show(d.refusal), show(d.reasoning),
                       show(d.finish_reason), show(d.logprobs_json));
    for (const auto& t : d.tool_calls)
      out += fmt::format("  tool index={} id={} type={} name={} arguments={}\n", t.index, show(t.id),
                         show(t.type), show(t.name), show(t.arguments));
  }
  return out;
}

}  // namespace test_support

#endif  // TAOTOKEN_TESTS_SUPPORT_CHUNK_DESCRIBE_H
