// End-to-end sequential benchmark: a hand-written libcurl keep-alive loop
// versus TaotokenClient::chat(), same upstream, same request body.
//
// Usage:
//   taotoken_bench_seq --base-url http://127.0.0.1:PORT/v1
//                      [--rounds 15] [--requests 2000] [--warmup 1000]
//                      [--status-url http://127.0.0.1:PORT/nginx_status]
//   taotoken_bench_seq --print-response   # the canned upstream body
//   taotoken_bench_seq --print-request    # the request body both sides send
//   --only raw|chat runs one side alone (for profiling); no ratio then.
//
// The two loops run alternately in each round (the order flips every
// round), so machine noise hits both sides alike. Output:
//   RESULT name=raw_curl_seq rps=<x> us_per_req=<y>
//   RESULT name=chat_seq rps=<x> us_per_req=<y>
//   RESULT name=chat_seq_vs_raw ratio=<chat rps / raw rps>
// rps is the median of the per-round rates; the ratio is chat rps / raw rps
// of those medians. Exit status 1 when any request fails, 2 on bad usage.

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench_chat.h"
#include "bench_common.h"
#include "taotoken/client.h"

namespace {

using bench::append_body;
using bench::canned_response;
using bench::chat_once;
using bench::chat_request;
using bench::raw_request_body;
using bench::Captured;
using bench::CaptureServer;
using bench::print_head;

// ---- the raw libcurl loop --------------------------------------------------

class RawCurl {
 public:
  RawCurl(const std::string& url, const std::string& body, const std::string& api_key) : body_(body) {
    headers_ = bench::raw_headers(api_key, "application/json");
    h_ = bench::raw_easy(url, body_, headers_, &append_body, &response_);
    response_.reserve(4096);
  }
  ~RawCurl() {
    curl_easy_cleanup(h_);
    curl_slist_free_all(headers_);
  }
  RawCurl(const RawCurl&) = delete;
  RawCurl& operator=(const RawCurl&) = delete;

  // One request; false (with a message) unless it got a 200 with a body.
  bool once(std::string& why) {
    response_.clear();
    const CURLcode rc = curl_easy_perform(h_);
    if (rc != CURLE_OK) {
      why = std::string("curl: ") + curl_easy_strerror(rc);
      return false;
    }
    long status = 0;
    curl_easy_getinfo(h_, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 || response_.empty()) {
      why = "HTTP " + std::to_string(status) + ", " + std::to_string(response_.size()) + " body bytes";
      return false;
    }
    return true;
  }
  const std::string& response() const { return response_; }

 private:
  std::string body_;
  std::string response_;
  CURL* h_ = nullptr;
  curl_slist* headers_ = nullptr;
};

// ---- same body on both sides -----------------------------------------------

// Sends one request from each side to a capture server; false when the
// bodies differ.
bool check_same_body(const std::string& raw_body, const taotoken::ChatRequest& req, const std::string& api_key) {
  Captured lib, raw;
  {
    CaptureServer server(canned_response(), "application/json");
    std::thread t([&] { lib = server.serve_one(); });
    taotoken::ClientOptions o;
    o.base_url = "http://127.0.0.1:" + std::to_string(server.port()) + "/v1";
    o.api_key = api_key;
    taotoken::TaotokenClient client(o);
    std::string why;
    const bool ok = chat_once(client, req, why);
    t.join();
    if (!ok) {
      std::fprintf(stderr, "body check: chat() failed: %s\n", why.c_str());
      return false;
    }
  }
  {
    CaptureServer server(canned_response(), "application/json");
    std::thread t([&] { raw = server.serve_one(); });
    RawCurl curl("http://127.0.0.1:" + std::to_string(server.port()) + "/v1/chat/completions", raw_body, api_key);
    std::string why;
    const bool ok = curl.once(why);
    t.join();
    if (!ok) {
      std::fprintf(stderr, "body check: raw request failed: %s\n", why.c_str());
      return false;
    }
  }
  print_head("raw_curl", raw.head);
  print_head("chat", lib.head);
  if (lib.body != raw.body || raw.body != raw_body) {
    std::fprintf(stderr, "body check: the bodies differ\n  chat: %s\n  raw:  %s\n", lib.body.c_str(),
                 raw.body.c_str());
    return false;
  }
  std::printf("INFO same request body on both sides (%zu bytes): %s\n", raw_body.size(), raw_body.c_str());
  return true;
}

// ---- driver ----------------------------------------------------------------

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: taotoken_bench_seq --base-url URL [--rounds N] [--requests N] [--warmup N] "
               "[--status-url URL] [--only raw|chat]\n       taotoken_bench_seq --print-response | --print-request\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string base_url, status_url, only;
  long rounds = 15, requests = 2000, warmup = 1000;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--print-response") {
      std::fputs(canned_response().c_str(), stdout);
      return 0;
    } else if (a == "--print-request") {  // bench/run's proxy part sends it with wrk
      std::fputs(raw_request_body().c_str(), stdout);
      return 0;
    } else if (a == "--base-url" && has_value) {
      base_url = argv[++i];
    } else if (a == "--status-url" && has_value) {
      status_url = argv[++i];
    } else if (a == "--only" && has_value) {
      only = argv[++i];
      if (only != "raw" && only != "chat") usage();
    } else if (a == "--rounds" && has_value) {
      rounds = bench::parse_count(argv[++i], usage);
    } else if (a == "--requests" && has_value) {
      requests = bench::parse_count(argv[++i], usage);
    } else if (a == "--warmup" && has_value) {
      warmup = bench::parse_count(argv[++i], usage);
    } else {
      usage();
    }
  }
  if (base_url.empty()) usage();
  while (!base_url.empty() && base_url.back() == '/') base_url.pop_back();

  curl_global_init(CURL_GLOBAL_DEFAULT);
  const std::string api_key = "bench-key";
  const std::string raw_body = raw_request_body();
  const taotoken::ChatRequest req = chat_request();
  if (!check_same_body(raw_body, req, api_key)) return 1;

  taotoken::ClientOptions opts;
  opts.base_url = base_url;
  opts.api_key = api_key;
  const taotoken::TaotokenClient client(opts);
  RawCurl raw(base_url + "/chat/completions", raw_body, api_key);

  std::string why;
  auto run_raw = [&](long n) {
    for (long i = 0; i < n; ++i)
      if (!raw.once(why)) {
        std::fprintf(stderr, "raw_curl_seq: request failed: %s\n", why.c_str());
        std::exit(1);
      }
  };
  auto run_chat = [&](long n) {
    for (long i = 0; i < n; ++i)
      if (!chat_once(client, req, why)) {
        std::fprintf(stderr, "chat_seq: request failed: %s\n", why.c_str());
        std::exit(1);
      }
  };
  const bool do_raw = only != "chat", do_chat = only != "raw";

  // Warm-up: connections, allocator, caches, CPU frequency.
  if (do_raw) run_raw(warmup);
  if (do_chat) run_chat(warmup);
  if (do_raw && raw.response() != canned_response()) {
    std::fprintf(stderr, "raw_curl_seq: the upstream does not serve the expected body (%zu bytes)\n",
                 raw.response().size());
    return 1;
  }
  std::printf("INFO upstream %s, response %zu bytes, %ld rounds x %ld requests per side, warm-up %ld\n",
              base_url.c_str(), canned_response().size(), rounds, requests, warmup);

  bench::run_interleaved("raw_curl_seq", "chat_seq", 0.90, rounds, requests, do_raw, do_chat, run_raw, run_chat, status_url);
  curl_global_cleanup();
  return 0;
}
