// The client's event loop: one thread driving one curl multi handle, with a
// queue of posted functions (woken by curl_multi_wakeup) and a timer heap.
// Transfers reuse pooled easy handles; connections live in the multi
// handle's cache, so every call of a client shares one pool.

#include <curl/curl.h>
#include <pthread.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <unordered_map>
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

// The response headers the client reads when it does not pass them on.
bool wanted(std::string_view name) noexcept {
  static constexpr std::string_view kNames[] = {"content-type", "x-request-id", "request-id", "apim-request-id",
                                                "retry-after", "retry-after-ms", "x-should-retry"};
  for (auto n : kNames)
    if (iequals(name, n)) return true;
  return false;
}

// simdjson's SIMDJSON_PADDING: the decoder needs this many bytes of spare
// capacity after a body (codec.cc reserves them if they are missing).
constexpr std::size_t kParsePadding = 64;

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
  // The loop's count of libcurl rounds (perform_once), and the round of
  // the last header line's clock read: the header lines of one round come
  // from the same read, so the first one's time is the time of all (a
  // clock read per line cost about 0.15 us a request).
  const std::uint64_t* round = nullptr;  // set by Loop::Impl::start, before any callback
  std::uint64_t header_round = 0;
  const HttpRequest* request = nullptr;
  bool complete_seen = false;          // request->complete turned true
  bool track_activity = false;         // last_activity is read (idle / completion checks)
  std::function<void()> on_complete;   // arms the loop's check, once
  CURL* handle = nullptr;
  int streaming = -1;  // -1 undecided, 0 collecting, 1 handing bytes to on_data
  bool sink_stopped = false;
  bool paused = false;  // the sink asked to pause: not the server's silence
  std::size_t streamed = 0;
  const char* errbuf = "";  // the handle's CURLOPT_ERRORBUFFER

  // `user` is the handle's `Transfer**` slot (set once per handle).
  static size_t on_body(char* data, size_t size, size_t nmemb, void* user) noexcept {
    auto* t = *static_cast<Transfer**>(user);
    const size_t n = size * nmemb;
    if (t->track_activity) t->last_activity = std::chrono::steady_clock::now();
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
      if (t->streamed + n > t->max_bytes) {  // a stream is capped like a body
        t->too_large = true;
        return 0;
      }
      // The sink never throws (the client wraps user callbacks).
      switch (t->request->on_data(std::string_view(data, n))) {
        case DataAction::pause:
          t->paused = true;
          return CURL_WRITEFUNC_PAUSE;
        case DataAction::stop:
          t->sink_stopped = true;
          return 0;
        case DataAction::proceed:
          break;
      }
      t->streamed += n;
      if (!t->complete_seen && t->request->complete && t->request->complete->load()) {
        t->complete_seen = true;
        if (t->on_complete) t->on_complete();
      }
      return n;
    }
    if (t->response.body.size() + n > t->max_bytes) {
      t->too_large = true;
      return 0;
    }
    try {
      // Room for the JSON parser's padding too, so decoding needs no copy.
      std::string& body = t->response.body;
      if (body.capacity() < body.size() + n + kParsePadding)
        body.reserve(std::max(body.size() + n + kParsePadding, 2 * body.capacity()));
      body.append(data, n);
    } catch (...) {
      t->out_of_memory = true;
      return 0;
    }
    return n;
  }

  static size_t on_header(char* data, size_t size, size_t nmemb, void* user) noexcept {
    auto* t = *static_cast<Transfer**>(user);
    const size_t n = size * nmemb;
    t->got_first_byte = true;
    if (t->track_activity && t->header_round != *t->round) {
      t->last_activity = std::chrono::steady_clock::now();
      t->header_round = *t->round;
    }
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
  // Set once per handle: the callbacks' data, the error buffer, PRIVATE.
  Transfer* transfer = nullptr;  // the transfer in progress
  void* active = nullptr;        // its Active
  char errbuf[CURL_ERROR_SIZE] = {0};
  // Last values set, to skip unchanged options.
  std::string url;
  curl_slist* header_list = nullptr;
  long connect_timeout_ms = -1;
  curl_off_t max_bytes = -1;
};

// This attempt's headers: the cached list of the client's fixed headers
// with this call's own list linked after it (unlinked when the transfer
// ends, before the handle is pooled again).
bool build_headers(PooledEasy& easy, const HttpRequest& request, Slist& own, curl_slist*& head) {
  curl_slist* tail = nullptr;
  auto add = [](Slist& list, curl_slist*& last, const char* line) {
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
  if (request.base_headers && easy.cached_for != request.base_headers) {
    easy.cached.reset();
    easy.cached_last = nullptr;
    easy.cached_for = nullptr;
    ok = add_all(easy.cached, easy.cached_last, *request.base_headers);
    if (ok) easy.cached_for = request.base_headers;
  }
  ok = ok && add_all(own, tail, request.headers);
  // Suppress "Expect: 100-continue" (older libcurl sends it for bodies over
  // 1 KiB): it costs a round trip, or a 1 s wait with servers that ignore it.
  if (ok && request.method == HttpRequest::Method::post && request.body.size() >= 1024)
    ok = add(own, tail, "Expect:");
  if (!ok) return false;
  head = own.get();
  if (request.base_headers && easy.cached_last) {
    easy.cached_last->next = own.get();
    head = easy.cached.get();
  }
  return true;
}

// A transfer in progress on the loop.
struct Active {
  Loop::Id id = 0;
  std::unique_ptr<PooledEasy> easy;
  Transfer t;
  Slist headers;
  Loop::Done done;
  Loop::Id watchdog = 0;  // timer for first-byte / idle / completion checks
};

constexpr std::chrono::milliseconds kCompleteGrace{50};

// The transfers in progress, found by id without hashing or allocating per
// transfer: an id is (generation << 32) | slot, so a stale id (a transfer
// that ended, its slot reused) finds nothing.
class ActiveSet {
 public:
  Loop::Id insert(std::unique_ptr<Active> a) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
      gens_.push_back(0);
    }
    if (++gens_[slot] == 0) ++gens_[slot];  // after a wrap: never id 0 ("no transfer")
    const Loop::Id id = (static_cast<Loop::Id>(gens_[slot]) << 32) | slot;
    a->id = id;
    slots_[slot] = std::move(a);
    ++count_;
    return id;
  }
  Active* find(Loop::Id id) const noexcept {
    const auto slot = static_cast<std::size_t>(id & 0xffffffffu);
    if (slot >= slots_.size() || !slots_[slot] || slots_[slot]->id != id) return nullptr;
    return slots_[slot].get();
  }
  std::unique_ptr<Active> take(Loop::Id id) {
    if (!find(id)) return nullptr;
    const auto slot = static_cast<std::uint32_t>(id & 0xffffffffu);
    std::unique_ptr<Active> a = std::move(slots_[slot]);
    free_.push_back(slot);
    --count_;
    return a;
  }
  bool empty() const noexcept { return count_ == 0; }
  std::size_t size() const noexcept { return count_; }
  template <typename F>
  void for_each(F f) {
    for (auto& a : slots_)
      if (a) f(*a);
  }
  void clear() {
    slots_.clear();
    free_.clear();
    gens_.clear();
    count_ = 0;
  }

 private:
  std::vector<std::unique_ptr<Active>> slots_;
  std::vector<std::uint32_t> free_;
  std::vector<std::uint32_t> gens_;
  std::size_t count_ = 0;
};

// Ids of transfers that failed before they started: never a slot's id.
constexpr Loop::Id kUnslottedId = Loop::Id{1} << 63;


}  // namespace

class Loop::Impl : public std::enable_shared_from_this<Loop::Impl> {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Impl(TransportConfig config) : config_(std::move(config)) {
    ensure_curl_global_init();
    for (const char* name : {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                             "NO_PROXY", "socks_proxy", "SOCKS_PROXY"})
      if (const char* v = std::getenv(name); v && *v) env_proxy_ = true;
    multi_ = curl_multi_init();
    if (!multi_) throw Error(ErrorKind::connection, "curl_multi_init failed");
    if (config_.max_host_connections > 0)
      curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, config_.max_host_connections);
    curl_multi_setopt(multi_, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
    // Idle connections kept for reuse. libcurl's default (4 x the transfers
    // currently added) shrinks whenever transfers end, closing warm
    // connections between bursts.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, kMaxIdleConnections);
  }

  ~Impl() {
    active_.for_each([&](Active& a) {
      curl_multi_remove_handle(multi_, a.easy->handle.get());
      detach(a);
    });
    active_.clear();
    idle_.clear();
    curl_multi_cleanup(multi_);
  }

  void launch(const std::shared_ptr<Impl>& self) {
    std::promise<void> started;
    auto ready = started.get_future();
    thread_ = std::thread([self, &started] {
      ::pthread_setname_np(::pthread_self(), "taotoken-loop");
      self->thread_id_ = std::this_thread::get_id();
      started.set_value();
      self->run();
    });
    ready.wait();  // thread_id_ is set before anyone can ask
  }

  bool post(std::function<void()> fn) {
    bool wake = false;
    std::thread::id driver;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      wake = posted_.empty();
      posted_.push_back(std::move(fn));
      driver = driver_.load();
    }
    if (driver == std::thread::id()) {
      drive_cv_.notify_one();  // the loop thread is parked: wake it
    } else if (wake && driver != std::this_thread::get_id()) {
      // The driver (the loop thread, or a caller driving its own call) may
      // sleep in curl_multi_poll. One that posts itself runs the post before
      // it polls again.
      curl_multi_wakeup(multi_);
    }
    return true;
  }

  bool on_loop_thread() const noexcept { return std::this_thread::get_id() == thread_id_; }
  bool is_driver() const noexcept { return driver_.load() == std::this_thread::get_id(); }
  // Only the loop thread starts work directly: a caller driving its own
  // call (whose hooks may start async calls) posts, and a post makes it hand
  // the loop to the loop thread, so async work never runs on, or waits for,
  // a caller's thread.
  bool can_start_now() const noexcept { return on_loop_thread() && is_driver() && !in_curl_; }

  // ---- a calling thread drives the loop for its own synchronous call
  //
  // The loop thread parks (waits on drive_cv_, not in curl) whenever it has
  // nothing in progress. A synchronous call arriving then need not hand its
  // request over and wait for two thread switches: the calling thread takes
  // the loop (the multi handle, the timers, the client's registry) and runs
  // it until its call ends. As soon as anything else is posted (an async
  // call, another thread's call, a cancellation) it hands the loop to the
  // loop thread and waits like any other caller: async callbacks only ever
  // run on the loop thread.

  bool try_drive(bool resume) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || stop_.load() || driver_.load() != std::thread::id() || !posted_.empty()) return false;
    if (!resume && (!active_.empty() || !timers_.empty())) return false;
    driver_.store(std::this_thread::get_id());
    return true;
  }

  // Runs the loop until done(), until stop_when() says so after a round,
  // or until the loop must go to the loop thread. Returns whether done()
  // became true while driving. The caller is not the driver afterwards.
  bool drive_until(const std::function<bool()>& done, const std::function<bool()>& stop_when) {
    bool finished = false;
    bool stopped = false;
    for (;;) {
      if (done()) {
        finished = true;
        break;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!posted_.empty() || stop_.load()) break;
      }
      perform_once();
      if (done()) {
        finished = true;
        break;
      }
      if (stop_when && stop_when()) {
        stopped = true;
        break;
      }
      if (active_.empty() && timers_.empty()) break;  // nothing here will end the call: hand over
      int ms = wait_ms();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!posted_.empty()) break;
      }
      curl_multi_poll(multi_, nullptr, 0, ms, nullptr);
    }
    std::lock_guard<std::mutex> lock(mu_);
    // Stopped by stop_when() with nothing else waiting: the caller means to
    // come back (try_drive(true)) after running its callbacks, so the loop
    // is left undriven for that moment instead of waking the loop thread;
    // anything posted meanwhile wakes it (post() sees no driver).
    const bool leave_parked = stopped && posted_.empty() && !stop_.load();
    if (!leave_parked && (!posted_.empty() || !active_.empty() || !timers_.empty() || stop_.load())) {
      driver_.store(thread_id_);
      drive_cv_.notify_all();
    } else {
      driver_.store(std::thread::id());
    }
    return finished;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    drive_cv_.notify_all();
    curl_multi_wakeup(multi_);
  }

  void join_or_detach() {
    if (!thread_.joinable()) return;
    if (on_loop_thread()) thread_.detach();
    else thread_.join();
  }

  Id add_timer(Clock::time_point at, std::function<void()> fn) {
    const Id id = ++next_id_;
    timers_.emplace(id, Timer{at, std::move(fn)});
    heap_.emplace(at, id);
    return id;
  }

  // Cancelled timers leave their heap entry behind (found stale when it
  // comes up); the heap is rebuilt before they outnumber the live ones, so
  // it does not grow with request rate x timeout.
  void cancel_timer(Id id) noexcept {
    timers_.erase(id);
    if (heap_.size() > 2 * timers_.size() + 64) {
      try {
        std::vector<HeapEntry> live;
        live.reserve(timers_.size());
        for (const auto& [tid, t] : timers_) live.emplace_back(t.at, tid);
        heap_ = decltype(heap_)(std::greater<HeapEntry>(), std::move(live));
      } catch (...) {  // out of memory: keep the stale entries
      }
    }
  }

  Id start(const HttpRequest& request, Done done) {
    const Id id = kUnslottedId | ++next_id_;  // until it is added
    auto a = std::make_unique<Active>();
    a->id = id;
    a->done = std::move(done);
    a->easy = acquire();
    if (!a->easy) {
      fail_later(std::move(a), Error(ErrorKind::connection, "curl_easy_init failed"));
      return id;
    }
    Transfer& t = a->t;
    t.max_bytes = request.max_response_bytes;
    t.request = &request;
    PooledEasy& easy = *a->easy;
    CURL* h = easy.handle.get();
    t.handle = h;
    curl_slist* head = nullptr;
    if (!build_headers(easy, request, a->headers, head)) {
      if (easy.cached_last) easy.cached_last->next = nullptr;
      release(std::move(a->easy));
      fail_later(std::move(a), Error(ErrorKind::connection, "out of memory building request headers"));
      return id;
    }
    // Options that rarely change are set only when they do (a measurable
    // share of a kept-alive request on loopback).
    if (easy.url != request.url) {
      curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
      easy.url = request.url;
      // Over TLS a new transfer waits for a connection being set up to
      // learn whether it speaks HTTP/2 (then it multiplexes on it) instead
      // of opening one connection per transfer of a burst.
      const bool tls = request.url.size() > 8 && (request.url.compare(0, 8, "https://") == 0 ||
                                                   request.url.compare(0, 8, "HTTPS://") == 0);
      curl_easy_setopt(h, CURLOPT_PIPEWAIT, tls ? 1L : 0L);
    }
    easy.transfer = &t;
    easy.active = a.get();
    easy.errbuf[0] = '\0';
    t.errbuf = easy.errbuf;
    if (easy.header_list != head) {
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, head);
      easy.header_list = head;
    }
    const long connect_ms = static_cast<long>(request.connect_timeout.count());
    if (easy.connect_timeout_ms != connect_ms) {
      curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
      easy.connect_timeout_ms = connect_ms;
    }
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout.count()));
    const auto max_bytes = static_cast<curl_off_t>(request.max_response_bytes);
    if (easy.max_bytes != max_bytes) {
      curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, max_bytes);
      easy.max_bytes = max_bytes;
    }
    if (easy.compressed != static_cast<int>(request.accept_compressed)) {
      curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, request.accept_compressed ? "gzip" : nullptr);
      easy.compressed = request.accept_compressed;
    }
    if (request.method == HttpRequest::Method::post) {
      if (easy.method != static_cast<int>(HttpRequest::Method::post)) curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, request.body.data());
    } else if (easy.method != static_cast<int>(HttpRequest::Method::get)) {
      curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    easy.method = static_cast<int>(request.method);
    t.first_byte_timeout = request.first_byte_timeout;
    t.idle_timeout = request.idle_timeout;
    t.track_activity = request.idle_timeout.count() > 0 || request.complete;
    t.round = &perform_round_;
    if (request.complete) {
      Active* raw = a.get();
      t.on_complete = [this, raw] { arm_watchdog(*raw); };
    }
    const CURLMcode mc = curl_multi_add_handle(multi_, h);
    if (mc != CURLM_OK) {
      detach(*a);
      release(std::move(a->easy));
      fail_later(std::move(a), Error(ErrorKind::connection, fmt::format("curl_multi_add_handle failed: {}",
                                                                         curl_multi_strerror(mc))));
      return id;
    }
    Active& ref = *a;
    const Id slotted = active_.insert(std::move(a));
    arm_watchdog(ref);
    return slotted;
  }

  void abort(Id id, Error e) {
    std::unique_ptr<Active> a = active_.take(id);
    if (!a) return;
    curl_multi_remove_handle(multi_, a->easy->handle.get());
    if (a->t.streaming == 1 && !e.http_status) e.http_status = a->t.response.status;
    end(std::move(a), std::move(e));
  }

  void resume(Id id) {
    Active* found = active_.find(id);
    if (!found) return;
    Active& a = *found;
    a.t.paused = false;
    a.t.last_activity = Clock::now();  // a slow consumer is not an idle server
    in_curl_ = true;  // unpausing may deliver data (callbacks) right here
    curl_easy_pause(a.easy->handle.get(), CURLPAUSE_CONT);
    in_curl_ = false;
  }


 private:
  std::unique_ptr<PooledEasy> acquire() {
    if (!idle_.empty()) {
      std::unique_ptr<PooledEasy> e = std::move(idle_.back());
      idle_.pop_back();
      return e;
    }
    auto e = std::make_unique<PooledEasy>();
    e->handle.reset(curl_easy_init());
    if (!e->handle) return nullptr;
    // Options fixed for the handle's life.
    CURL* h = e->handle.get();
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    if (!config_.proxy.empty()) {
      curl_easy_setopt(h, CURLOPT_PROXY, config_.proxy.c_str());
    } else if (!env_proxy_) {
      // No proxy configured and none in the environment (checked once, when
      // the client was made): say so, or libcurl reads five environment
      // variables on every transfer to find out.
      curl_easy_setopt(h, CURLOPT_PROXY, "");
      curl_easy_setopt(h, CURLOPT_NOPROXY, "");
    }
    if (!config_.ca_bundle.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, config_.ca_bundle.c_str());
    if (!config_.ca_path.empty()) curl_easy_setopt(h, CURLOPT_CAPATH, config_.ca_path.c_str());
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Transfer::on_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &Transfer::on_header);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, static_cast<void*>(&e->transfer));
    curl_easy_setopt(h, CURLOPT_HEADERDATA, static_cast<void*>(&e->transfer));
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, e->errbuf);
    curl_easy_setopt(h, CURLOPT_PRIVATE, static_cast<void*>(e.get()));
    return e;
  }

  void release(std::unique_ptr<PooledEasy> e) {
    if (e && idle_.size() < kMaxIdleHandles) idle_.push_back(std::move(e));
  }

  // Unlinks pointers into the Active before its handle is pooled again:
  // the call's own header list goes away with it (the cached list of the
  // client's headers stays set on the handle).
  static void detach(Active& a) {
    if (!a.easy) return;
    PooledEasy& e = *a.easy;
    if (e.cached_last) e.cached_last->next = nullptr;
    if (e.header_list && e.header_list != e.cached.get()) {
      curl_easy_setopt(e.handle.get(), CURLOPT_HTTPHEADER, nullptr);
      e.header_list = nullptr;
    }
    e.transfer = nullptr;
    e.active = nullptr;
  }

  // Hands a result to the transfer's owner; the Active is already out of
  // active_ and its handle out of the multi.
  void end(std::unique_ptr<Active> a, Result<HttpResponse> r) {
    if (a->watchdog) cancel_timer(a->watchdog);
    detach(*a);
    release(std::move(a->easy));
    Done done = std::move(a->done);
    a.reset();
    done(std::move(r));
  }

  // A failure found before the transfer was added: reported from the loop,
  // never inside start().
  void fail_later(std::unique_ptr<Active> a, Error e) {
    std::shared_ptr<Active> held(std::move(a));
    add_timer(Clock::now(), [held, e = std::move(e)]() mutable { held->done(std::move(e)); });
  }

  void on_message(CURLMsg* msg) {
    void* priv = nullptr;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
    auto* easy = static_cast<PooledEasy*>(priv);
    if (!easy || !easy->active) return;
    auto* raw = static_cast<Active*>(easy->active);
    const CURLcode rc = msg->data.result;
    std::unique_ptr<Active> a = active_.take(raw->id);
    if (!a) return;
    curl_multi_remove_handle(multi_, msg->easy_handle);
    Transfer& t = a->t;
    if (rc != CURLE_OK) {
      Error e = curl_error(rc, t, t.max_bytes);
      if (t.streaming == 1) e.http_status = t.response.status;  // a stream was under way
      end(std::move(a), std::move(e));
      return;
    }
    long status = 0;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    t.response.status = static_cast<int>(status);
    HttpResponse resp = std::move(t.response);
    end(std::move(a), std::move(resp));
  }

  // First-byte and idle limits, and the short grace after a consumer says
  // it has everything: one timer per transfer at the earliest deadline.
  void arm_watchdog(Active& a) {
    const Transfer& t = a.t;
    std::optional<Clock::time_point> at;
    auto earliest = [&](Clock::time_point p) {
      if (!at || p < *at) at = p;
    };
    if (t.first_byte_timeout.count() > 0 && !t.got_first_byte) earliest(t.started + t.first_byte_timeout);
    if (t.idle_timeout.count() > 0)
      earliest((t.paused ? Clock::now() : t.last_activity) + t.idle_timeout);  // paused: not idle
    if (t.complete_seen) earliest(t.last_activity + kCompleteGrace);
    if (a.watchdog) cancel_timer(a.watchdog);
    a.watchdog = 0;
    if (!at) return;
    const Id id = a.id;
    a.watchdog = add_timer(*at, [this, id] { check_watchdog(id); });
  }

  void check_watchdog(Id id) {
    Active* found = active_.find(id);
    if (!found) return;
    Active& a = *found;
    a.watchdog = 0;
    Transfer& t = a.t;
    const auto now = Clock::now();
    bool expire = false;
    if (t.first_byte_timeout.count() > 0 && !t.got_first_byte && now - t.started >= t.first_byte_timeout) {
      t.first_byte_expired = true;
      expire = true;
    } else if (t.idle_timeout.count() > 0 && now - t.last_activity >= t.idle_timeout && !t.paused) {
      t.idle_expired = true;
      expire = true;
    } else if (t.complete_seen && now - t.last_activity >= kCompleteGrace) {
      expire = true;  // the consumer is done; do not wait for the server to hang up
    }
    if (!expire) {
      arm_watchdog(a);
      return;
    }
    Error e = curl_error(CURLE_ABORTED_BY_CALLBACK, t, t.max_bytes);
    abort(id, std::move(e));
  }

  void run_timers() {
    if (heap_.empty()) return;
    const auto now = Clock::now();
    while (!heap_.empty() && heap_.top().first <= now) {
      const Id id = heap_.top().second;
      heap_.pop();
      auto it = timers_.find(id);
      if (it == timers_.end()) continue;  // cancelled
      std::function<void()> fn = std::move(it->second.fn);
      timers_.erase(it);
      fn();
    }
  }

  bool run_posted() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      batch.swap(posted_);
    }
    for (auto& fn : batch) fn();
    return !batch.empty();
  }

  int wait_ms() {
    while (!heap_.empty() && timers_.find(heap_.top().second) == timers_.end()) heap_.pop();
    if (heap_.empty()) return 60000;
    const auto d = heap_.top().first - Clock::now();
    if (d <= Clock::duration::zero()) return 0;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count() + 1;
    return ms > 60000 ? 60000 : static_cast<int>(ms);
  }

  // One round of libcurl work: transfers, finished transfers, due timers.
  void perform_once() {
    int running = 0;
    in_curl_ = true;
    ++perform_round_;
    curl_multi_perform(multi_, &running);
    in_curl_ = false;
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left))
      if (msg->msg == CURLMSG_DONE) on_message(msg);
    run_timers();
  }

  void run() {
    const auto me = std::this_thread::get_id();
    for (;;) {
      {
        // Park until there is work and nobody else drives.
        std::unique_lock<std::mutex> lock(mu_);
        drive_cv_.wait(lock, [&] {
          const auto d = driver_.load();
          if (d == me) return true;
          if (d != std::thread::id()) return false;  // a caller drives; it hands over when done
          if (stop_.load() || !posted_.empty()) {
            driver_.store(me);
            return true;
          }
          return false;
        });
        if (stop_.load()) break;
      }
      run_posted();
      perform_once();
      if (stop_.load()) break;
      int ms = wait_ms();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!posted_.empty()) {
          ms = 0;
        } else if (active_.empty() && timers_.empty()) {
          driver_.store(std::thread::id());  // nothing in progress: park
          continue;
        }
      }
      curl_multi_poll(multi_, nullptr, 0, ms, nullptr);
    }
    {
      // Stopping (only when no caller drives: callers hold the client).
      std::unique_lock<std::mutex> lock(mu_);
      drive_cv_.wait(lock, [&] {
        const auto d = driver_.load();
        return d == me || d == std::thread::id();
      });
      driver_.store(me);
    }
    // Stopping: run what was posted, including what that posts in turn.
    for (;;) {
      if (run_posted()) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (posted_.empty()) {
        closed_ = true;
        break;
      }
    }
    timers_.clear();
    if (exit_hook_) {
      std::function<void()> hook = std::move(exit_hook_);
      hook();
    }
  }

 public:
  std::function<void()> exit_hook_;

 private:
  static constexpr std::size_t kMaxIdleHandles = 256;
  static constexpr long kMaxIdleConnections = 256;
  TransportConfig config_;
  bool env_proxy_ = false;  // a proxy variable was set when the client was made
  CURLM* multi_ = nullptr;
  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> stop_{false};
  bool in_curl_ = false;  // driver: inside a libcurl call that runs callbacks
  std::uint64_t perform_round_ = 0;  // driver: rounds of libcurl work (starts at 1 in the first)
  std::mutex mu_;
  std::condition_variable drive_cv_;  // the parked loop thread waits here
  // Who runs the loop now: the loop thread, a calling thread, or nobody
  // (the loop thread is parked). Changed under mu_.
  std::atomic<std::thread::id> driver_{};
  std::vector<std::function<void()>> posted_;
  bool closed_ = false;
  // Loop thread only.
  Id next_id_ = 0;
  using HeapEntry = std::pair<Clock::time_point, Id>;
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, std::greater<HeapEntry>> heap_;
  struct Timer {
    Clock::time_point at;
    std::function<void()> fn;
  };
  std::unordered_map<Id, Timer> timers_;
  ActiveSet active_;
  std::vector<std::unique_ptr<PooledEasy>> idle_;
};

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


Loop::Loop(TransportConfig config) {
  auto impl = std::make_shared<Impl>(std::move(config));
  impl->launch(impl);
  impl_ = std::move(impl);
}

Loop::~Loop() {
  impl_->stop();
  impl_->join_or_detach();
}

bool Loop::post(std::function<void()> fn) { return impl_->post(std::move(fn)); }
bool Loop::on_loop_thread() const noexcept { return impl_->on_loop_thread(); }
bool Loop::can_start_now() const noexcept { return impl_->can_start_now(); }
bool Loop::is_driver() const noexcept { return impl_->is_driver(); }
bool Loop::try_drive(bool resume) { return impl_->try_drive(resume); }
bool Loop::drive_until(const std::function<bool()>& done, const std::function<bool()>& stop_when) {
  return impl_->drive_until(done, stop_when);
}
void Loop::stop() { impl_->stop(); }
void Loop::join() { impl_->join_or_detach(); }
void Loop::set_exit_hook(std::function<void()> fn) { impl_->exit_hook_ = std::move(fn); }
Loop::Id Loop::add_timer(std::chrono::steady_clock::time_point at, std::function<void()> fn) {
  return impl_->add_timer(at, std::move(fn));
}
void Loop::cancel_timer(Id id) noexcept { impl_->cancel_timer(id); }
Loop::Id Loop::start(const HttpRequest& request, Done done) { return impl_->start(request, std::move(done)); }
void Loop::abort(Id id, Error e) { impl_->abort(id, std::move(e)); }
void Loop::resume(Id id) { impl_->resume(id); }


}  // namespace detail
TAOTOKEN_END_NAMESPACE
