// A custom retry policy: retry only rate limits, up to 5 times, waiting what
// the server asks for or 2 s. Also logs each retry through the hook.
#include <iostream>

#include "taotoken/taotoken.h"

class RateLimitOnly final : public taotoken::RetryPolicy {
 public:
  std::unique_ptr<taotoken::RetryPolicy> clone() const override { return std::make_unique<RateLimitOnly>(); }
  std::optional<std::chrono::milliseconds> on_failure(const taotoken::Error& error, int attempt) override {
    if (error.kind() != taotoken::ErrorKind::rate_limited || attempt > 5) return std::nullopt;
    return error.retry_after.value_or(std::chrono::seconds(2));
  }
};

int main() {
  taotoken::ClientOptions options;  // TAOTOKEN_API_KEY / TAOTOKEN_BASE_URL from the environment
  options.retry_policy = std::make_shared<RateLimitOnly>();
  options.timeout = std::chrono::seconds(60);  // total deadline, waits included
  options.on_retry = [](const taotoken::RetryEvent& e) {
    std::cerr << e.request_id << ": attempt " << e.attempt << " failed (" << e.error->message() << "), retrying in "
              << e.delay.count() << " ms\n";
  };
  taotoken::TaotokenClient client(options);
  taotoken::ChatRequest request;
  request.messages.push_back(taotoken::Message::user("Name three prime numbers."));
  auto reply = client.chat(request);
  if (!reply) {
    std::cerr << reply.error().describe() << "\n";
    return 1;
  }
  std::cout << reply->text() << "\n(" << reply->attempts << " attempt(s))\n";
}
