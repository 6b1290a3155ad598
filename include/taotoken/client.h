#ifndef TAOTOKEN_CLIENT_H
#define TAOTOKEN_CLIENT_H

/// @file
/// `TaotokenClient`: calls an OpenAI-compatible chat-completion API.

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

/// A client for `{base_url}/chat/completions` and `{base_url}/models`.
///
/// A cheap-to-copy handle over a shared implementation: copies share the
/// options and the connection pool. All methods are `const` and safe to call
/// from many threads at once on one client (or on copies). Connections are
/// kept alive and reused across calls. The implementation lives until the
/// last copy is destroyed.
///
/// Calls never throw (except `std::bad_alloc`): failures come back as a
/// `Result` holding an `Error`.
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
  /// return false to cancel. The result is the assembled completion
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
  /// runs on a helper thread owned by the stream (one per stream), with
  /// chunks handed over through a small queue.
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
