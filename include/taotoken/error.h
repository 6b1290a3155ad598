#ifndef TAOTOKEN_ERROR_H
#define TAOTOKEN_ERROR_H

/// @file
/// The one error type of taotoken-cpp: a value carried by `Result<T>` and the
/// exception thrown by `Result<T>::value()`.

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// What went wrong, coarse enough to act on.
///
/// HTTP statuses map as the official OpenAI SDKs do: 400 `invalid_request`,
/// 401 `authentication`, 403 `permission_denied`, 404 `not_found`,
/// 408 `timeout`, 409 `conflict`, 422 `unprocessable`, 429 `rate_limited`,
/// >= 500 `server_error`; any other 4xx is `invalid_request`.
enum class ErrorKind {
  invalid_request,    ///< upstream rejected the request (HTTP 400, other 4xx)
  authentication,     ///< HTTP 401: missing or wrong API key
  permission_denied,  ///< HTTP 403
  not_found,          ///< HTTP 404: unknown model or endpoint
  conflict,           ///< HTTP 409
  unprocessable,      ///< HTTP 422
  rate_limited,       ///< HTTP 429, or an aggregator's in-body 429
  server_error,       ///< HTTP >= 500, or an error object in a 200 body
  timeout,            ///< connect or total timeout expired (or HTTP 408)
  connection,         ///< refused, reset, DNS/TLS failure, body cut short
  bad_response,       ///< malformed JSON, invalid UTF-8, oversized body
  cancelled,          ///< the caller cancelled the request
  invalid_argument,   ///< the request could not be sent as given
  stream_truncated,   ///< a stream ended (closed, reset) before `[DONE]`
  overloaded,         ///< the client's own cap on requests in flight and queued was reached
};

/// Stable snake_case name of a kind, e.g. "rate_limited".
std::string_view to_string(ErrorKind kind) noexcept;

struct ChatCompletion;

/// The outcome of one attempt of a request (for retries and usage records).
struct AttemptRecord {
  /// HTTP status received, 0 when none.
  int http_status = 0;
  /// Why the attempt failed; unset for the attempt that succeeded.
  std::optional<ErrorKind> error;
  /// From sending to the end of the attempt.
  std::chrono::milliseconds latency{0};
  /// The wait before this attempt (0 for the first).
  std::chrono::milliseconds delay_before{0};
};

/// An error from a taotoken call.
///
/// It is both the value in a failed `Result<T>` and the exception thrown by
/// `Result<T>::value()`. `what()` is "<kind>: <message>"; `describe()` adds
/// the HTTP status, upstream type/code, request ids and attempt count.
/// It never contains the API key: upstream messages and body excerpts are
/// scrubbed before they are stored.
///
/// Thread safety: immutable after construction; safe to share.
class Error : public std::runtime_error {
 public:
  /// Builds an error of `kind` with a message (upstream's or our own).
  Error(ErrorKind kind, std::string message);

  ErrorKind kind() const noexcept { return kind_; }
  /// The message alone (upstream's `error.message` when there was one).
  const std::string& message() const noexcept { return message_; }

  /// HTTP status of the final attempt, 0 when no response was received.
  int http_status = 0;
  /// Upstream `error.type` when the body was JSON and carried one.
  std::optional<std::string> type;
  /// Upstream `error.code` (numbers are kept as their decimal text).
  std::optional<std::string> code;
  /// Upstream `error.param`.
  std::optional<std::string> param;
  /// A short excerpt of a non-JSON error body (HTML, text), for diagnosis.
  std::optional<std::string> body_excerpt;
  /// The wait the server asked for (`retry-after-ms` or `Retry-After`).
  std::optional<std::chrono::milliseconds> retry_after;
  /// Our id for the request (`req_<unix ms>_<9 base-36 chars>`).
  std::string request_id;
  /// The upstream's `x-request-id`, when it sent one.
  std::string upstream_request_id;
  /// Number of attempts made (0 when the request was never sent).
  int attempts = 0;
  /// The server's `x-should-retry` header, when it sent one.
  std::optional<bool> should_retry;
  /// Every attempt, oldest first.
  std::vector<AttemptRecord> attempt_log;
  /// For a stream that failed after it started: what arrived before the
  /// failure (content, tool calls, usage if it came), assembled.
  std::shared_ptr<const ChatCompletion> partial;

  /// One line with every field that is set, for logs.
  std::string describe() const;

 private:
  ErrorKind kind_;
  std::string message_;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_ERROR_H
