// libcurl transport for synchronous calls: a pool of easy handles, each
// keeping its own connection cache, so a thread that finishes a call hands
// its warm connection to the next caller. The per-transfer state (callbacks,
// limits) lives in `Transfer`, which a future curl-multi loop can drive the
// same way.

#include <curl/curl.h>
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "transport.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {
namespace {

struct EasyDeleter {
  void operator()(CURL* h) const noexcept { curl_easy_cleanup(h); }
};
using EasyHandle = std::unique_ptr<CURL, EasyDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The response headers the client reads when it does not pass them on.
bool wanted(std::string_view name) noexcept {
  static constexpr std::string_view kNames[] = {"content-type", "x-request-id", "request-id", "apim-request-id",
                                                "retry-after", "retry-after-ms", "x-should-retry"};
  for (auto n : kNames)
    if (iequals(name, n)) return true;
  return false;
}

// State of one transfer, reachable from libcurl's C callbacks. The callbacks
// never throw: allocation failure aborts the transfer instead.
struct Transfer {
  HttpResponse response;
  std::size_t max_bytes = 0;
  bool too_large = false;
  bool out_of_memory = false;
  bool got_first_byte = false;
  bool first_byte_expired = false;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::chrono::milliseconds first_byte_timeout{0};
  std::chrono::milliseconds idle_timeout{0};
  bool idle_expired = false;
  std::chrono::steady_clock::time_point last_activity = started;
  const std::atomic<bool>* cancel = nullptr;
  const HttpRequest* request = nullptr;
  CURL* handle = nullptr;
  int streaming = -1;  // -1 undecided, 0 collecting, 1 handing bytes to on_data
  bool sink_stopped = false;
  std::size_t streamed = 0;
  char errbuf[CURL_ERROR_SIZE] = {0};

  static size_t on_body(char* data, size_t size, size_t nmemb, void* user) noexcept {
    auto* t = static_cast<Transfer*>(user);
    const size_t n = size * nmemb;
    t->last_activity = std::chrono::steady_clock::now();
    if (t->streaming < 0) {
      long status = 0;
      curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &status);
      t->response.status = static_cast<int>(status);
      t->streaming = t->request->on_data && status >= 200 && status < 300 ? 1 : 0;
      if (t->streaming == 1 && t->request->on_start) {
        try {
          t->request->on_start(t->response.status, t->response.headers);
        } catch (...) {
          t->sink_stopped = true;
          return 0;
        }
      }
    }
    if (t->streaming == 1) {
      t->streamed += n;
      if (t->streamed > t->max_bytes) {  // a stream is capped like a body
        t->too_large = true;
        return 0;
      }
      // The sink never throws (the client wraps user callbacks).
      if (!t->request->on_data(std::string_view(data, n))) {
        t->sink_stopped = true;
        return 0;
      }
      return n;
    }
    if (t->response.body.size() + n > t->max_bytes) {
      t->too_large = true;
      return 0;
    }
    try {
      t->response.body.append(data, n);
    } catch (...) {
      t->out_of_memory = true;
      return 0;
    }
    return n;
  }

  // libcurl calls this at least every second while idle, and far more
  // often while connecting (about every 100 ms in practice).
  static int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) noexcept {
    auto* t = static_cast<Transfer*>(user);
    if (t->cancel && t->cancel->load()) return 1;
    if (t->request->complete && t->request->complete->load() &&
        std::chrono::steady_clock::now() - t->last_activity >= std::chrono::milliseconds(50))
      return 1;  // the consumer is done; do not wait for the server to hang up
    if (t->idle_timeout.count() > 0 && std::chrono::steady_clock::now() - t->last_activity >= t->idle_timeout) {
      t->idle_expired = true;
      return 1;
    }
    if (t->got_first_byte || t->first_byte_timeout.count() == 0) return 0;
    if (std::chrono::steady_clock::now() - t->started < t->first_byte_timeout) return 0;
    t->first_byte_expired = true;
    return 1;
  }

  static size_t on_header(char* data, size_t size, size_t nmemb, void* user) noexcept {
    auto* t = static_cast<Transfer*>(user);
    const size_t n = size * nmemb;
    t->got_first_byte = true;
    t->last_activity = std::chrono::steady_clock::now();
    std::string_view line(data, n);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    try {
      if (line.size() >= 5 && line.compare(0, 5, "HTTP/") == 0) {
        // A new status line (after 1xx, or a proxy's CONNECT): start over.
        t->response.headers.clear();
      } else if (!line.empty()) {
        const auto colon = line.find(':');
        if (colon != std::string_view::npos && (t->request->all_headers || wanted(line.substr(0, colon)))) {
          std::string_view value = line.substr(colon + 1);
          while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
          while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
          t->response.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
        }
      }
    } catch (...) {
      t->out_of_memory = true;
      return 0;
    }
    return n;
  }
};

Error curl_error(CURLcode code, const Transfer& t, std::size_t max_bytes) {
  if (t.too_large || code == CURLE_FILESIZE_EXCEEDED)
    return Error(ErrorKind::bad_response,
                 fmt::format("response body exceeds the limit of {} bytes (max_response_bytes)", max_bytes));
  if (t.out_of_memory) return Error(ErrorKind::bad_response, "out of memory while receiving the response");
  if (t.sink_stopped) return Error(ErrorKind::cancelled, "the stream was stopped by its consumer");
  if (t.idle_expired)
    return Error(ErrorKind::timeout,
                 fmt::format("timed out: no data for {} ms (idle timeout)", t.idle_timeout.count()));
  if (t.first_byte_expired)
    return Error(ErrorKind::timeout, fmt::format("timed out: no response within the first-byte timeout of {} ms",
                                                 t.first_byte_timeout.count()));
  const char* detail = t.errbuf[0] ? t.errbuf : curl_easy_strerror(code);
  ErrorKind kind = ErrorKind::connection;
  const char* what = "connection failed";
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      kind = ErrorKind::timeout;
      what = "timed out";
      break;
    case CURLE_PARTIAL_FILE:
      what = "connection closed before the whole response arrived";
      break;
    case CURLE_GOT_NOTHING:
      what = "connection closed without a response";
      break;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      what = "connection lost";
      break;
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_WEIRD_SERVER_REPLY:
      kind = ErrorKind::bad_response;
      what = "undecodable response";
      break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      kind = ErrorKind::invalid_argument;
      what = "bad URL";
      break;
    case CURLE_ABORTED_BY_CALLBACK:
      kind = ErrorKind::cancelled;
      what = "cancelled";
      detail = "the caller cancelled the request";
      break;
    case CURLE_PEER_FAILED_VERIFICATION:
      what = "TLS certificate verification failed";
      break;
    default:
      break;
  }
  return Error(kind, fmt::format("{}: {} (curl error {})", what, detail, static_cast<int>(code)));
}

// A pooled easy handle and what was last set on it, so options that rarely
// change are set once instead of reset and re-set on every call (a
// measurable share of a keep-alive request on loopback).
struct PooledEasy {
  EasyHandle handle;
  // libcurl list of the client's fixed headers, built once.
  const std::vector<Header>* cached_for = nullptr;
  Slist cached;
  curl_slist* cached_last = nullptr;
  int method = -1;            // last HttpRequest::Method set
  int compressed = -1;        // last accept_compressed set
  bool progress_on = false;   // NOPROGRESS currently 0
};

class CurlTransport final : public Transport {
 public:
  explicit CurlTransport(TransportConfig config) : config_(std::move(config)) { ensure_curl_global_init(); }

  Result<HttpResponse> perform(const HttpRequest& request) const override {
    std::unique_ptr<PooledEasy> easy = acquire();
    if (!easy) return Error(ErrorKind::connection, "curl_easy_init failed");
    CURL* h = easy->handle.get();
    Transfer t;
    t.max_bytes = request.max_response_bytes;
    t.request = &request;
    t.handle = h;

    // This call's headers as a list of their own, appended to the cached
    // list of the client's fixed headers for the transfer.
    Slist headers;
    curl_slist* tail = nullptr;
    auto add = [&](Slist& list, curl_slist*& last, const char* line) {
      curl_slist* node = curl_slist_append(nullptr, line);
      if (!node) return false;
      if (last) last->next = node;
      else list.reset(node);
      last = node;
      return true;
    };
    std::string line;
    auto add_all = [&](Slist& list, curl_slist*& last, const std::vector<Header>& hs) {
      for (const auto& [name, value] : hs) {
        line.clear();
        line.append(name).append(value.empty() ? ";" : ": ").append(value);
        if (!add(list, last, line.c_str())) return false;
      }
      return true;
    };
    bool ok = true;
    if (request.base_headers && easy->cached_for != request.base_headers) {
      easy->cached.reset();
      easy->cached_last = nullptr;
      easy->cached_for = nullptr;
      ok = add_all(easy->cached, easy->cached_last, *request.base_headers);
      if (ok) easy->cached_for = request.base_headers;
    }
    ok = ok && add_all(headers, tail, request.headers);
    // Suppress "Expect: 100-continue" (older libcurl sends it for bodies over
    // 1 KiB): it costs a round trip, or a 1 s wait with servers that ignore it.
    if (ok && request.method == HttpRequest::Method::post && request.body.size() >= 1024)
      ok = add(headers, tail, "Expect:");
    if (!ok) return Error(ErrorKind::connection, "out of memory building request headers");
    curl_slist* head = headers.get();
    if (request.base_headers && easy->cached_last) {
      easy->cached_last->next = headers.get();
      head = easy->cached.get();
    }

    curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, t.errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, head);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.connect_timeout.count()));
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout.count()));
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(request.max_response_bytes));
    if (easy->compressed != static_cast<int>(request.accept_compressed)) {
      curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, request.accept_compressed ? "gzip" : nullptr);
      easy->compressed = request.accept_compressed;
    }
    if (request.method == HttpRequest::Method::post) {
      if (easy->method != static_cast<int>(HttpRequest::Method::post)) curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, request.body.data());
    } else if (easy->method != static_cast<int>(HttpRequest::Method::get)) {
      curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    easy->method = static_cast<int>(request.method);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    const bool progress = request.first_byte_timeout.count() > 0 || request.cancel || request.idle_timeout.count() > 0 ||
                          request.complete;
    if (progress) {
      t.first_byte_timeout = request.first_byte_timeout;
      t.idle_timeout = request.idle_timeout;
      t.cancel = request.cancel;
      curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
    }
    if (progress != easy->progress_on) {
      curl_easy_setopt(h, CURLOPT_NOPROGRESS, progress ? 0L : 1L);
      easy->progress_on = progress;
    }

    const CURLcode rc = curl_easy_perform(h);
    // Detach pointers into this stack frame before the handle is pooled.
    if (easy->cached_last) easy->cached_last->next = nullptr;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, nullptr);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, nullptr);
    if (rc != CURLE_OK) {
      // A failed transfer may leave the connection in an unknown state;
      // libcurl closes it itself, so the handle is still fine to reuse.
      release(std::move(easy));
      Error e = curl_error(rc, t, request.max_response_bytes);
      if (t.streaming == 1) e.http_status = t.response.status;  // a stream was under way
      return e;
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    t.response.status = static_cast<int>(status);
    release(std::move(easy));
    return std::move(t.response);
  }

 private:
  std::unique_ptr<PooledEasy> acquire() const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        std::unique_ptr<PooledEasy> e = std::move(idle_.back());
        idle_.pop_back();
        return e;
      }
    }
    auto e = std::make_unique<PooledEasy>();
    e->handle.reset(curl_easy_init());
    if (!e->handle) return nullptr;
    // Options fixed for the handle's life.
    CURL* h = e->handle.get();
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (!config_.proxy.empty()) curl_easy_setopt(h, CURLOPT_PROXY, config_.proxy.c_str());
    if (!config_.ca_bundle.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, config_.ca_bundle.c_str());
    if (!config_.ca_path.empty()) curl_easy_setopt(h, CURLOPT_CAPATH, config_.ca_path.c_str());
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Transfer::on_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &Transfer::on_header);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &Transfer::on_progress);
    return e;
  }

  void release(std::unique_ptr<PooledEasy> e) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleHandles) idle_.push_back(std::move(e));
  }

  static constexpr std::size_t kMaxIdleHandles = 64;
  TransportConfig config_;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<PooledEasy>> idle_;
};

}  // namespace

const std::string* find_header(const std::vector<Header>& headers, std::string_view name) noexcept {
  for (const auto& h : headers)
    if (iequals(h.first, name)) return &h.second;
  return nullptr;
}

std::optional<std::string> url_host(const std::string& url) {
  ensure_curl_global_init();
  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> u(curl_url(), &curl_url_cleanup);
  if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return std::nullopt;
  char* host = nullptr;
  if (curl_url_get(u.get(), CURLUPART_HOST, &host, 0) != CURLUE_OK || !host) return std::nullopt;
  std::string out(host);
  curl_free(host);
  if (out.size() >= 2 && out.front() == '[' && out.back() == ']') out = out.substr(1, out.size() - 2);
  return out;
}

void ensure_curl_global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::unique_ptr<Transport> make_curl_transport(TransportConfig config) {
  return std::make_unique<CurlTransport>(std::move(config));
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE
