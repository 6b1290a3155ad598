#ifndef TAOTOKEN_SRC_TRANSPORT_H
#define TAOTOKEN_SRC_TRANSPORT_H

// The seam between the client's policy logic and HTTP. The client builds an
// HttpRequest and a Transport performs it; tests of pure logic can plug in a
// fake, and every feature is also tested through CurlTransport.

#include <atomic>
#include <chrono>
#include <functional>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/result.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

struct HttpRequest {
  enum class Method { get, post };
  Method method = Method::post;
  std::string url;
  // Headers, already checked for CR/LF: `*base_headers` (fixed for the
  // client's life, so the transport may cache its libcurl list) followed by
  // `headers` (this call's). base_headers may be null.
  const std::vector<Header>* base_headers = nullptr;
  std::vector<Header> headers;
  std::string_view body;
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds timeout{600000};
  // 0: none. Otherwise the status line must arrive within this time.
  std::chrono::milliseconds first_byte_timeout{0};
  std::size_t max_response_bytes = std::size_t{32} << 20;
  // 0: none. Otherwise a transfer that receives nothing for this long fails
  // with a timeout (streams: never cuts one that is still flowing).
  std::chrono::milliseconds idle_timeout{0};
  // Streaming: when set, the body of a 2xx response is handed to on_data as
  // it arrives instead of being collected (other statuses are collected, so
  // their error bodies can be decoded and the attempt retried). on_data
  // returns false to stop the transfer (Error kind cancelled, unless the
  // sink says otherwise). on_start is called once, before the first byte
  // given to on_data, with the status and headers.
  std::function<void(int status, const std::vector<Header>& headers)> on_start;
  std::function<bool(std::string_view bytes)> on_data;
  // Streams: set once the consumer has everything it needs (e.g. [DONE]);
  // from then a silence of 50 ms ends the transfer (kind cancelled) instead
  // of waiting for the server to close.
  const std::atomic<bool>* complete = nullptr;
  // When set and true, the transfer is aborted (Error kind cancelled).
  const std::atomic<bool>* cancel = nullptr;
  // Keep every response header (forwarding); otherwise only those the
  // client reads (content type, request ids, retry hints).
  bool all_headers = false;
  // Ask for gzip/deflate/br and let libcurl decode; off for byte-exact forwarding.
  bool accept_compressed = true;
};

struct HttpResponse {
  int status = 0;
  std::vector<Header> headers;
  std::string body;
};

// Case-insensitive header lookup; nullptr when absent.
const std::string* find_header(const std::vector<Header>& headers, std::string_view name) noexcept;

// Settings fixed for the life of a transport.
struct TransportConfig {
  std::string proxy;
  std::string ca_bundle;
  std::string ca_path;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Performs one HTTP exchange. Errors: connection, timeout, bad_response
  // (oversized or undecodable body), invalid_argument (bad URL). Any HTTP
  // status is a successful result here; the caller interprets it.
  virtual Result<HttpResponse> perform(const HttpRequest& request) const = 0;
};

std::unique_ptr<Transport> make_curl_transport(TransportConfig config);

// The host of an absolute URL as libcurl parses it (IPv6 without
// brackets), or nullopt when libcurl rejects the URL.
std::optional<std::string> url_host(const std::string& url);

// Runs curl_global_init exactly once per process.
void ensure_curl_global_init();

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_TRANSPORT_H
