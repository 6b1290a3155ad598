// The non-streaming request and canned upstream response shared by the
// benchmarks that call TaotokenClient::chat() against nginx (bench_seq.cc,
// bench_recorders.cc): bench/run serves `taotoken_bench_seq --print-response`
// on /v1/chat/completions, and both binaries check the decoded text.

#ifndef TAOTOKEN_BENCH_CHAT_H
#define TAOTOKEN_BENCH_CHAT_H

#include <curl/curl.h>

#include <string>

#include "taotoken/client.h"

namespace bench {

constexpr const char* kModel = "gpt-4o-mini";
constexpr const char* kSystem = "You are a concise assistant for backend engineers.";
constexpr const char* kUser = "In two sentences, why does HTTP keep-alive matter for an API client?";

// Plain ASCII without quotes, backslashes, apostrophes or dollar signs: it is
// embedded in JSON here and in an nginx `return` string by bench/run.
constexpr const char* kContent =
    "Keep-alive reuses one TCP connection for many requests, so each call skips the handshake and "
    "slow start. With TLS it also avoids a full handshake per request.";

// The usage block of the canned response (checked against what recorders wrote).
constexpr long kPromptTokens = 38;
constexpr long kCompletionTokens = 61;
constexpr long kTotalTokens = 99;

// The body a careful hand-written program sends: built once, byte-identical
// to what the library encodes for the ChatRequest below (checked at start of
// taotoken_bench_seq).
inline std::string raw_request_body() {
  return std::string("{\"model\":\"") + kModel + "\",\"messages\":[{\"role\":\"system\",\"content\":\"" + kSystem +
         "\"},{\"role\":\"user\",\"content\":\"" + kUser + "\"}]}";
}

inline taotoken::ChatRequest chat_request() {
  taotoken::ChatRequest req;
  req.model = kModel;
  req.messages.push_back(taotoken::Message::system(kSystem));
  req.messages.push_back(taotoken::Message::user(kUser));
  return req;
}

// The raw baselines' request: what a careful hand-written program sends,
// plus what the library sends besides (its User-Agent, and
// `Accept-Encoding: gzip`: compressed responses are a feature, and libcurl
// sets up its decoder on every transfer), so both sides put the same request
// on the wire (checked at start). Free the list with curl_slist_free_all.
inline curl_slist* raw_headers(const std::string& api_key, const char* accept) {
  curl_slist* h = curl_slist_append(nullptr, ("Authorization: Bearer " + api_key).c_str());
  h = curl_slist_append(h, "Content-Type: application/json");
  h = curl_slist_append(h, (std::string("Accept: ") + accept).c_str());
  return curl_slist_append(h, "User-Agent: taotoken-cpp/" TAOTOKEN_VERSION_STRING);
}

// An easy handle with the raw baselines' options, set once: URL, headers,
// body (`body` must outlive the handle), gzip, and NOSIGNAL (without it
// libcurl swaps the SIGPIPE handler around every transfer, 6 rt_sigaction
// calls per request; the library sets it too, so leaving it out would
// handicap the raw side).
inline CURL* raw_easy(const std::string& url, const std::string& body, curl_slist* headers,
                      curl_write_callback on_write, void* write_data) {
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "gzip");
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, write_data);
  return h;
}

// A realistic non-streaming chat.completion (~750 bytes, with usage).
inline std::string canned_response() {
  return std::string(
             "{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion\","
             "\"created\":1741569952,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,"
             "\"message\":{\"role\":\"assistant\",\"content\":\"") +
         kContent +
         "\",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
         "\"usage\":{\"prompt_tokens\":38,\"completion_tokens\":61,\"total_tokens\":99,"
         "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
         "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
         "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},"
         "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_06737a9306\"}";
}

// One chat() call; false (with a message) unless it succeeded with the
// expected content.
inline bool chat_once(const taotoken::TaotokenClient& client, const taotoken::ChatRequest& req, std::string& why) {
  auto r = client.chat(req);
  if (!r.ok()) {
    why = r.error().describe();
    return false;
  }
  if (r->text() != kContent) {
    why = "unexpected content: " + r->text().substr(0, 80);
    return false;
  }
  return true;
}

}  // namespace bench

#endif  // TAOTOKEN_BENCH_CHAT_H
