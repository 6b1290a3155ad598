#ifndef TAOTOKEN_SIMULATOR_H
#define TAOTOKEN_SIMULATOR_H

/// @file
/// A local OpenAI-compatible server with scriptable faults, for tests, demos
/// and for testing your own program offline. Component `taotoken::sim`.
///
/// It serves plain HTTP/1.1 on 127.0.0.1 (keep-alive, chunked request
/// bodies, `Expect: 100-continue`):
///
/// | route                        | answer                                    |
/// |------------------------------|-------------------------------------------|
/// | `POST /v1/chat/completions`  | echoes the last user message: content `"Echo: <text>"`, realistic `usage`; with `tools`, calls the first tool with `{"text": <text>}`; with `"stream": true`, the same as an event stream (role chunk, deltas, finish chunk, usage chunk when `stream_options.include_usage`, `[DONE]`) in small random fragments |
/// | `GET /v1/models`             | the configured model list                  |
/// | anything else                | 404 in the OpenAI error shape              |
///
/// Answers are deterministic: the same request gives the same body except
/// `id` and `created`.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace sim {

/// How to answer one request. Every field is optional: a default `Fault`
/// gives the normal answer. Used to inject errors and network failures.
struct Fault {
  /// Only requests to this path are affected; empty means every path.
  std::string path = "/v1/chat/completions";
  /// When set, only requests carrying the header `X-Sim-Session: <session>`
  /// are affected: tests sharing one simulator keep their attempt counts
  /// apart (each sends its own session header via RequestOptions::headers).
  std::string session;
  /// HTTP status to answer with; 0 keeps the normal status (200).
  int status = 0;
  /// Body to send instead of the normal one (when `replace_body`).
  std::string body;
  bool replace_body = false;
  /// Content-Type of a replaced body.
  std::string content_type = "application/json";
  /// Extra response headers (e.g. {"Retry-After", "2"}).
  std::vector<std::pair<std::string, std::string>> headers;
  /// Wait this long before sending the status line.
  std::chrono::milliseconds delay{0};
  /// Hold the answer until the simulator has received this many requests
  /// in all (0: off): proves that many requests were in flight at once.
  std::size_t hold_until_requests = 0;
  /// Close the connection (FIN) after this many body bytes, although the
  /// Content-Length announced the whole body.
  std::optional<std::size_t> close_after_bytes;
  /// Reset the connection (RST) after this many body bytes.
  std::optional<std::size_t> reset_after_bytes;
  /// Close the connection without sending anything.
  bool drop = false;
  /// Send the body with `Transfer-Encoding: chunked` (no Content-Length).
  bool chunked = false;
  /// gzip the body when the request accepts gzip.
  bool gzip = false;

  // Streams (requests with "stream": true). `close_after_bytes` and
  // `reset_after_bytes` count event-stream bytes there.
  /// Insert `: keep-alive` comment lines between events.
  bool stream_comments = false;
  /// End lines with CRLF instead of LF.
  bool stream_crlf = false;
  /// After this many content chunks, send an error object and end (no [DONE]).
  std::optional<int> stream_error_after;
  /// End the stream without `[DONE]` (a clean close).
  bool stream_no_done = false;
  /// After this many event-stream bytes, go silent for `stall`, then go on.
  std::optional<std::size_t> stall_after_bytes;
  std::chrono::milliseconds stall{0};
};

/// A request as the simulator received it.
struct ReceivedRequest {
  std::string method;
  std::string path;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::chrono::system_clock::time_point received_at;
  /// Which connection it came on (1, 2, … in accept order): equal ids mean
  /// the client reused a kept-alive connection.
  std::uint64_t connection_id = 0;

  /// First header with this name (case-insensitive), or nullptr.
  const std::string* header(std::string_view name) const noexcept;
};

/// Settings of a `Simulator`.
struct SimulatorOptions {
  /// Address to bind. Keep it loopback.
  std::string host = "127.0.0.1";
  /// Port; 0 picks a free one (read it back with `port()`).
  std::uint16_t port = 0;
  /// When set, requests must carry `Authorization: Bearer <api_key>`.
  std::optional<std::string> api_key;
  /// Models listed by `GET /v1/models`.
  std::vector<std::string> models = {"claude-sonnet-4-6", "gpt-4o-mini", "sim-echo"};
  /// Keep a copy of every request (see `requests()`).
  bool record_requests = true;
  /// Requests with larger bodies get 413.
  std::size_t max_request_bytes = std::size_t{16} << 20;
  /// Streams are written in random fragments of 1..`max_fragment` bytes…
  std::size_t max_fragment = 48;
  /// …with a random pause of 0..`max_fragment_delay` between fragments.
  std::chrono::microseconds max_fragment_delay{1000};
};

/// The simulator server. Start it, point a client at `base_url()`, script
/// faults, read back what it received.
///
/// Thread safety: all methods may be called from any thread while it runs.
/// It serves each connection on its own thread; `stop()` (or the destructor)
/// closes every connection and joins every thread.
class Simulator {
 public:
  explicit Simulator(SimulatorOptions options = {});
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  /// Binds and starts serving. Throws std::system_error when binding fails.
  void start();
  /// Stops serving; idempotent.
  void stop();

  /// The bound port (after `start()`).
  std::uint16_t port() const noexcept;
  /// "http://127.0.0.1:<port>/v1".
  std::string base_url() const;

  /// The next `times` matching requests get `fault` (queued after earlier
  /// pushes): "fail the first N attempts, then succeed".
  void push_fault(Fault fault, int times = 1);
  /// Every matching request gets `fault` once the queue is empty; `nullopt`
  /// restores normal answers.
  void set_fault(std::optional<Fault> fault);
  /// Drops queued faults and the persistent one.
  void clear_faults();

  /// Copies of the requests received so far, oldest first.
  std::vector<ReceivedRequest> requests() const;
  /// Number of requests received so far (also when not recording).
  std::size_t request_count() const noexcept;
  /// Forgets recorded requests.
  void clear_requests();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Builds the simulator's normal chat-completion body for a request body
/// (exposed for tests and benchmarks). Returns an OpenAI error body and sets
/// `status` when the request is invalid.
std::string completion_for(std::string_view request_body, int& status);

}  // namespace sim
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SIMULATOR_H
