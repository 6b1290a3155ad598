#ifndef TAOTOKEN_TOOLS_PROXY_SERVER_H
#define TAOTOKEN_TOOLS_PROXY_SERVER_H

// taotoken-proxy: the classic Node proxy's HTTP surface on top of the
// library. A class so tests can run it in-process on 127.0.0.1:0.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "taotoken/taotoken.h"

namespace taotoken_proxy {

struct ProxyOptions {
  std::string bind = "127.0.0.1";
  int port = 3000;  // 0: any free port
  /// Internal keys clients must present (X-Internal-Key or Authorization:
  /// Bearer). Empty: no auth, and then only loopback binds are allowed.
  std::vector<std::string> keys;
  /// SQLite file for usage records ("" disables the database).
  std::string db_path = "taotoken-proxy.db";
  std::size_t max_body_bytes = std::size_t{4} << 20;
  /// Records shown by /admin/logs come from a memory ring of this size.
  std::size_t recent_capacity = 1000;
  /// The upstream client (base URL, key, retries, timeouts, prices…).
  taotoken::ClientOptions client;
  /// Add stream_options.include_usage to streamed requests that do not set
  /// stream_options, so streams are costed like other calls.
  bool force_stream_usage = true;
  /// Worker threads serving connections.
  int threads = 16;
};

class ProxyServer {
 public:
  /// Validates options (throws std::invalid_argument with a clear message)
  /// and binds; call run() to serve.
  explicit ProxyServer(ProxyOptions options);
  ~ProxyServer();
  int port() const noexcept;
  /// Serves until stop(); returns when the listener is closed.
  void run();
  /// Stops accepting; in-flight requests finish (the destructor waits for
  /// them, then flushes the recorders).
  void stop();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Constant-time comparison (no early exit on the first differing byte).
bool constant_time_equal(const std::string& a, const std::string& b) noexcept;

}  // namespace taotoken_proxy

#endif
