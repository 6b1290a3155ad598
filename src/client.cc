#include "taotoken/client.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <thread>

#include "chat_stream.h"
#include "codec.h"
#include "json_writer.h"
#include "record_sql.h"
#include "sse.h"
#include "stream_assembler.h"
#include "transport.h"

TAOTOKEN_BEGIN_NAMESPACE

using detail::HttpRequest;
using detail::HttpResponse;
using Clock = std::chrono::steady_clock;

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool starts_with_icase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

// True for http(s)://localhost, 127.0.0.0/8 and [::1] base URLs: the only
// ones that may be used without an API key (the simulator, local proxies).
// The host comes from libcurl's own URL parser, so what we judge is what it
// will connect to ("127.0.0.1.example.com" is not loopback).
bool is_loopback_url(const std::string& url) {
  const auto host = detail::url_host(url);
  if (!host) return false;
  if (*host == "localhost" || *host == "::1") return true;
  in_addr addr{};
  if (::inet_pton(AF_INET, host->c_str(), &addr) != 1) return false;
  return (ntohl(addr.s_addr) >> 24) == 127;
}

bool is_token_char(char c) {
  // RFC 9110 tchar.
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && starts_with_icase(a, b);
}

// Headers that frame the message or belong to one connection: set by
// libcurl, never by callers (a wrong Content-Length on a kept-alive
// connection would smuggle the rest of the body as a second request).
bool is_reserved_header(std::string_view name) {
  static constexpr std::string_view kReserved[] = {"content-length", "transfer-encoding", "host", "connection",
                                                   "expect", "te", "trailer", "upgrade", "keep-alive",
                                                   "proxy-connection", "proxy-authorization"};
  for (auto r : kReserved)
    if (iequals(name, r)) return true;
  return false;
}

std::optional<Error> check_header(const std::string& name, const std::string& value) {
  if (name.empty()) return Error(ErrorKind::invalid_argument, "a header has an empty name");
  if (is_reserved_header(name))
    return Error(ErrorKind::invalid_argument,
                 fmt::format("header '{}' is managed by the HTTP layer and cannot be set", name));
  for (char c : name)
    if (!is_token_char(c))
      return Error(ErrorKind::invalid_argument, fmt::format("header name '{}' contains an invalid character", name));
  for (char c : value)
    if (c == '\r' || c == '\n' || c == '\0')
      return Error(ErrorKind::invalid_argument,
                   fmt::format("header '{}' has a value containing CR, LF or NUL (header injection)", name));
  return std::nullopt;
}

// Adds a header, replacing any earlier one of the same name: a caller's
// Authorization or Accept wins over the client's instead of being doubled.
void put_header(std::vector<Header>& headers, const Header& h) {
  headers.erase(std::remove_if(headers.begin(), headers.end(), [&](const Header& x) {
                  return x.first.size() == h.first.size() && starts_with_icase(x.first, lower(h.first));
                }),
                headers.end());
  headers.push_back(h);
}

std::optional<Error> check_request_id(const std::string& id) {
  if (id.empty() || id.size() > 128)
    return Error(ErrorKind::invalid_argument, "request_id must have 1 to 128 characters");
  for (char c : id)
    if (c <= 0x20 || c >= 0x7f)
      return Error(ErrorKind::invalid_argument, "request_id must be printable ASCII without spaces");
  return std::nullopt;
}

std::string replace_all(std::string s, std::string_view what, std::string_view with) {
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + with.size())) s.replace(p, what.size(), with);
  return s;
}

}  // namespace

std::string make_request_id() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(),
                      static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id()))};
    return std::mt19937_64(seq);
  }());
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  char suffix[9];
  std::uint64_t r = rng();
  for (char& c : suffix) {
    c = kDigits[r % 36];
    r /= 36;
  }
  return fmt::format("req_{}_{}", ms, std::string_view(suffix, sizeof suffix));
}

// Per-attempt streaming state plugged into the attempt loop.
struct StreamHooks {
  virtual ~StreamHooks() = default;
  // Resets per-attempt state and installs the body sink on the request.
  virtual void begin_attempt(HttpRequest& req) = 0;
  // True once anything reached the caller: the attempt may not be retried.
  virtual bool delivered() const = 0;
  // A transport failure after delivery (reset, idle timeout, stop) becomes
  // the stream's final error.
  // (After a complete stream, e.g. [DONE] then a reset, it is a success.)
  virtual Result<HttpResponse> after_delivery(Error transport_error) = 0;
};

class TaotokenClient::Impl {
 public:
  // Per-call bookkeeping.
  struct Call {
    explicit Call(const RequestOptions& ro) : id(ro.request_id ? *ro.request_id : make_request_id()) {
      // A per-call Authorization (a proxy passing a tenant's key) is a
      // secret too: errors are scrubbed of it like of the client's key.
      for (const auto& [name, value] : ro.headers)
        if (name.size() == 13 && starts_with_icase(name, "authorization"))
          key = starts_with_icase(value, "bearer ") ? value.substr(7) : value;
    }
    std::chrono::milliseconds elapsed() const {
      return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    }
    Clock::time_point start = Clock::now();
    std::chrono::system_clock::time_point started_at = std::chrono::system_clock::now();
    std::string id;
    std::string key;  // per-call secret to scrub, if any
  };

  static Result<std::shared_ptr<const Impl>> create(ClientOptions o) {
    if (o.base_url.empty()) o.base_url = env_or_empty("TAOTOKEN_BASE_URL");
    if (o.base_url.empty()) o.base_url = kDefaultBaseUrl;
    if (o.api_key.empty()) o.api_key = env_or_empty("TAOTOKEN_API_KEY");
    if (o.default_model.empty()) o.default_model = kDefaultModel;
    if (o.user_agent.empty()) o.user_agent = "taotoken-cpp/" TAOTOKEN_VERSION_STRING;
    while (!o.base_url.empty() && o.base_url.back() == '/') o.base_url.pop_back();
    if (!starts_with_icase(o.base_url, "http://") && !starts_with_icase(o.base_url, "https://"))
      return Error(ErrorKind::invalid_argument,
                   fmt::format("base URL '{}' must start with http:// or https://", o.base_url));
    for (char c : o.base_url)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
        return Error(ErrorKind::invalid_argument, "base URL contains a space or control character");
    for (const auto& [name, value] : o.default_headers)
      if (auto e = check_header(name, value)) return std::move(*e);
    for (char c : o.api_key)
      if (c == '\r' || c == '\n' || c == '\0')
        return Error(ErrorKind::invalid_argument, "the API key contains CR, LF or NUL");
    for (char c : o.user_agent)
      if (c == '\r' || c == '\n' || c == '\0')
        return Error(ErrorKind::invalid_argument, "the user agent contains CR, LF or NUL");
    if (o.connect_timeout.count() <= 0 || o.timeout.count() <= 0)
      return Error(ErrorKind::invalid_argument, "timeouts must be positive");
    if (o.max_response_bytes == 0) return Error(ErrorKind::invalid_argument, "max_response_bytes must be positive");
    return std::shared_ptr<const Impl>(new Impl(std::move(o)));
  }

  // The last handle is gone: drain every recorder's queue so a clean
  // shutdown loses no record.
  ~Impl() {
    for (const auto& recorder : opts_.recorders) {
      try {
        recorder->flush();
      } catch (const std::exception& e) {
        report_recorder_error("recorder", e.what());
      } catch (...) {
      }
    }
  }

  const ClientOptions& options() const noexcept { return opts_; }

  Result<ChatCompletion> chat(const ChatRequest& request, const RequestOptions& ro) const {
    Call call(ro);
    std::optional<Result<ChatCompletion>> result;
    try {
      result.emplace(chat_impl(request, ro, call));
    } catch (const std::exception& ex) {
      record_exception(call, "chat", requested_model(request), false, ro, ex.what());
      throw;
    } catch (...) {
      record_exception(call, "chat", requested_model(request), false, ro, "a non-standard exception");
      throw;
    }
    auto& r = *result;
    if (!opts_.recorders.empty())
      emit(call, "chat", requested_model(request), false, ro, r.ok() ? &*r : nullptr, r.ok() ? nullptr : &r.error(),
           summary_of(request));
    return std::move(r);
  }

  // A user hook (retry policy, on_retry, sleep_for, chunk callback, sink)
  // threw: the call still leaves one record, then the exception goes on.
  void record_exception(const Call& call, std::string_view endpoint, std::string model, bool streamed,
                        const RequestOptions& ro, std::string_view what) const {
    if (opts_.recorders.empty()) return;
    Error e(ErrorKind::cancelled, fmt::format("stopped by an exception from a callback: {}", what));
    e.request_id = call.id;
    emit(call, endpoint, std::move(model), streamed, ro, nullptr, &e, std::nullopt);
  }

  Result<ChatCompletion> chat_impl(const ChatRequest& request, const RequestOptions& ro, Call& call) const {
    if (auto e = precheck(ro, call)) return finish_error(std::move(*e), call, 0);
    auto body = detail::encode_chat_request(request, opts_.default_model, false);
    if (!body) return finish_error(std::move(body.error()), call, 0);
    return execute<ChatCompletion>(
        HttpRequest::Method::post, chat_url_, *body, ro, call, /*passthrough=*/false,
        [](HttpResponse& r) -> Result<ChatCompletion> {
          if (r.status < 200 || r.status >= 300) return status_error(r);
          auto decoded = detail::decode_chat_completion(r.body);
          if (!decoded) return success_status_error(std::move(decoded.error()), r);
          decoded->http_status = r.status;
          return decoded;
        },
        [](HttpResponse&) -> std::optional<ChatCompletion> { return std::nullopt; });
  }

  Result<RawResponse> forward(std::string_view json_body, const RequestOptions& ro) const {
    Call call(ro);
    std::string model;
    std::optional<Result<RawResponse>> result;
    try {
      result.emplace(forward_impl(json_body, ro, call, model));
    } catch (const std::exception& ex) {
      record_exception(call, "forward", model, false, ro, ex.what());
      throw;
    } catch (...) {
      record_exception(call, "forward", model, false, ro, "a non-standard exception");
      throw;
    }
    if (!opts_.recorders.empty()) emit_forward(call, "forward", model, false, ro, *result, json_body.size());
    return std::move(*result);
  }

  Result<RawResponse> forward_impl(std::string_view json_body, const RequestOptions& ro, Call& call,
                                   std::string& model) const {
    if (auto e = precheck(ro, call)) return finish_error(std::move(*e), call, 0);
    auto body = detail::fill_default_model(json_body, opts_.default_model, &model);
    if (!body) return finish_error(std::move(body.error()), call, 0);
    auto to_raw = [](HttpResponse& r) {
      RawResponse out;
      out.status = r.status;
      out.headers = std::move(r.headers);
      out.body = std::move(r.body);
      return out;
    };
    // Retryable HTTP errors go through the policy like any failure; when it
    // gives up, the upstream's response is passed through as it came.
    return execute<RawResponse>(
        HttpRequest::Method::post, chat_url_, *body, ro, call, /*passthrough=*/true,
        [&](HttpResponse& r) { return retry_or_pass(r, to_raw); },
        [&](HttpResponse& r) -> std::optional<RawResponse> { return to_raw(r); });
  }

  Result<ChatCompletion> chat_stream(const ChatRequest& request, const ChunkCallback& on_chunk,
                                     const RequestOptions& ro) const {
    Call call(ro);
    std::optional<Result<ChatCompletion>> r;
    try {
      r.emplace(chat_stream_impl(request, on_chunk, ro, call));
    } catch (const std::exception& ex) {
      record_exception(call, "chat_stream", requested_model(request), true, ro, ex.what());
      throw;
    } catch (...) {
      record_exception(call, "chat_stream", requested_model(request), true, ro, "a non-standard exception");
      throw;
    }
    if (!opts_.recorders.empty())
      emit(call, "chat_stream", requested_model(request), true, ro, r->ok() ? &**r : nullptr,
           r->ok() ? nullptr : &r->error(), summary_of(request));
    return std::move(*r);
  }

  Result<ChatCompletion> chat_stream_impl(const ChatRequest& request, const ChunkCallback& on_chunk,
                                          const RequestOptions& ro, Call& call) const {
    if (auto e = precheck(ro, call)) return finish_error(std::move(*e), call, 0);
    auto body = detail::encode_chat_request(request, opts_.default_model, true, opts_.stream_include_usage);
    if (!body) return finish_error(std::move(body.error()), call, 0);

    struct Hooks final : StreamHooks {
      Hooks(const ChunkCallback& cb, Clock::time_point started, std::size_t max_json_bytes)
          : on_chunk(cb), start(started), max_json(max_json_bytes) {}
      void begin_attempt(HttpRequest& req) override {
        decoder = detail::SseDecoder();
        assembler = detail::StreamAssembler();
        json_mode = false;
        json_body.clear();
        req.on_start = [this](int, const std::vector<Header>& headers) {
          const std::string* ct = detail::find_header(headers, "content-type");
          json_mode = ct && ct->find("event-stream") == std::string::npos && ct->find("json") != std::string::npos;
        };
        req.on_data = [this](std::string_view bytes) { return json_mode ? collect(bytes) : feed(bytes); };
        complete.store(false);
        req.complete = &complete;
      }
      bool delivered() const override { return delivered_; }
      Result<HttpResponse> after_delivery(Error e) override {
        if (assembler.done() && !user_stopped) {
          HttpResponse ok;  // everything arrived; how the connection ended does not matter
          ok.status = e.http_status ? e.http_status : 200;
          return ok;
        }
        if (user_stopped || e.kind() == ErrorKind::cancelled) {
          Error out(ErrorKind::cancelled, user_stopped ? "the chunk callback cancelled the stream" : e.message());
          return with_partial(std::move(out));
        }
        if (e.kind() == ErrorKind::timeout) return with_partial(std::move(e));
        Error cut(ErrorKind::stream_truncated, "the stream was cut before [DONE]: " + e.message());
        cut.http_status = e.http_status;
        return with_partial(std::move(cut));
      }
      bool collect(std::string_view bytes) {
        if (json_body.size() + bytes.size() > max_json) return false;
        json_body.append(bytes);
        return true;
      }
      bool feed(std::string_view bytes) {
        return decoder.feed(bytes, [this](const detail::SseEvent& ev) {
          const auto step = assembler.on_event(ev);
          if (step == detail::StreamAssembler::Step::done || step == detail::StreamAssembler::Step::failed)
            complete.store(true);
          if (step != detail::StreamAssembler::Step::chunk) return true;
          if (!ttft && assembler.has_token())
            ttft = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
          delivered_ = true;
          try {
            if (on_chunk && !on_chunk(assembler.chunk())) {
              user_stopped = true;
              return false;
            }
          } catch (...) {
            user_exception = std::current_exception();
            user_stopped = true;
            return false;
          }
          return true;
        });
      }
      Error with_partial(Error e) const {
        auto partial = std::make_shared<ChatCompletion>(assembler.assemble());
        partial->time_to_first_token = ttft;
        e.partial = std::move(partial);
        return e;
      }
      // The end of a 2xx attempt.
      Result<ChatCompletion> finish(HttpResponse& r) {
        if (json_mode) {
          auto c = detail::decode_chat_completion(json_body);
          if (c) c->http_status = r.status;
          return c;
        }
        assembler.on_end(decoder);
        if (assembler.error()) {
          Error e = *assembler.error();
          if (!delivered_) e.should_retry = false;  // an upstream's verdict, not a transport fault
          return with_partial(std::move(e));
        }
        if (!assembler.done()) {
          Error e(ErrorKind::stream_truncated, decoder.has_unterminated_tail()
                                                   ? "the stream ended in the middle of an event, before [DONE]"
                                                   : "the stream ended before [DONE]");
          if (!delivered_) e.should_retry = true;  // nothing reached the caller: safe to try again
          return with_partial(std::move(e));
        }
        ChatCompletion c = assembler.assemble();
        c.http_status = r.status;
        c.time_to_first_token = ttft;
        return c;
      }

      const ChunkCallback& on_chunk;
      std::atomic<bool> complete{false};
      Clock::time_point start;
      std::size_t max_json;
      detail::SseDecoder decoder;
      detail::StreamAssembler assembler;
      bool json_mode = false;
      std::string json_body;
      bool delivered_ = false;
      bool user_stopped = false;
      std::exception_ptr user_exception;
      std::optional<std::chrono::milliseconds> ttft;
    } hooks(on_chunk, call.start, opts_.max_response_bytes);

    auto result = execute<ChatCompletion>(
        HttpRequest::Method::post, chat_url_, *body, ro, call, /*passthrough=*/false,
        [&](HttpResponse& r) -> Result<ChatCompletion> {
          if (r.status < 200 || r.status >= 300) return status_error(r);
          auto c = hooks.finish(r);
          if (!c) return success_status_error(std::move(c.error()), r);
          return c;
        },
        [](HttpResponse&) -> std::optional<ChatCompletion> { return std::nullopt; }, &hooks);
    if (hooks.user_exception) std::rethrow_exception(hooks.user_exception);
    return result;
  }

  Result<RawResponse> forward_stream(std::string_view json_body, const ForwardSink& sink,
                                     const RequestOptions& ro) const {
    Call call(ro);
    std::string model;
    std::optional<Result<RawResponse>> r;
    try {
      r.emplace(forward_stream_impl(json_body, sink, ro, call, model));
    } catch (const std::exception& ex) {
      record_exception(call, "forward_stream", model, true, ro, ex.what());
      throw;
    } catch (...) {
      record_exception(call, "forward_stream", model, true, ro, "a non-standard exception");
      throw;
    }
    if (!opts_.recorders.empty()) emit_forward(call, "forward_stream", model, true, ro, *r, json_body.size());
    return std::move(*r);
  }

  Result<RawResponse> forward_stream_impl(std::string_view json_body, const ForwardSink& sink,
                                          const RequestOptions& ro, Call& call, std::string& model) const {
    if (auto e = precheck(ro, call)) return finish_error(std::move(*e), call, 0);
    auto body = detail::fill_default_model(json_body, opts_.default_model, &model);
    if (!body) return finish_error(std::move(body.error()), call, 0);

    struct Hooks final : StreamHooks {
      explicit Hooks(const ForwardSink& s) : sink(s) {}
      void begin_attempt(HttpRequest& req) override {
        decoder = detail::SseDecoder();
        assembler = detail::StreamAssembler();
        event_stream = false;
        complete.store(false);
        req.complete = &complete;
        req.on_start = [this](int s, const std::vector<Header>& hs) {
          const std::string* ct = detail::find_header(hs, "content-type");
          event_stream = ct && ct->find("event-stream") != std::string::npos;
          started = true;
          status = s;
          headers = hs;
          if (sink.on_start) sink.on_start(s, hs);
        };
        req.on_data = [this](std::string_view bytes) {
          delivered_ = true;
          if (event_stream) decoder.feed(bytes, [this](const detail::SseEvent& ev) {
            const auto step = assembler.on_event(ev);
            if (step == detail::StreamAssembler::Step::done) complete.store(true);
            return true;
          });
          bool go_on = true;
          try {
            go_on = !sink.on_data || sink.on_data(bytes);
          } catch (...) {
            user_exception = std::current_exception();
            go_on = false;
          }
          return go_on;
        };
      }
      bool delivered() const override { return delivered_; }
      Result<HttpResponse> after_delivery(Error e) override {
        if (event_stream && assembler.done() && !user_exception) {
          HttpResponse ok;  // [DONE] was passed on: a complete stream
          ok.status = status;
          ok.headers = headers;
          return ok;
        }
        Error out = e.kind() == ErrorKind::cancelled || e.kind() == ErrorKind::timeout
                        ? e
                        : Error(ErrorKind::stream_truncated, "the stream was cut: " + e.message());
        out.http_status = e.http_status;
        if (event_stream) out.partial = std::make_shared<ChatCompletion>(assembler.assemble());
        return out;
      }
      const ForwardSink& sink;
      std::atomic<bool> complete{false};
      int status = 0;
      std::vector<Header> headers;
      detail::SseDecoder decoder;
      detail::StreamAssembler assembler;
      bool event_stream = false, started = false, delivered_ = false;
      std::exception_ptr user_exception;
    } hooks(sink);

    auto pass_through = [&](HttpResponse& r) {
      // Not streamed to the sink yet (an error status, or an empty body).
      if (!hooks.started && sink.on_start) sink.on_start(r.status, r.headers);
      if (!r.body.empty() && sink.on_data) sink.on_data(r.body);
      RawResponse out;
      out.status = r.status;
      out.headers = std::move(r.headers);
      if (hooks.event_stream) {
        hooks.assembler.on_end(hooks.decoder);
        out.decoded = std::make_shared<ChatCompletion>(hooks.assembler.assemble());
        if (hooks.assembler.error())
          out.stream_error = std::make_shared<Error>(*hooks.assembler.error());
        else if (!hooks.assembler.done())
          out.stream_error = std::make_shared<Error>(ErrorKind::stream_truncated, "the stream ended before [DONE]");
      }
      return out;
    };
    auto result = execute<RawResponse>(
        HttpRequest::Method::post, chat_url_, *body, ro, call, /*passthrough=*/true,
        [&](HttpResponse& r) { return retry_or_pass(r, pass_through); },
        [&](HttpResponse& r) -> std::optional<RawResponse> { return pass_through(r); }, &hooks);
    if (hooks.user_exception) std::rethrow_exception(hooks.user_exception);
    return result;
  }

  Result<std::vector<Model>> list_models(const RequestOptions& ro) const {
    Call call(ro);
    if (auto e = precheck(ro, call)) return finish_error(std::move(*e), call, 0);
    return execute<std::vector<Model>>(
        HttpRequest::Method::get, models_url_, {}, ro, call, /*passthrough=*/false,
        [](HttpResponse& r) -> Result<std::vector<Model>> {
          if (r.status < 200 || r.status >= 300) return status_error(r);
          auto models = detail::decode_models(r.body);
          if (!models) return success_status_error(std::move(models.error()), r);
          return models;
        },
        [](HttpResponse&) -> std::optional<std::vector<Model>> { return std::nullopt; });
  }

 private:
  explicit Impl(ClientOptions o)
      : opts_(std::move(o)),
        chat_url_(opts_.base_url + "/chat/completions"),
        models_url_(opts_.base_url + "/models"),
        loopback_(is_loopback_url(opts_.base_url)),
        transport_(detail::make_curl_transport({opts_.proxy, opts_.ca_bundle, opts_.ca_path})) {
    base_headers_.reserve(opts_.default_headers.size() + 3);
    if (!opts_.api_key.empty()) base_headers_.emplace_back("Authorization", "Bearer " + opts_.api_key);
    base_headers_.emplace_back("Content-Type", "application/json");
    base_headers_.emplace_back("Accept", "application/json");
    // As a header line rather than CURLOPT_USERAGENT: cheaper per request.
    base_headers_.emplace_back("User-Agent", opts_.user_agent);
    for (const auto& h : opts_.default_headers) put_header(base_headers_, h);
  }


  // ---- usage records

  std::string requested_model(const ChatRequest& r) const { return r.model.empty() ? opts_.default_model : r.model; }

  std::optional<std::string> summary_of(const ChatRequest& r) const {
    if (!opts_.record_request_summary) return std::nullopt;
    std::string out;
    detail::JsonWriter w(out);
    w.begin_object().key("model").string(requested_model(r));
    w.key("message_count").number(static_cast<std::int64_t>(r.messages.size()));
    w.key("messages").begin_array();
    for (const auto& m : r.messages) {
      std::size_t chars = m.content ? m.content->size() : 0;
      for (const auto& p : m.parts) chars += p.text.size();
      w.begin_object().key("role").string(m.role).key("chars").number(static_cast<std::int64_t>(chars));
      if (opts_.record_message_text && m.content) w.key("text").string(*m.content);
      w.end_object();
    }
    w.end_array();
    if (r.temperature) w.key("temperature").number(*r.temperature);
    if (r.max_tokens) w.key("max_tokens").number(*r.max_tokens);
    if (r.max_completion_tokens) w.key("max_completion_tokens").number(*r.max_completion_tokens);
    if (!r.tools.empty()) w.key("tools").number(static_cast<std::int64_t>(r.tools.size()));
    if (r.response_format) w.key("response_format").string(r.response_format->type);
    w.end_object();
    return out;
  }

  static void fill_usage(RequestRecord& rec, const ChatCompletion& c) {
    rec.model = c.model;
    rec.provider = c.provider;
    rec.time_to_first_token = c.time_to_first_token;
    if (c.usage) {
      rec.prompt_tokens = c.usage->prompt_tokens;
      rec.completion_tokens = c.usage->completion_tokens;
      rec.total_tokens = c.usage->total_tokens;
      rec.cached_tokens = c.usage->cached_tokens;
      rec.reasoning_tokens = c.usage->reasoning_tokens;
      rec.upstream_cost = c.usage->cost;
    }
  }

  static void fill_error(RequestRecord& rec, const Error& e) {
    rec.status = e.kind() == ErrorKind::cancelled ? RequestStatus::cancelled : RequestStatus::error;
    rec.error_kind = e.kind();
    rec.error_message = e.message();
    rec.http_status = e.http_status;
    rec.request_id = e.request_id;
    rec.upstream_request_id = e.upstream_request_id;
    rec.attempts = e.attempt_log;
    if (e.partial) fill_usage(rec, *e.partial);
  }

  RequestRecord base_record(const Call& call, std::string_view endpoint, std::string model, bool streamed,
                            const RequestOptions& ro) const {
    RequestRecord rec;
    rec.started_at = call.started_at;
    rec.endpoint = std::string(endpoint);
    rec.requested_model = std::move(model);
    rec.streamed = streamed;
    rec.tags = ro.tags;
    rec.latency = call.elapsed();
    return rec;
  }

  void emit(const Call& call, std::string_view endpoint, std::string model, bool streamed, const RequestOptions& ro,
            const ChatCompletion* ok, const Error* err, std::optional<std::string> summary) const {
    RequestRecord rec = base_record(call, endpoint, std::move(model), streamed, ro);
    rec.request_summary = std::move(summary);
    if (ok) {
      rec.request_id = ok->request_id;
      rec.upstream_request_id = ok->upstream_request_id;
      rec.http_status = ok->http_status;
      rec.attempts = ok->attempt_log;
      fill_usage(rec, *ok);
    } else if (err) {
      fill_error(rec, *err);
    }
    deliver(rec);
  }

  void emit_forward(const Call& call, std::string_view endpoint, std::string model, bool streamed,
                    const RequestOptions& ro, const Result<RawResponse>& r, std::size_t body_bytes) const {
    RequestRecord rec = base_record(call, endpoint, std::move(model), streamed, ro);
    if (opts_.record_request_summary) {
      std::string summary;
      detail::JsonWriter w(summary);
      w.begin_object().key("model").string(rec.requested_model);
      w.key("body_bytes").number(static_cast<std::int64_t>(body_bytes)).end_object();
      rec.request_summary = std::move(summary);
    }
    if (!r) {
      fill_error(rec, r.error());
      deliver(rec);
      return;
    }
    rec.request_id = r->request_id;
    rec.upstream_request_id = r->upstream_request_id;
    rec.http_status = r->status;
    rec.attempts = r->attempt_log;
    if (r->status >= 400) {
      rec.status = RequestStatus::error;
      rec.error_kind = detail::kind_for_status(r->status);
      rec.error_message = fmt::format("upstream returned HTTP {}", r->status);
    } else if (r->stream_error) {
      rec.status = RequestStatus::error;
      rec.error_kind = r->stream_error->kind();
      rec.error_message = r->stream_error->message();
    }
    if (r->decoded) {
      fill_usage(rec, *r->decoded);
    } else if (r->status >= 200 && r->status < 300 && !r->body.empty()) {
      // The bytes went to the caller unchanged; a copy is decoded for the record.
      std::string copy = r->body;
      if (auto c = detail::decode_chat_completion(copy)) fill_usage(rec, *c);
    }
    deliver(rec);
  }

  void deliver(RequestRecord& rec) const {
    // Text from callers and upstreams goes to databases and JSON files: make
    // it valid UTF-8 first (one bad byte must not poison a batch insert).
    for (std::string* t : {&rec.request_id, &rec.upstream_request_id, &rec.requested_model, &rec.model,
                           &rec.error_message, &rec.endpoint})
      detail::sanitize_utf8(*t);
    if (rec.provider) detail::sanitize_utf8(*rec.provider);
    if (rec.request_summary) detail::sanitize_utf8(*rec.request_summary);
    for (auto& [k, v] : rec.tags) {
      detail::sanitize_utf8(k);
      detail::sanitize_utf8(v);
    }
    if (opts_.prices) {
      Usage u;
      u.prompt_tokens = rec.prompt_tokens;
      u.completion_tokens = rec.completion_tokens;
      u.cached_tokens = rec.cached_tokens;
      rec.estimated_cost = opts_.prices->cost(rec.model.empty() ? rec.requested_model : rec.model, u);
    }
    for (const auto& recorder : opts_.recorders) {
      try {
        recorder->record(rec);
      } catch (const std::exception& e) {
        report_recorder_error("recorder", e.what());
      } catch (...) {
        report_recorder_error("recorder", "unknown exception");
      }
    }
  }

  void report_recorder_error(std::string_view recorder, std::string_view message) const {
    try {
      detail::error_hook_or_stderr(opts_.on_recorder_error)(recorder, message);
    } catch (...) {  // a hook must not fail the request
    }
  }

  std::optional<Error> precheck(const RequestOptions& ro, const Call& call) const {
    if (ro.request_id)
      if (auto e = check_request_id(call.id)) return e;
    if (opts_.api_key.empty() && !loopback_)
      return Error(ErrorKind::invalid_argument,
                   fmt::format("no API key: set TAOTOKEN_API_KEY or ClientOptions::api_key (only loopback base "
                               "URLs may be used without a key; base URL is {})",
                               opts_.base_url));
    for (const auto& [name, value] : ro.headers)
      if (auto e = check_header(name, value)) return e;
    if (ro.timeout && ro.timeout->count() <= 0) return Error(ErrorKind::invalid_argument, "timeout must be positive");
    return std::nullopt;
  }

  std::unique_ptr<RetryPolicy> make_policy(const RequestOptions& ro) const {
    if (ro.retry_policy) return ro.retry_policy->clone();
    if (ro.max_retries) return RetryPolicy::standard(*ro.max_retries);
    if (opts_.retry_policy) return opts_.retry_policy->clone();
    return RetryPolicy::standard();
  }

  static void stamp(ChatCompletion& c, Call& call, int attempts, std::vector<AttemptRecord>& log,
                    const std::string& upstream_id) {
    c.request_id = std::move(call.id);
    c.upstream_request_id = upstream_id;
    c.attempts = attempts;
    c.attempt_log = std::move(log);
    c.latency = call.elapsed();
  }
  static void stamp(RawResponse& r, Call& call, int attempts, std::vector<AttemptRecord>& log,
                    const std::string& upstream_id) {
    r.request_id = std::move(call.id);
    r.upstream_request_id = upstream_id;
    r.attempts = attempts;
    r.attempt_log = std::move(log);
    r.latency = call.elapsed();
  }
  static void stamp(std::vector<Model>&, Call&, int, std::vector<AttemptRecord>&, const std::string&) {}

  // The attempt loop shared by every call: per-attempt limits under one
  // total deadline, the retry policy's decision, the optional budget, the
  // retry hook and the wait. `interpret` turns a response into the result
  // (an error makes the attempt a failure the policy may retry);
  // `give_up` may still turn the last response into a result.
  template <typename T, typename Interpret, typename GiveUp>
  Result<T> execute(HttpRequest::Method method, const std::string& url, std::string_view body,
                    const RequestOptions& ro, Call& call, bool passthrough, Interpret interpret,
                    GiveUp give_up, StreamHooks* hooks = nullptr) const {
    std::unique_ptr<RetryPolicy> policy;  // made at the first failure: successes never pay for it
    const auto deadline = call.start + ro.timeout.value_or(opts_.timeout);
    const auto attempt_limit = ro.attempt_timeout ? ro.attempt_timeout : opts_.attempt_timeout;
    const auto first_byte = ro.first_byte_timeout ? ro.first_byte_timeout : opts_.first_byte_timeout;

    HttpRequest req;
    req.method = method;
    req.url = url;
    req.body = body;
    req.connect_timeout = opts_.connect_timeout;
    req.first_byte_timeout = first_byte.value_or(std::chrono::milliseconds(0));
    req.max_response_bytes = opts_.max_response_bytes;
    // Pass-through (forward): no compression asked for, so the bytes stay as
    // sent, and every response header kept for the caller.
    req.accept_compressed = !passthrough;
    req.all_headers = passthrough;
    req.cancel = ro.cancel ? &ro.cancel->flag() : nullptr;
    if (hooks) req.idle_timeout = (ro.idle_timeout ? ro.idle_timeout : opts_.idle_timeout).value_or(std::chrono::milliseconds(0));
    // The client's fixed headers go by reference (the transport caches
    // them) unless this call overrides one of them.
    bool overrides = false;
    for (const auto& h : ro.headers)
      for (const auto& b : base_headers_)
        if (h.first.size() == b.first.size() && starts_with_icase(h.first, lower(b.first))) overrides = true;
    if (overrides) {
      req.headers = base_headers_;
    } else {
      req.base_headers = &base_headers_;
      if (!ro.headers.empty() || opts_.send_request_id) req.headers.reserve(ro.headers.size() + 1);
    }
    if (opts_.send_request_id) put_header(req.headers, {"X-Client-Request-Id", call.id});
    for (const auto& h : ro.headers) put_header(req.headers, h);

    std::vector<AttemptRecord> log;
    std::chrono::milliseconds delay_before{0};
    for (int attempt = 1;; ++attempt) {
      if (ro.cancel && ro.cancel->cancelled()) {
        Error e(ErrorKind::cancelled, "the caller cancelled the request");
        e.attempt_log = std::move(log);
        return finish_error(std::move(e), call, attempt - 1);
      }
      const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (remaining.count() <= 0) {
        Error e(ErrorKind::timeout, fmt::format("total deadline of {} ms exceeded before attempt {}",
                                                ro.timeout.value_or(opts_.timeout).count(), attempt));
        e.attempt_log = std::move(log);
        return finish_error(std::move(e), call, attempt - 1);
      }
      req.timeout = attempt_limit ? std::min(*attempt_limit, remaining) : remaining;
      if (hooks) hooks->begin_attempt(req);
      const auto sent = Clock::now();
      auto resp = transport_->perform(req);
      if (!resp && hooks && hooks->delivered()) resp = hooks->after_delivery(std::move(resp.error()));
      AttemptRecord rec;
      rec.delay_before = delay_before;
      rec.latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - sent);
      std::string upstream_id;
      std::optional<Result<T>> outcome;
      if (resp) {
        rec.http_status = resp->status;
        upstream_id = upstream_request_id(resp->headers);
        outcome.emplace(interpret(*resp));
      } else {
        outcome.emplace(std::move(resp.error()));
      }
      if (outcome->ok()) {
        log.push_back(rec);
        if (opts_.retry_budget) opts_.retry_budget->on_success();
        stamp(**outcome, call, attempt, log, upstream_id);
        return std::move(*outcome);
      }
      Error& err = outcome->error();
      rec.error = err.kind();
      if (!resp) rec.http_status = err.http_status;
      log.push_back(rec);

      if (!policy) policy = make_policy(ro);
      std::optional<std::chrono::milliseconds> wait = policy->on_failure(err, attempt);
      if (hooks && hooks->delivered()) wait.reset();  // data reached the caller: never retried
      if (wait && Clock::now() + *wait >= deadline) wait.reset();  // would cross the deadline
      if (wait && opts_.retry_budget && !opts_.retry_budget->try_acquire(err)) wait.reset();
      if (!wait) {
        if (resp) {
          if (std::optional<T> passed = give_up(*resp)) {
            stamp(*passed, call, attempt, log, upstream_id);
            return std::move(*passed);
          }
        }
        err.attempt_log = std::move(log);
        return finish_error(std::move(err), call, attempt, upstream_id);
      }
      if (opts_.on_retry) opts_.on_retry(RetryEvent{call.id, attempt, &err, *wait});
      if (opts_.sleep_for) opts_.sleep_for(*wait);
      else if (ro.cancel) ro.cancel->wait_for(*wait);  // the loop's next check reports it
      else std::this_thread::sleep_for(*wait);
      delay_before = *wait;
    }
  }

  static std::string upstream_request_id(const std::vector<Header>& headers) {
    for (const char* name : {"x-request-id", "request-id", "apim-request-id"})
      if (const auto* v = detail::find_header(headers, name)) return *v;
    return {};
  }

  // forward(): a retryable error status is a failure the policy may retry;
  // anything else is passed through as it came.
  template <typename Pass>
  static Result<RawResponse> retry_or_pass(HttpResponse& r, Pass& pass) {
    if (r.status >= 400) {
      Error e = status_error(r);
      if (RetryPolicy::is_retryable(e)) return e;
    }
    return pass(r);
  }

  static void read_retry_headers(Error& e, const HttpResponse& r) {
    e.retry_after = detail::parse_retry_after(detail::find_header(r.headers, "retry-after-ms"),
                                              detail::find_header(r.headers, "retry-after"));
    if (const auto* sr = detail::find_header(r.headers, "x-should-retry")) {
      if (*sr == "true") e.should_retry = true;
      else if (*sr == "false") e.should_retry = false;
    }
  }

  // A 2xx whose body could not be used: an error object inside it, or a body
  // that is not the JSON it should be (a captive portal's HTML page, say).
  static Error success_status_error(Error e, HttpResponse& r) {
    if (e.kind() == ErrorKind::bad_response) {
      const std::string* ctype = detail::find_header(r.headers, "content-type");
      Error out(ErrorKind::bad_response,
                fmt::format("{} (HTTP {}, content type {})", e.message(), r.status, ctype ? *ctype : "unknown"));
      out.body_excerpt = detail::excerpt(r.body);
      e = std::move(out);
    }
    e.http_status = r.status;
    read_retry_headers(e, r);
    return e;
  }

  static Error status_error(HttpResponse& r) {
    const std::string* ctype = detail::find_header(r.headers, "content-type");
    Error e = detail::decode_error_response(r.status, ctype ? std::string_view(*ctype) : std::string_view(), r.body);
    read_retry_headers(e, r);
    return e;
  }

  // Removes the API key from text an upstream sent back (some echo the
  // Authorization header): every occurrence, and a prefix of it left at the
  // end of a cut excerpt.
  std::string redact(std::string text, const std::string& call_key) const {
    text = redact_key(std::move(text), opts_.api_key);
    return call_key.empty() ? text : redact_key(std::move(text), call_key);
  }

  static std::string redact_key(std::string text, const std::string& key) {
    if (key.size() < 4) return text;
    text = replace_all(std::move(text), key, "[REDACTED]");
    std::string_view body(text);
    const bool cut = body.size() >= 3 && body.substr(body.size() - 3) == "...";
    if (cut) body.remove_suffix(3);
    for (std::size_t n = std::min(key.size() - 1, body.size()); n >= 4; --n) {
      if (body.substr(body.size() - n) == std::string_view(key).substr(0, n)) {
        text = std::string(body.substr(0, body.size() - n)) + "[REDACTED]" + (cut ? "..." : "");
        break;
      }
    }
    return text;
  }

  // Fills the request context and scrubs the API key from every text field.
  Error finish_error(Error e, const Call& call, int attempts, const std::string& upstream_id = {}) const {
    Error clean(e.kind(), redact(e.message(), call.key));
    clean.http_status = e.http_status;
    auto scrub = [&](std::optional<std::string>& v) {
      if (v) v = redact(std::move(*v), call.key);
    };
    clean.type = std::move(e.type);
    clean.code = std::move(e.code);
    clean.param = std::move(e.param);
    clean.body_excerpt = std::move(e.body_excerpt);
    scrub(clean.type);
    scrub(clean.code);
    scrub(clean.param);
    scrub(clean.body_excerpt);
    clean.retry_after = e.retry_after;
    clean.should_retry = e.should_retry;
    clean.attempt_log = std::move(e.attempt_log);
    clean.partial = std::move(e.partial);
    clean.request_id = call.id;
    clean.upstream_request_id = redact(upstream_id, call.key);
    clean.attempts = attempts;
    return clean;
  }

  ClientOptions opts_;
  std::string chat_url_;
  std::string models_url_;
  bool loopback_;
  std::vector<Header> base_headers_;
  std::unique_ptr<detail::Transport> transport_;
};

TaotokenClient::TaotokenClient() : TaotokenClient(ClientOptions{}) {}

TaotokenClient::TaotokenClient(ClientOptions options) {
  auto impl = Impl::create(std::move(options));
  if (!impl) throw impl.error();
  impl_ = std::move(*impl);
}

TaotokenClient::TaotokenClient(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Result<TaotokenClient> TaotokenClient::create(ClientOptions options) {
  auto impl = Impl::create(std::move(options));
  if (!impl) return std::move(impl.error());
  return TaotokenClient(std::move(*impl));
}

Result<ChatCompletion> TaotokenClient::chat(const ChatRequest& request, const RequestOptions& options) const {
  return impl_->chat(request, options);
}

Result<RawResponse> TaotokenClient::forward(std::string_view json_body, const RequestOptions& options) const {
  return impl_->forward(json_body, options);
}

Result<ChatCompletion> TaotokenClient::chat_stream(const ChatRequest& request, const ChunkCallback& on_chunk,
                                                   const RequestOptions& options) const {
  return impl_->chat_stream(request, on_chunk, options);
}

ChatStream TaotokenClient::stream(const ChatRequest& request, const RequestOptions& options) const {
  return detail::start_chat_stream(*this, request, options);
}

Result<RawResponse> TaotokenClient::forward_stream(std::string_view json_body, const ForwardSink& sink,
                                                   const RequestOptions& options) const {
  return impl_->forward_stream(json_body, sink, options);
}

Result<std::vector<Model>> TaotokenClient::list_models(const RequestOptions& options) const {
  return impl_->list_models(options);
}

const std::string& TaotokenClient::base_url() const noexcept { return impl_->options().base_url; }
const std::string& TaotokenClient::default_model() const noexcept { return impl_->options().default_model; }

TAOTOKEN_END_NAMESPACE
