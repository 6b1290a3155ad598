#ifndef TAOTOKEN_SRC_TRANSPORT_H
#define TAOTOKEN_SRC_TRANSPORT_H

// The seam between the client's policy logic and HTTP: the client builds an
// HttpRequest and the client's event loop (one thread driving a curl multi
// handle) performs it, calling back on the loop thread when it ends.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/result.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

// What a streaming body sink tells the transfer.
enum class DataAction {
  proceed,  // bytes consumed, go on
  stop,     // stop the transfer (Error kind cancelled)
  pause,    // nothing consumed: pause until Loop::resume()
};

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
  // may stop the transfer (Error kind cancelled, unless the sink says
  // otherwise) or pause it. on_start is called once, before the first byte
  // given to on_data, with the status and headers. Both run on the loop
  // thread and must not throw.
  std::function<void(int status, const std::vector<Header>& headers)> on_start;
  std::function<DataAction(std::string_view bytes)> on_data;
  // Streams: set once the consumer has everything it needs (e.g. [DONE]);
  // from then a silence of 50 ms ends the transfer (kind cancelled) instead
  // of waiting for the server to close.
  const std::atomic<bool>* complete = nullptr;
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

// ASCII case-insensitive equality (header names).
bool iequals(std::string_view a, std::string_view b) noexcept;

// Case-insensitive header lookup; nullptr when absent.
const std::string* find_header(const std::vector<Header>& headers, std::string_view name) noexcept;

// Settings fixed for the life of a loop.
struct TransportConfig {
  std::string proxy;
  std::string ca_bundle;
  std::string ca_path;
  long max_host_connections = 0;  // 0: no limit
};

// One thread driving one curl multi handle: every transfer of a client runs
// here, so all of them share one connection pool (HTTP/1.1 keep-alive, or
// HTTP/2 multiplexing when a TLS upstream offers it). Besides transfers it
// runs posted functions and timers. Nothing on it may block.
class Loop {
 public:
  using Id = std::uint64_t;
  using Done = std::function<void(Result<HttpResponse>)>;

  explicit Loop(TransportConfig config);
  // Stops the thread (see stop()) and joins it; when called on the loop
  // thread itself the thread is detached instead and exits on its own.
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Any thread: runs fn on the loop thread, in posting order. Returns false
  // (fn dropped) once the loop has stopped.
  bool post(std::function<void()> fn);
  bool on_loop_thread() const noexcept;
  // The calling thread runs the loop right now (the loop thread, or a
  // caller driving its own synchronous call). The loop's state (timers,
  // transfers, the client's registry) belongs to the driver.
  bool is_driver() const noexcept;
  // The driver, and not inside a libcurl call (whose callbacks may not add
  // transfers): work may be started directly instead of posted.
  bool can_start_now() const noexcept;
  // A synchronous caller may run the loop itself while the loop thread is
  // parked with nothing in progress: try_drive() makes it the driver (false:
  // post and wait instead); drive_until() then runs the loop until done()
  // (true), until stop_when() is true after a round, or until it must go
  // back to the loop thread (something else was posted); either way the
  // caller is no longer the driver after. Stopped by stop_when() with
  // nothing else waiting, the loop is left undriven (not handed over): the
  // caller runs its callbacks and takes it again with try_drive(true), or
  // the loop thread does as soon as anything is posted.
  // try_drive(true): also while transfers are in progress, for a caller
  // that left the loop undriven to run its callbacks (see drive_until).
  bool try_drive(bool resume = false);
  bool drive_until(const std::function<bool()>& done, const std::function<bool()>& stop_when);
  // Any thread: the thread leaves its loop after the current iteration;
  // pending posts are run first. Transfers still running are aborted
  // (their Done is not called). Idempotent.
  void stop();
  // Any thread: waits for the thread to finish; on the loop thread itself
  // it detaches instead.
  void join();
  // Runs on the loop thread as its very last act, after stop() took effect
  // and every posted function ran. Set before stop().
  void set_exit_hook(std::function<void()> fn);

  // ---- the driver only
  Id add_timer(std::chrono::steady_clock::time_point at, std::function<void()> fn);
  void cancel_timer(Id id) noexcept;
  // Starts a transfer; `request` must stay valid until `done` runs. `done`
  // runs exactly once, on the loop thread, never inside start().
  Id start(const HttpRequest& request, Done done);
  // Ends a running transfer now with `e` (its Done runs before abort returns).
  // No effect when it already ended.
  void abort(Id id, Error e);
  // Resumes a transfer paused by DataAction::pause.
  void resume(Id id);

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;  // shared with the thread, which may outlive a detached Loop
};

// The host of an absolute URL as libcurl parses it (IPv6 without
// brackets), or nullopt when libcurl rejects the URL.
std::optional<std::string> url_host(const std::string& url);

// Runs curl_global_init exactly once per process.
void ensure_curl_global_init();

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_TRANSPORT_H
