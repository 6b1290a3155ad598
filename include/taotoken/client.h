#ifndef TAOTOKEN_CLIENT_H
#define TAOTOKEN_CLIENT_H

/// @file
/// `TaotokenClient`: calls an OpenAI-compatible chat-completion API.

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/options.h"
#include "taotoken/result.h"
#include "taotoken/stream.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Completion callback of `chat_async` / `chat_stream_async`.
using ChatCallback = std::function<void(Result<ChatCompletion>)>;
/// Completion callback of `forward_async`.
using RawCallback = std::function<void(Result<RawResponse>)>;

/// The handle of one asynchronous call: cancel it, or read its request id.
/// Cheap to copy; may outlive the call and the client.
class AsyncCall {
 public:
  AsyncCall() = default;
  /// Ends the call at once with a `cancelled` result (and record), unless
  /// it already ended. Thread-safe; callable from any callback; does
  /// nothing once the client is gone.
  void cancel() const noexcept {
    try {
      if (cancel_) cancel_();
    } catch (...) {  // only allocation can fail here; the call then runs on
    }
  }
  /// The call's request id (`req_<ms>_<9 chars>`).
  const std::string& request_id() const noexcept { return id_; }

 private:
  friend class TaotokenClient;
  AsyncCall(std::function<void()> cancel, std::string id) : cancel_(std::move(cancel)), id_(std::move(id)) {}
  std::function<void()> cancel_;
  std::string id_;
};

/// A client for `{base_url}/chat/completions` and `{base_url}/models`.
///
/// A cheap-to-copy handle over a shared implementation: copies share the
/// options and the connection pool. All methods are `const` and safe to call
/// from many threads at once on one client (or on copies). Connections are
/// kept alive and reused across calls. The implementation lives until the
/// last copy is destroyed.
///
/// Calls never throw (except `std::bad_alloc`, and an exception thrown by
/// your own callback or hook, which is passed on): failures come back as a
/// `Result` holding an `Error`.
///
/// **One event loop per client.** Each client (with its copies) owns one
/// thread driving a libcurl multi handle. Every call runs there, the
/// synchronous ones too: a synchronous call hands its request to the loop
/// and waits, so sync and async calls share one connection pool, one
/// in-flight cap and one set of timers. Retry waits are timers on the
/// loop; no thread sleeps for a call.
///
/// **Callbacks.** The chunk and completion callbacks of the `*_async` calls
/// run on the loop thread and must not block (set
/// `ClientOptions::callback_executor` to run completions elsewhere). The
/// callbacks of the synchronous calls (`chat_stream`'s `on_chunk`,
/// `forward_stream`'s sink) run on the calling thread, fed from the loop
/// through a bounded queue: a slow callback pauses its own transfer, never
/// the others. A synchronous call made on the loop thread (from an async
/// callback) would wait for itself: it fails at once with
/// `invalid_argument` instead.
///
/// **Shutdown.** Destroying the last copy cancels every call still in
/// progress (each gets its `cancelled` result and record), drains the
/// recorders and joins the loop thread. If that last copy is destroyed on
/// the loop thread itself (inside a callback), the same happens just after
/// the callback returns, and the thread then exits on its own.
///
/// @code
/// taotoken::TaotokenClient client;  // TAOTOKEN_API_KEY, TAOTOKEN_BASE_URL
/// taotoken::ChatRequest req;
/// req.messages.push_back(taotoken::Message::user("Say hello"));
/// auto r = client.chat(req);
/// if (r) std::cout << r->text() << "\n";
/// else   std::cerr << r.error().describe() << "\n";
/// @endcode
class TaotokenClient {
 public:
  /// A client configured from the environment (see `ClientOptions`).
  /// Throws `Error` (`invalid_argument`) when the environment holds an
  /// invalid base URL.
  TaotokenClient();
  /// A client with these options. Throws `Error` (`invalid_argument`) for an
  /// invalid base URL or a header containing CR/LF; use `create()` to get a
  /// `Result` instead.
  explicit TaotokenClient(ClientOptions options);

  /// Like the constructor, but reports invalid options as a `Result`.
  static Result<TaotokenClient> create(ClientOptions options);

  /// `POST {base}/chat/completions` without streaming.
  ///
  /// A 200 response whose body carries an `error` object is a failure.
  /// The request model defaults to `ClientOptions::default_model`.
  Result<ChatCompletion> chat(const ChatRequest& request, const RequestOptions& options = {}) const;

  /// Sends a caller's JSON body as is to `{base}/chat/completions` and
  /// returns the upstream's status, headers and body bytes unchanged: what a
  /// proxy needs. Only `"model"` is added (the default model) when the body
  /// has none. Any HTTP status is a successful `Result`; only failures to
  /// get a response (connection, timeout, oversized body) are errors.
  /// The body is not decompressed: unless you pass `Accept-Encoding` in
  /// `options.headers`, none is requested.
  Result<RawResponse> forward(std::string_view json_body, const RequestOptions& options = {}) const;

  /// `POST {base}/chat/completions` with `"stream": true`.
  ///
  /// `on_chunk` is called on this thread for every chunk as it arrives;
  /// return false to cancel (if everything had already arrived, the call
  /// still reports `cancelled`, with the whole completion as `partial`). The result is the assembled completion
  /// (content and refusal concatenated, tool calls merged by index, the last
  /// finish reason, usage from the chunk carrying it), with
  /// `time_to_first_token` set. Failures before the first chunk are retried
  /// per the policy; after a chunk reached `on_chunk`, nothing is retried: a
  /// cut stream fails with `stream_truncated`, an error event with the
  /// upstream's error, and `Error::partial` holds what arrived.
  /// An upstream that ignores `stream` and answers with JSON is accepted:
  /// the completion is returned without chunk callbacks.
  Result<ChatCompletion> chat_stream(const ChatRequest& request, const ChunkCallback& on_chunk,
                                     const RequestOptions& options = {}) const;

  /// Pull-style streaming: iterate the returned `ChatStream`. The transfer
  /// runs on the client's loop; chunks are handed over through a bounded
  /// queue (a consumer that falls behind pauses the transfer).
  ChatStream stream(const ChatRequest& request, const RequestOptions& options = {}) const;

  /// `forward()` for streams: the upstream's status, headers and body bytes
  /// go to `sink` as they arrive, unchanged, while the library decodes the
  /// event stream to learn usage and errors (`RawResponse::decoded`). Error
  /// statuses are retried per the policy before anything reaches the sink.
  /// The returned `RawResponse` has an empty body (the bytes went to the sink).
  Result<RawResponse> forward_stream(std::string_view json_body, const ForwardSink& sink,
                                     const RequestOptions& options = {}) const;

  /// `GET {base}/models`.
  Result<std::vector<Model>> list_models(const RequestOptions& options = {}) const;

  // ---- asynchronous calls: return at once; the result comes later.

  /// `chat()` without waiting: `on_done` gets the result, exactly once, on
  /// the loop thread (or the `callback_executor`). `options.cancel` works as
  /// for sync calls; the returned handle can cancel too.
  AsyncCall chat_async(const ChatRequest& request, ChatCallback on_done, const RequestOptions& options = {}) const;
  /// `chat()` without waiting, as a future. Do not wait on it from a
  /// callback of this client (the loop would wait for itself).
  std::future<Result<ChatCompletion>> chat_async(const ChatRequest& request, const RequestOptions& options = {}) const;
  /// `chat_stream()` without waiting: `on_chunk` runs on the loop thread for
  /// each chunk (return false to cancel), then `on_done` gets the assembled
  /// completion. An exception from `on_chunk` ends the call as `cancelled`
  /// with the exception's message.
  AsyncCall chat_stream_async(const ChatRequest& request, ChunkCallback on_chunk, ChatCallback on_done,
                              const RequestOptions& options = {}) const;
  /// `forward()` without waiting.
  AsyncCall forward_async(std::string json_body, RawCallback on_done, const RequestOptions& options = {}) const;
  /// `forward()` without waiting, as a future.
  std::future<Result<RawResponse>> forward_async(std::string json_body, const RequestOptions& options = {}) const;
  /// `forward_stream()` without waiting; the sink runs on the loop thread.
  AsyncCall forward_stream_async(std::string json_body, ForwardSink sink, RawCallback on_done,
                                 const RequestOptions& options = {}) const;

  /// The resolved base URL (no trailing slash).
  const std::string& base_url() const noexcept;
  /// The resolved default model.
  const std::string& default_model() const noexcept;

  class Impl;

 private:
  explicit TaotokenClient(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

/// A new request id: `req_<unix ms>_<9 random base-36 chars>`. Thread-safe.
std::string make_request_id();

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_CLIENT_H
