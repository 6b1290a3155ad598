#ifndef TAOTOKEN_OPTIONS_H
#define TAOTOKEN_OPTIONS_H

/// @file
/// Client-wide and per-call configuration.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "taotoken/cancel.h"
#include "taotoken/retry.h"
#include "taotoken/usage.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// The base URL used when neither `ClientOptions::base_url` nor
/// `TAOTOKEN_BASE_URL` is set. Like the official SDKs, the base includes the
/// API version; the client appends `/chat/completions` and `/models`.
inline constexpr const char* kDefaultBaseUrl = "https://taotoken.net/api/v1";
/// The model used when a request names none and no default was configured.
inline constexpr const char* kDefaultModel = "claude-sonnet-4-6";
/// Default cap on a response body.
inline constexpr std::size_t kDefaultMaxResponseBytes = std::size_t{32} << 20;

/// Configuration of a `TaotokenClient`. A plain struct: set what you need.
///
/// Empty strings mean "use the default", resolved once when the client is
/// constructed:
///
/// | field          | when empty                                           |
/// |----------------|------------------------------------------------------|
/// | `base_url`     | env `TAOTOKEN_BASE_URL`, else `kDefaultBaseUrl`       |
/// | `api_key`      | env `TAOTOKEN_API_KEY`, else none (only loopback URLs may be used without a key) |
/// | `default_model`| `kDefaultModel`                                      |
/// | `user_agent`   | `taotoken-cpp/<version>`                             |
///
/// TLS peer and host verification are always on; there is no option to
/// turn them off. Use `ca_bundle` / `ca_path` for private CAs.
struct ClientOptions {
  /// Base URL, e.g. "https://taotoken.net/api/v1" (trailing slashes ignored).
  std::string base_url;
  /// Bearer token for `Authorization`. Never logged, never put in errors.
  std::string api_key;
  /// Model used when `ChatRequest::model` is empty.
  std::string default_model;
  /// Time allowed to establish a connection (TCP + TLS).
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  /// Total deadline of a request: every attempt and every wait between
  /// attempts. A retry never starts if its wait would cross it.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
  /// Time allowed for one attempt, from sending to the last body byte;
  /// unset: the remaining total deadline.
  std::optional<std::chrono::milliseconds> attempt_timeout;
  /// Time allowed from sending until the first response byte (status line)
  /// of an attempt; unset: no separate limit. Checked at least once a second
  /// (libcurl's progress callback), so it is not precise below a second.
  std::optional<std::chrono::milliseconds> first_byte_timeout;
  /// Streams: a stream that receives no bytes for this long fails with
  /// `timeout`; a stream that keeps flowing is never cut. Unset: none.
  std::optional<std::chrono::milliseconds> idle_timeout;
  /// Streams: send `stream_options: {"include_usage": true}` unless the
  /// request sets `stream_options` itself, so streamed calls are costed.
  bool stream_include_usage = true;
  /// Retry policy prototype, cloned per request; null means
  /// `RetryPolicy::standard()` (2 retries, the OpenAI SDKs' schedule).
  std::shared_ptr<const RetryPolicy> retry_policy;
  /// Optional quota shared by clients to stop retry storms; null: off.
  std::shared_ptr<RetryBudget> retry_budget;
  /// Called before each retry wait, on the client's loop thread: must not
  /// block. An exception from it ends the call (see `TaotokenClient`).
  std::function<void(const RetryEvent&)> on_retry;
  /// Replaces the wait between attempts. Default (unset): a timer on the
  /// client's loop, ended at once by `RequestOptions::cancel`; no thread
  /// sleeps. When set, it is called on the loop thread and the next attempt
  /// starts when it returns: tests inject a no-op to run retry schedules in
  /// microseconds. Anything slower blocks every call of the client.
  std::function<void(std::chrono::milliseconds)> sleep_for;
  /// Headers added to every request (e.g. "HTTP-Referer"). Names and values
  /// containing CR or LF are rejected.
  std::vector<std::pair<std::string, std::string>> default_headers;
  /// `User-Agent` header.
  std::string user_agent;
  /// Proxy URL passed to libcurl (`CURLOPT_PROXY`), e.g. "http://proxy:3128".
  /// Empty: libcurl's defaults apply (it honours `https_proxy` / `no_proxy`)
  /// when any proxy variable is set in the environment as the client is
  /// constructed; when none is, the client uses no proxy (and libcurl skips
  /// looking them up on every transfer).
  std::string proxy;
  /// CA bundle file (`CURLOPT_CAINFO`); empty: the system default.
  std::string ca_bundle;
  /// CA directory (`CURLOPT_CAPATH`); empty: the system default.
  std::string ca_path;
  /// Send our request id upstream as `X-Client-Request-Id` (OpenAI logs it
  /// and quotes it in support cases). Off by default, like the official SDKs:
  /// the id is still made, returned and recorded either way.
  bool send_request_id = false;
  /// Recorders that receive one `RequestRecord` per chat request (chat,
  /// chat_stream, forward, forward_stream), whatever its outcome.
  std::vector<std::shared_ptr<UsageRecorder>> recorders;
  /// Prices for `RequestRecord::estimated_cost`; null: no estimate.
  std::shared_ptr<const PriceTable> prices;
  /// Where recorder failures go (default: one line on stderr).
  RecorderErrorHook on_recorder_error;
  /// Add a redacted request summary (model, parameters, message count and
  /// sizes) to each record.
  bool record_request_summary = false;
  /// Include message text in that summary. Off by default: records are
  /// often kept longer and wider than prompts should be.
  bool record_message_text = false;
  /// Responses larger than this fail with `bad_response` instead of using
  /// unbounded memory.
  std::size_t max_response_bytes = kDefaultMaxResponseBytes;

  // ---- concurrency (see docs/async.md)

  /// Calls of this client in progress at once (sync and async alike; a call
  /// counts from its first attempt until its result, retry waits
  /// included). 0: no cap. Beyond it, calls wait in a queue.
  std::size_t max_in_flight = 0;
  /// Calls that may wait for a free slot when `max_in_flight` is reached;
  /// a call beyond this fails at once with `ErrorKind::overloaded`.
  /// 0 makes the cap fail fast.
  std::size_t max_queued = 10000;
  /// Connections to one host (libcurl's `CURLMOPT_MAX_HOST_CONNECTIONS`);
  /// transfers beyond it wait for a connection (or share one with HTTP/2).
  /// 0: no cap.
  long max_connections_per_host = 0;
  /// Where the completion callbacks of `*_async` calls run. Unset: on the
  /// client's loop thread, where they must not block. Set it to hand them
  /// to your own executor (a thread pool, an io_context). Chunk callbacks
  /// always run on the loop thread (their return value steers the transfer).
  std::function<void(std::function<void()>)> callback_executor;
};

/// Per-call overrides. Unset fields use the client's `ClientOptions`.
struct RequestOptions {
  /// Overrides `ClientOptions::timeout` (total deadline) for this call.
  std::optional<std::chrono::milliseconds> timeout;
  /// Overrides `ClientOptions::attempt_timeout` for this call.
  std::optional<std::chrono::milliseconds> attempt_timeout;
  /// Overrides `ClientOptions::first_byte_timeout` for this call.
  std::optional<std::chrono::milliseconds> first_byte_timeout;
  /// Overrides `ClientOptions::idle_timeout` for this call.
  std::optional<std::chrono::milliseconds> idle_timeout;
  /// Retries for this call with the standard policy (ignored when
  /// `retry_policy` is set). 0 disables retries.
  std::optional<int> max_retries;
  /// A policy prototype for this call.
  std::shared_ptr<const RetryPolicy> retry_policy;
  /// Tags copied into this request's `RequestRecord` (user, feature, tenant…).
  std::vector<std::pair<std::string, std::string>> tags;
  /// Cancels this call from another thread (see `CancelToken`).
  std::shared_ptr<CancelToken> cancel;
  /// Extra headers for this call (added after the default headers).
  std::vector<std::pair<std::string, std::string>> headers;
  /// Use this request id instead of generating one (e.g. a proxy passing on
  /// its own client's id). Must be printable ASCII without spaces.
  std::optional<std::string> request_id;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_OPTIONS_H
