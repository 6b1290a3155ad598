// The smallest useful program: one chat completion.
// Run with TAOTOKEN_API_KEY set (or TAOTOKEN_BASE_URL pointing at taotoken-sim).
#include <iostream>

#include "taotoken/taotoken.h"

int main() {
  taotoken::TaotokenClient client;  // reads TAOTOKEN_API_KEY / TAOTOKEN_BASE_URL
  taotoken::ChatRequest request;
  request.messages.push_back(taotoken::Message::user("Say hello in five words."));
  auto reply = client.chat(request);
  if (!reply) {
    std::cerr << reply.error().describe() << "\n";
    return 1;
  }
  std::cout << reply->text() << "\n";
}
