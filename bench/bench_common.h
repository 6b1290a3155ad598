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

}  // namespace bench

#endif  // TAOTOKEN_BENCH_COMMON_H
