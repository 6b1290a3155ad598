// Concurrency benchmarks of the async engine.
//
// 1. Requests in flight: a hand-written libcurl multi loop keeping C
//    transfers in flight versus TaotokenClient::chat_async() keeping C calls
//    in flight (each completion starts the next), same upstream, same body,
//    interleaved rounds:
//      taotoken_bench_async --base-url http://127.0.0.1:PORT/v1
//                           [--concurrency 64] [--rounds 15] [--requests 4000]
//                           [--warmup 2000] [--status-url URL]
//    RESULT name=raw_curl_multi_c64 rps=...
//    RESULT name=chat_async_c64 rps=...
//    RESULT name=chat_async_c64_vs_raw ratio=... target=0.90 met=yes|no
//
// 2. Slow streams: N chat_stream_async() calls at once against an upstream
//    that trickles its chunks (taotoken-sim with a fragment delay), peak
//    resident memory of this process:
//      taotoken_bench_async --streams 1000 --base-url http://127.0.0.1:PORT/v1
//    RESULT name=streams_1000 streams=1000 ok=1000 chunks=... seconds=...
//           baseline_rss_kb=... peak_rss_kb=... target_kb=65536 met=yes|no
//
// Exit status 1 when any request fails or returns the wrong content.

#include <curl/curl.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "bench_chat.h"
#include "bench_common.h"
#include "taotoken/client.h"

namespace {

using bench::canned_response;
using bench::chat_request;
using bench::raw_request_body;

// ---- raw libcurl multi -----------------------------------------------------

class RawMulti {
 public:
  RawMulti(const std::string& url, const std::string& body, const std::string& api_key, long concurrency)
      : body_(body), slots_(static_cast<std::size_t>(concurrency)) {
    multi_ = curl_multi_init();
    headers_ = bench::raw_headers(api_key, "application/json");
    for (auto& s : slots_) {
      s.h = bench::raw_easy(url, body_, headers_, &bench::append_body, &s.response);
      curl_easy_setopt(s.h, CURLOPT_PRIVATE, static_cast<void*>(&s));
      s.response.reserve(4096);
    }
  }
  ~RawMulti() {
    for (auto& s : slots_) curl_easy_cleanup(s.h);
    curl_multi_cleanup(multi_);
    curl_slist_free_all(headers_);
  }
  RawMulti(const RawMulti&) = delete;
  RawMulti& operator=(const RawMulti&) = delete;

  // n requests, `concurrency` in flight; false on any failure.
  bool run(long n) {
    long started = 0, done = 0;
    for (auto& s : slots_) {
      if (started == n) break;
      s.response.clear();
      curl_multi_add_handle(multi_, s.h);
      ++started;
    }
    while (done < n) {
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
        if (m->msg != CURLMSG_DONE) continue;
        void* p = nullptr;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &p);
        auto* s = static_cast<Slot*>(p);
        long status = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        if (m->data.result != CURLE_OK || status != 200 || s->response != canned_response()) {
          std::fprintf(stderr, "raw_curl_multi: request failed: %s, HTTP %ld\n", curl_easy_strerror(m->data.result),
                       status);
          return false;
        }
        curl_multi_remove_handle(multi_, m->easy_handle);
        ++done;
        if (started < n) {
          s->response.clear();
          curl_multi_add_handle(multi_, s->h);
          ++started;
        }
      }
      if (done < n) curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
    }
    return true;
  }

 private:
  struct Slot {
    CURL* h = nullptr;
    std::string response;
  };
  std::string body_;
  CURLM* multi_ = nullptr;
  curl_slist* headers_ = nullptr;
  std::vector<Slot> slots_;
};

// ---- chat_async with C in flight -------------------------------------------

class AsyncDriver {
 public:
  AsyncDriver(const taotoken::TaotokenClient& client, taotoken::ChatRequest req) : client_(client), req_(std::move(req)) {}

  bool run(long n, long concurrency) {
    {
      std::lock_guard<std::mutex> g(mu_);
      target_ = n;
      done_ = 0;
      failed_ = false;
    }
    started_.store(0);
    for (long i = 0; i < concurrency && i < n; ++i) launch();
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait(g, [this] { return done_ == target_; });
    return !failed_;
  }

 private:
  void launch() {
    if (started_.fetch_add(1) >= target_) return;
    client_.chat_async(req_, [this](taotoken::Result<taotoken::ChatCompletion> r) {
      const bool bad = !r.ok() || r->text() != bench::kContent;
      if (bad) std::fprintf(stderr, "chat_async: %s\n", r.ok() ? "unexpected content" : r.error().describe().c_str());
      launch();  // the next call, from the loop thread
      std::lock_guard<std::mutex> g(mu_);
      if (bad) failed_ = true;
      if (++done_ == target_) cv_.notify_all();
    });
  }

  const taotoken::TaotokenClient& client_;
  taotoken::ChatRequest req_;
  std::atomic<long> started_{0};
  long target_ = 0;  // set before the first launch, read-only meanwhile
  std::mutex mu_;
  std::condition_variable cv_;
  long done_ = 0;
  bool failed_ = false;
};

// ---- slow streams ----------------------------------------------------------

long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0) return std::strtol(line.c_str() + n, nullptr, 10);
  return -1;
}

int run_streams(const std::string& base_url, long streams) {
  taotoken::ClientOptions o;
  o.base_url = base_url;
  o.api_key = "bench-key";
  o.retry_policy = taotoken::RetryPolicy::none();
  o.connect_timeout = std::chrono::seconds(60);
  taotoken::TaotokenClient client(o);
  // 60 words: the simulator echoes them as ~60 content chunks, trickled out.
  std::string words;
  for (int i = 0; i < 60; ++i) words += "word" + std::to_string(i) + " ";
  words.pop_back();
  taotoken::ChatRequest req;
  req.messages.push_back(taotoken::Message::user(words));
  const std::string expected = "Echo: " + words;

  const long baseline = status_kb("VmRSS:");
  std::mutex mu;
  std::condition_variable cv;
  long done = 0, ok = 0;
  std::atomic<long> chunks{0};
  const auto t0 = bench::Clock::now();
  for (long i = 0; i < streams; ++i) {
    client.chat_stream_async(
        req,
        [&](const taotoken::ChatCompletionChunk&) {
          chunks.fetch_add(1, std::memory_order_relaxed);
          return true;
        },
        [&](taotoken::Result<taotoken::ChatCompletion> r) {
          const bool good = r.ok() && r->text() == expected;
          if (!good) std::fprintf(stderr, "stream: %s\n", r.ok() ? "unexpected content" : r.error().describe().c_str());
          std::lock_guard<std::mutex> g(mu);
          if (good) ++ok;
          if (++done == streams) cv.notify_all();
        });
  }
  {
    std::unique_lock<std::mutex> g(mu);
    cv.wait(g, [&] { return done == streams; });
  }
  const std::chrono::duration<double> dt = bench::Clock::now() - t0;
  const long peak = status_kb("VmHWM:");
  const long target_kb = 64 * 1024;
  std::printf("RESULT name=streams_%ld streams=%ld ok=%ld chunks=%ld seconds=%.2f baseline_rss_kb=%ld peak_rss_kb=%ld "
              "target_kb=%ld met=%s\n",
              streams, streams, ok, chunks.load(), dt.count(), baseline, peak, target_kb,
              peak >= 0 && peak < target_kb ? "yes" : "no");
  return ok == streams ? 0 : 1;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: taotoken_bench_async --base-url URL [--concurrency 64] [--rounds 15] [--requests 4000] "
               "[--warmup 2000] [--status-url URL]\n"
               "       taotoken_bench_async --streams N --base-url URL\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string base_url, status_url, only;  // --only raw|chat: one side alone (profiling)
  long rounds = 15, requests = 4000, warmup = 2000, concurrency = 64, streams = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--base-url" && has_value) base_url = argv[++i];
    else if (a == "--status-url" && has_value) status_url = argv[++i];
    else if (a == "--rounds" && has_value) rounds = bench::parse_count(argv[++i], usage);
    else if (a == "--requests" && has_value) requests = bench::parse_count(argv[++i], usage);
    else if (a == "--warmup" && has_value) warmup = bench::parse_count(argv[++i], usage);
    else if (a == "--concurrency" && has_value) concurrency = bench::parse_count(argv[++i], usage);
    else if (a == "--streams" && has_value) streams = bench::parse_count(argv[++i], usage);
    else if (a == "--only" && has_value) only = argv[++i];
    else usage();
  }
  if (base_url.empty()) usage();
  while (!base_url.empty() && base_url.back() == '/') base_url.pop_back();
  rlimit rl{};  // a socket per stream
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (streams > 0) {
    const int rc = run_streams(base_url, streams);
    curl_global_cleanup();
    return rc;
  }

  const std::string api_key = "bench-key";
  taotoken::ClientOptions opts;
  opts.base_url = base_url;
  opts.api_key = api_key;
  const taotoken::TaotokenClient client(opts);
  AsyncDriver driver(client, chat_request());
  RawMulti raw(base_url + "/chat/completions", raw_request_body(), api_key, concurrency);

  auto run_raw = [&](long n) {
    if (!raw.run(n)) std::exit(1);
  };
  auto run_chat = [&](long n) {
    if (!driver.run(n, concurrency)) std::exit(1);
  };
  const bool do_raw = only != "chat", do_chat = only != "raw";
  if (do_raw) run_raw(warmup);
  if (do_chat) run_chat(warmup);
  std::printf("INFO upstream %s, %ld in flight, %ld rounds x %ld requests per side, warm-up %ld\n", base_url.c_str(),
              concurrency, rounds, requests, warmup);
  const std::string raw_name = "raw_curl_multi_c" + std::to_string(concurrency);
  const std::string chat_name = "chat_async_c" + std::to_string(concurrency);
  bench::run_interleaved(raw_name.c_str(), chat_name.c_str(), 0.90, rounds, requests, do_raw, do_chat, run_raw,
                         run_chat, status_url);
  curl_global_cleanup();
  return 0;
}
