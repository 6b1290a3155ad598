// Helpers shared by the end-to-end benchmarks (bench_seq.cc, bench_stream.cc):
// a one-shot capture server that records one request and answers it, nginx
// stub_status reading, medians.

#ifndef TAOTOKEN_BENCH_COMMON_H
#define TAOTOKEN_BENCH_COMMON_H

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline size_t append_body(char* data, size_t size, size_t nmemb, void* user) {
  static_cast<std::string*>(user)->append(data, size * nmemb);
  return size * nmemb;
}

// A count from the command line (1 to 10,000,000); anything else calls
// `usage` (which exits).
inline long parse_count(const char* s, void (*usage)()) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (!end || *end || v <= 0 || v > 10000000) {
    usage();
    std::exit(2);
  }
  return v;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---- one-shot capture server: checks both sides send the same body --------

struct Captured {
  std::string head;  // request line and headers
  std::string body;
};

// Accepts one connection on a loopback port, reads one request, answers it
// with `response` (as `content_type`) and closes.
class CaptureServer {
 public:
  CaptureServer(std::string response, std::string content_type)
      : response_(std::move(response)), content_type_(std::move(content_type)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 4) != 0) {
      std::perror("capture server");
      std::exit(1);
    }
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~CaptureServer() { ::close(fd_); }
  CaptureServer(const CaptureServer&) = delete;
  CaptureServer& operator=(const CaptureServer&) = delete;

  int port() const { return port_; }

  Captured serve_one() {
    Captured c;
    const int conn = ::accept(fd_, nullptr, nullptr);
    if (conn < 0) return c;
    std::string in;
    char buf[4096];
    std::size_t head_end = std::string::npos;
    std::size_t want = 0;
    for (;;) {
      const ssize_t n = ::recv(conn, buf, sizeof buf, 0);
      if (n <= 0) break;
      in.append(buf, static_cast<std::size_t>(n));
      if (head_end == std::string::npos && (head_end = in.find("\r\n\r\n")) != std::string::npos) {
        std::string lower = in.substr(0, head_end);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
        const auto p = lower.find("\r\ncontent-length:");
        if (p != std::string::npos) want = std::strtoul(lower.c_str() + p + 17, nullptr, 10);
      }
      if (head_end != std::string::npos && in.size() >= head_end + 4 + want) break;
    }
    if (head_end != std::string::npos) {
      c.head = in.substr(0, head_end);
      c.body = in.substr(head_end + 4, want);
    }
    const std::string out = "HTTP/1.1 200 OK\r\nContent-Type: " + content_type_ +
                            "\r\nContent-Length: " + std::to_string(response_.size()) +
                            "\r\nConnection: close\r\n\r\n" + response_;
    std::size_t sent = 0;
    while (sent < out.size()) {
      const ssize_t n = ::send(conn, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    ::close(conn);
    return c;
  }

 private:
  std::string response_;
  std::string content_type_;
  int fd_ = -1;
  int port_ = 0;
};

inline void print_head(const char* who, const std::string& head) {
  std::size_t start = 0;
  while (start < head.size()) {
    auto end = head.find("\r\n", start);
    if (end == std::string::npos) end = head.size();
    std::printf("INFO request %s: %.*s\n", who, static_cast<int>(end - start), head.data() + start);
    start = end + 2;
  }
}

// ---- nginx stub_status -----------------------------------------------------

// Accepted connections so far, or -1.
inline long nginx_accepts(const std::string& status_url) {
  if (status_url.empty()) return -1;
  std::string out;
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, status_url.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &append_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
  const CURLcode rc = curl_easy_perform(h);
  curl_easy_cleanup(h);
  if (rc != CURLE_OK) return -1;
  // "Active connections: 1 \nserver accepts handled requests\n 5 5 17 \n..."
  const auto p = out.find("requests\n");
  if (p == std::string::npos) return -1;
  return std::strtol(out.c_str() + p + 9, nullptr, 10);
}

// Calls per second of `fn(n)`.
template <typename Fn>
double timed(Fn&& fn, long n) {
  const auto t0 = Clock::now();
  fn(n);
  const std::chrono::duration<double> dt = Clock::now() - t0;
  return static_cast<double>(n) / dt.count();
}

// The measurement both end-to-end benchmarks share: `rounds` rounds of
// `requests` calls per side, raw and library alternating (order flipped every
// round so drift hits both alike), then the medians, the ratio and whether
// it met `target`, as RESULT lines named `raw_name`, `chat_name` and
// `<chat_name>_vs_raw`. With only one side enabled, just its RESULT line.
// With `ratio_name` (a second comparison of a side already reported): the
// ratio under that name, no RESULT line for the library side, and a target
// of 0 means none.
template <typename Raw, typename Chat>
void run_interleaved(const char* raw_name, const char* chat_name, double target, long rounds, long requests,
                     bool do_raw, bool do_chat, Raw&& run_raw, Chat&& run_chat, const std::string& status_url,
                     const char* ratio_name = nullptr) {
  const long accepts_before = nginx_accepts(status_url);
  std::vector<double> raw_rps, chat_rps, ratios;
  double raw_secs = 0, chat_secs = 0;
  for (long r = 0; r < rounds; ++r) {
    double a = 0, b = 0;
    if (r % 2 == 0) {
      if (do_raw) a = timed(run_raw, requests);
      if (do_chat) b = timed(run_chat, requests);
    } else {
      if (do_chat) b = timed(run_chat, requests);
      if (do_raw) a = timed(run_raw, requests);
    }
    if (!do_raw || !do_chat) {
      const double x = do_raw ? a : b;
      (do_raw ? raw_rps : chat_rps).push_back(x);
      std::printf("INFO round %ld: %s rps=%.0f\n", r + 1, do_raw ? raw_name : chat_name, x);
      continue;
    }
    raw_secs += static_cast<double>(requests) / a;
    chat_secs += static_cast<double>(requests) / b;
    raw_rps.push_back(a);
    chat_rps.push_back(b);
    ratios.push_back(b / a);
    std::printf("INFO round %ld: %s rps=%.0f %s rps=%.0f ratio=%.3f\n", r + 1, raw_name, a, chat_name, b, b / a);
  }
  const long accepts_after = nginx_accepts(status_url);
  if (accepts_before >= 0 && accepts_after >= 0)
    // The second query's own connection counts as one.
    std::printf("INFO new upstream connections during the measured rounds: %ld (0 = keep-alive held)\n",
                accepts_after - accepts_before - 1);
  if (!do_raw || !do_chat) {
    const double m = median(do_raw ? raw_rps : chat_rps);
    std::printf("RESULT name=%s rps=%.1f us_per_req=%.2f\n", do_raw ? raw_name : chat_name, m, 1e6 / m);
    return;
  }
  const double raw_m = median(raw_rps), chat_m = median(chat_rps);
  std::printf("INFO median of per-round ratios: %.3f (min %.3f, max %.3f)\n", median(ratios),
              *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
  const double total = static_cast<double>(rounds * requests);
  std::printf("INFO totals: %s rps=%.0f %s rps=%.0f ratio=%.3f\n", raw_name, total / raw_secs, chat_name,
              total / chat_secs, raw_secs / chat_secs);
  std::printf("RESULT name=%s rps=%.1f us_per_req=%.2f\n", raw_name, raw_m, 1e6 / raw_m);
  if (ratio_name) {
    std::printf("INFO %s this time: rps=%.1f us_per_req=%.2f\n", chat_name, chat_m, 1e6 / chat_m);
    std::printf("RESULT name=%s ratio=%.3f\n", ratio_name, chat_m / raw_m);
  } else {
    std::printf("RESULT name=%s rps=%.1f us_per_req=%.2f\n", chat_name, chat_m, 1e6 / chat_m);
    std::printf("RESULT name=%s_vs_raw ratio=%.3f\n", chat_name, chat_m / raw_m);
  }
  if (target > 0)
    std::printf("INFO target %s_vs_raw >= %.2f: %s\n", chat_name, target, chat_m / raw_m >= target ? "met" : "NOT met");
}

}  // namespace bench

#endif  // TAOTOKEN_BENCH_COMMON_H
