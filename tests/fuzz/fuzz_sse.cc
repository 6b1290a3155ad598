// libFuzzer target: the SSE decoder and the stream assembler (which parses
// every event's JSON). The first byte picks how the input is split into
// feeds (1 to 64 bytes, 65 to 1024, or whole: whole events with room after
// them take the decoder's no-copy path), so framing across arbitrary
// boundaries is explored too. Each input runs through a fresh decoder and
// assembler and through a recycled pair (reset after a first pass over the
// same input, as a client recycles them): the two must agree; then the
// recycled pair, reset again, must decode a known good stream exactly as a
// fresh pair does (nothing of the input may leak into the next stream).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "chunk_describe.h"
#include "codec.h"
#include "sse.h"
#include "stream_assembler.h"

namespace {

struct Outcome {
  std::size_t chunks = 0;
  bool done = false;
  std::string error;  // message, empty when none
  std::string text;
};

// With `check_chunks`, every chunk is read as a consumer reads it and must
// equal its raw_json decoded alone (the assembler's template and deferred
// paths against the plain decoder), and a stream of choice 0 alone must
// assemble the text its chunks carry (the merge that skips the chunk).
Outcome run(taotoken::detail::SseDecoder& decoder, taotoken::detail::StreamAssembler& assembler,
            std::string_view in, std::size_t step, bool check_chunks = false) {
  Outcome o;
  std::string text;
  bool choice0_only = true;
  while (!in.empty()) {
    const std::size_t n = step < in.size() ? step : in.size();
    decoder.feed(in.substr(0, n), [&](const taotoken::detail::SseEvent& ev) {
      if (assembler.on_event(ev) != taotoken::detail::StreamAssembler::Step::chunk) return true;
      ++o.chunks;
      if (!check_chunks) return true;
      const taotoken::ChatCompletionChunk& c = assembler.chunk();
      if (c.raw_json != ev.data) std::abort();  // (a stale chunk agrees with its stale raw_json)
      std::string data = c.raw_json;
      std::optional<taotoken::Error> in_stream;
      auto alone = taotoken::detail::decode_chunk(data, in_stream);
      if (!alone.ok() || test_support::describe(*alone) != test_support::describe(c)) std::abort();
      for (const auto& d : c.choices) {
        choice0_only = choice0_only && d.index == 0;
        if (d.content) text += *d.content;
      }
      return true;
    });
    in.remove_prefix(n);
  }
  assembler.on_end(decoder);
  o.done = assembler.done();
  if (assembler.error()) o.error = assembler.error()->message().empty() ? "(error)" : assembler.error()->message();
  o.text = assembler.assemble().text();
  // (A failed stream may have merged the failing event's text.)
  if (check_chunks && choice0_only && o.error.empty() && o.text != text) std::abort();
  (void)decoder.pending_data();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned pick = data[0];
  const std::size_t step = pick < 128 ? 1 + pick % 64 : pick < 192 ? 65 + (pick % 64) * 15 : size;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  taotoken::detail::SseDecoder fresh_decoder, decoder;
  taotoken::detail::StreamAssembler fresh_assembler, assembler;
  const Outcome fresh = run(fresh_decoder, fresh_assembler, in, step);
  (void)run(decoder, assembler, in, step);
  decoder.reset();
  assembler.reset();
  const Outcome again = run(decoder, assembler, in, step, /*check_chunks=*/true);
  auto same = [](const Outcome& a, const Outcome& b) {
    return a.chunks == b.chunks && a.done == b.done && a.error == b.error && a.text == b.text;
  };
  if (!same(again, fresh)) std::abort();
  static const std::string good = [] {
    const std::string env = R"(data: {"id":"g","object":"chat.completion.chunk","created":1,"model":"m","choices":)";
    return env + R"([{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})" "\n\n" + env +
           R"([{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]})" "\n\n" + env +
           R"([{"index":0,"delta":{"content":"lo"},"finish_reason":null}]})" "\n\n" + env +
           R"([{"index":0,"delta":{"content":"!"},"finish_reason":null}]})" "\n\n" + env +
           R"([{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}})" "\n\n"
           "data: [DONE]\n\n";
  }();
  static const Outcome good_fresh = [] {
    taotoken::detail::SseDecoder d;
    taotoken::detail::StreamAssembler a;
    return run(d, a, good, good.size());
  }();
  decoder.reset();
  assembler.reset();
  if (!same(run(decoder, assembler, good, step), good_fresh)) std::abort();
  return 0;
}
