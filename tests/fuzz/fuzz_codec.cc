// libFuzzer target: every decoder of upstream bytes (completion, chunk,
// error body, models list, Retry-After) and forward()'s model filling.
#include <cstddef>
#include <cstdint>
#include <string>

#include "codec.h"

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
