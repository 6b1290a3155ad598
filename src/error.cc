#include "taotoken/error.h"

#include <fmt/format.h>

TAOTOKEN_BEGIN_NAMESPACE

std::string_view to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_request: return "invalid_request";
    case ErrorKind::authentication: return "authentication";
    case ErrorKind::permission_denied: return "permission_denied";
    case ErrorKind::not_found: return "not_found";
    case ErrorKind::conflict: return "conflict";
    case ErrorKind::unprocessable: return "unprocessable";
    case ErrorKind::rate_limited: return "rate_limited";
    case ErrorKind::server_error: return "server_error";
    case ErrorKind::timeout: return "timeout";
    case ErrorKind::connection: return "connection";
    case ErrorKind::bad_response: return "bad_response";
    case ErrorKind::cancelled: return "cancelled";
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::stream_truncated: return "stream_truncated";
    case ErrorKind::overloaded: return "overloaded";
  }
  return "unknown";
}

Error::Error(ErrorKind kind, std::string message)
    : std::runtime_error(fmt::format("{}: {}", taotoken::to_string(kind), message)),
      kind_(kind),
      message_(std::move(message)) {}

std::string Error::describe() const {
  std::string out = fmt::format("{}: {}", taotoken::to_string(kind_), message_);
  if (http_status) out += fmt::format(" [http_status={}]", http_status);
  if (type) out += fmt::format(" [type={}]", *type);
  if (code) out += fmt::format(" [code={}]", *code);
  if (param) out += fmt::format(" [param={}]", *param);
  if (retry_after) out += fmt::format(" [retry_after_ms={}]", retry_after->count());
  if (!request_id.empty()) out += fmt::format(" [request_id={}]", request_id);
  if (!upstream_request_id.empty()) out += fmt::format(" [upstream_request_id={}]", upstream_request_id);
  if (attempts) out += fmt::format(" [attempts={}]", attempts);
  if (body_excerpt) out += fmt::format(" [body: {}]", *body_excerpt);
  return out;
}

TAOTOKEN_END_NAMESPACE
