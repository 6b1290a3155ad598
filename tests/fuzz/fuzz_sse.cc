// libFuzzer target: the SSE decoder and the stream assembler (which parses
// every event's JSON). The first byte picks how the input is split into
// feeds, so framing across arbitrary boundaries is explored too.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "sse.h"
#include "stream_assembler.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t step = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  taotoken::detail::SseDecoder decoder;
  taotoken::detail::StreamAssembler assembler;
  while (!in.empty()) {
    const std::size_t n = step < in.size() ? step : in.size();
    decoder.feed(in.substr(0, n), [&](const taotoken::detail::SseEvent& ev) {
      assembler.on_event(ev);
      return true;
    });
    in.remove_prefix(n);
  }
  assembler.on_end(decoder);
  (void)assembler.assemble();
  (void)decoder.pending_data();
  return 0;
}
