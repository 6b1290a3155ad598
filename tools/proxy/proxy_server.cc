#include "proxy_server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <simdjson.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "json_writer.h"
#include "taotoken/recorders.h"
#include "taotoken/sqlite_recorder.h"

namespace taotoken_proxy {

using taotoken::ErrorKind;
using taotoken::detail::JsonWriter;

bool constant_time_equal(const std::string& a, const std::string& b) noexcept {
  // Compare every byte of the longer string, so timing does not reveal the
  // length of a matching prefix.
  const std::size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
    const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a{};
  return inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

std::string error_json(std::string_view message, std::string_view type, std::string_view code,
                       std::string_view request_id) {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("error").begin_object();
  w.key("message").string(message).key("type").string(type);
  w.key("code");
  if (code.empty()) w.null(); else w.string(code);
  w.key("request_id").string(request_id).end_object().end_object();
  return out;
}

// The status a proxy answers with when it could not get an upstream answer.
int status_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_argument: return 400;
    case ErrorKind::timeout: return 504;
    case ErrorKind::cancelled: return 499;
    default: return 502;
  }
}

// Upstream headers worth passing on (hop-by-hop and framing headers are not).
bool pass_header(const std::string& name) {
  static const char* kSkip[] = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding",
                                "server", "date", "alt-svc", "strict-transport-security", "set-cookie"};
  for (const char* s : kSkip)
    if (iequals(name, s)) return false;
  return true;
}

std::string replace_all(std::string s, const std::string& what, std::string_view with) {
  if (what.size() < 4) return s;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + with.size())) s.replace(p, what.size(), with);
  return s;
}

// State shared between a streaming handler and its upstream thread.
struct StreamRelay {
  std::mutex mu;
  std::condition_variable cv;
  bool started = false, finished = false;
  int status = 0;
  std::vector<taotoken::Header> headers;
  std::deque<std::string> chunks;
  std::size_t queued_bytes = 0;
  std::optional<taotoken::Result<taotoken::RawResponse>> result;
  std::shared_ptr<taotoken::CancelToken> cancel = std::make_shared<taotoken::CancelToken>();
};

}  // namespace

class ProxyServer::Impl {
 public:
  explicit Impl(ProxyOptions o) : opts_(std::move(o)) {
    if (opts_.keys.empty() && !is_loopback(opts_.bind))
      throw std::invalid_argument(fmt::format(
          "refusing to listen on {} without internal keys: set TAOTOKEN_PROXY_KEYS (or bind 127.0.0.1)", opts_.bind));
    for (const auto& k : opts_.keys)
      if (k.size() < 8) throw std::invalid_argument("internal keys must have at least 8 characters");
    memory_ = std::make_shared<taotoken::MemoryRecorder>(opts_.recent_capacity);
    opts_.client.recorders.push_back(memory_);
    if (!opts_.db_path.empty()) opts_.client.recorders.push_back(std::make_shared<taotoken::SqliteRecorder>(opts_.db_path));
    client_.emplace(opts_.client);  // throws taotoken::Error on bad options
    upstream_key_ = client_options_key();
    routes();
    svr_.new_task_queue = [n = opts_.threads] { return new httplib::ThreadPool(static_cast<std::size_t>(n)); };
    svr_.set_payload_max_length(opts_.max_body_bytes);
    // Headers and body go out in two writes: without TCP_NODELAY the body
    // waits for the client's delayed ACK (~40 ms per kept-alive response).
    svr_.set_tcp_nodelay(true);
    svr_.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_fd_ = sock;
    });
    svr_.set_keep_alive_max_count(10000);
    if (opts_.port == 0) port_ = svr_.bind_to_any_port(opts_.bind);
    else port_ = svr_.bind_to_port(opts_.bind, opts_.port) ? opts_.port : -1;
    if (port_ < 0) throw std::runtime_error(fmt::format("cannot listen on {}:{}", opts_.bind, opts_.port));
    // Debian's libcpp-httplib listens with a backlog of 5 (compiled in): a
    // burst of connections would overflow it. Listening again raises it.
    if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);
  }

  ~Impl() {
    svr_.stop();
    std::unique_lock<std::mutex> g(relays_mu_);
    relays_cv_.wait(g, [this] { return relays_ == 0; });
  }

  int port() const noexcept { return port_; }
  void run() { svr_.listen_after_bind(); }
  void stop() { svr_.stop(); }

 private:
  std::string client_options_key() const {
    if (!opts_.client.api_key.empty()) return opts_.client.api_key;
    const char* env = std::getenv("TAOTOKEN_API_KEY");
    return env ? env : "";
  }

  bool authorized(const httplib::Request& req) const {
    if (opts_.keys.empty()) return true;
    std::string presented = req.get_header_value("X-Internal-Key");
    if (presented.empty()) {
      const std::string auth = req.get_header_value("Authorization");
      if (auth.size() > 7 && iequals(auth.substr(0, 7), "bearer ")) presented = auth.substr(7);
    }
    bool ok = false;
    for (const auto& k : opts_.keys) ok |= constant_time_equal(presented, k);  // no early exit
    return ok;
  }

  void reply_error(httplib::Response& res, int status, std::string_view message, std::string_view type,
                   std::string_view code, std::string_view request_id) const {
    res.status = status;
    res.set_content(error_json(message, type, code, request_id), "application/json");
  }

  void reply_library_error(httplib::Response& res, const taotoken::Error& e) const {
    const char* type = e.kind() == ErrorKind::invalid_argument ? "invalid_request_error" : "upstream_error";
    reply_error(res, status_for(e.kind()), e.message(), type, taotoken::to_string(e.kind()), e.request_id);
  }

  void copy_headers(httplib::Response& res, const taotoken::RawResponse& r) const {
    for (const auto& [k, v] : r.headers)
      if (pass_header(k)) res.set_header(k, v);
    res.set_header("X-Taotoken-Request-Id", r.request_id);
  }

  void routes() {
    svr_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/healthz" || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
      reply_error(res, 401, "missing or invalid internal key (X-Internal-Key or Authorization: Bearer)",
                  "authentication_error", "invalid_internal_key", "");
      return httplib::Server::HandlerResponse::Handled;
    });
    svr_.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        reply_error(res, 413, fmt::format("request body over the limit of {} bytes", opts_.max_body_bytes),
                    "invalid_request_error", "body_too_large", "");
      else if (res.status == 404)
        reply_error(res, 404, "unknown path", "invalid_request_error", "unknown_url", "");
      else
        reply_error(res, res.status, fmt::format("HTTP {}", res.status), "invalid_request_error", "", "");
    });
    svr_.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    svr_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { chat(req, res); });
    svr_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { models(res); });
    svr_.Get("/admin/logs", [this](const httplib::Request&, httplib::Response& res) { logs(res); });
    svr_.Get("/admin/usage", [this](const httplib::Request& req, httplib::Response& res) { usage(req, res); });
  }

  void chat(const httplib::Request& req, httplib::Response& res) {
    if (req.body.size() > opts_.max_body_bytes)
      return reply_error(res, 413, fmt::format("request body over the limit of {} bytes", opts_.max_body_bytes),
                         "invalid_request_error", "body_too_large", "");
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    if (parser.parse(req.body).get(root) || !root.is_object())
      return reply_error(res, 400, "the request body is not a JSON object", "invalid_request_error", "invalid_json", "");
    bool stream = false;
    if (root["stream"].get_bool().get(stream)) stream = false;
    // Usage must be recorded for streams too: ask for the usage chunk when the
    // client did not say (OpenAI clients ignore a chunk with no choices).
    simdjson::dom::element so;
    std::string body = req.body;
    if (stream && opts_.force_stream_usage && root["stream_options"].get(so) == simdjson::NO_SUCH_FIELD) {
      const auto brace = body.find('{');
      body.insert(brace + 1, R"("stream_options":{"include_usage":true},)");
    }
    taotoken::RequestOptions ro;
    if (const std::string user = req.get_header_value("X-User"); !user.empty()) ro.tags.emplace_back("user", user);
    if (!stream) {
      auto r = client_->forward(body, ro);
      if (!r) return reply_library_error(res, r.error());
      res.status = r->status;
      copy_headers(res, *r);
      std::string body = r->status >= 400 ? replace_all(std::move(r->body), upstream_key_, "[REDACTED]") : std::move(r->body);
      const std::string* ct = r->header("content-type");
      res.set_content(std::move(body), ct ? ct->c_str() : "application/json");
      return;
    }
    relay_stream(std::move(body), res, ro);
  }

  // Streams run the upstream call on their own thread: the status line can
  // only be sent once the upstream's is known, and then bytes are relayed
  // as they arrive. A client that goes away cancels the upstream transfer.
  void relay_stream(std::string body, httplib::Response& res, taotoken::RequestOptions ro) {
    auto relay = std::make_shared<StreamRelay>();
    ro.cancel = relay->cancel;
    {
      std::lock_guard<std::mutex> g(relays_mu_);
      ++relays_;
    }
    // Detached, holding the relay; the server's destructor waits for every
    // relay thread (relays_) before the client goes away.
    std::thread([this, relay, body = std::move(body), ro] {
      taotoken::ForwardSink sink;
      sink.on_start = [&](int status, const std::vector<taotoken::Header>& headers) {
        std::lock_guard<std::mutex> g(relay->mu);
        relay->started = true;
        relay->status = status;
        relay->headers = headers;
        relay->cv.notify_all();
      };
      sink.on_data = [&](std::string_view bytes) {
        std::unique_lock<std::mutex> g(relay->mu);
        // Bounded: a slow client slows the upstream read instead of growing memory.
        relay->cv.wait(g, [&] { return relay->queued_bytes < (1u << 20) || relay->cancel->cancelled(); });
        if (relay->cancel->cancelled()) return false;
        relay->chunks.emplace_back(bytes);
        relay->queued_bytes += bytes.size();
        relay->cv.notify_all();
        return true;
      };
      auto r = client_->forward_stream(body, sink, ro);
      {
        std::lock_guard<std::mutex> g(relay->mu);
        relay->result.emplace(std::move(r));
        relay->finished = true;
        relay->cv.notify_all();
      }
      std::lock_guard<std::mutex> g(relays_mu_);
      --relays_;
      relays_cv_.notify_all();
    }).detach();
    {
      std::unique_lock<std::mutex> g(relay->mu);
      relay->cv.wait(g, [&] { return relay->started || relay->finished; });
      if (!relay->started) {
        const auto& r = *relay->result;
        if (!r) return reply_library_error(res, r.error());
      }
    }
    res.status = relay->status;
    std::string content_type = "text/event-stream";
    for (const auto& [k, v] : relay->headers) {
      if (iequals(k, "content-type")) content_type = v;
      else if (pass_header(k)) res.set_header(k, v);
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        content_type,
        [relay](std::size_t, httplib::DataSink& sink) {
          std::unique_lock<std::mutex> g(relay->mu);
          relay->cv.wait(g, [&] { return !relay->chunks.empty() || relay->finished; });
          while (!relay->chunks.empty()) {
            std::string chunk = std::move(relay->chunks.front());
            relay->chunks.pop_front();
            relay->queued_bytes -= chunk.size();
            relay->cv.notify_all();
            g.unlock();
            if (!sink.write(chunk.data(), chunk.size())) {
              relay->cancel->cancel();  // the client went away: stop the upstream transfer
              relay->cv.notify_all();
              return false;
            }
            g.lock();
          }
          if (relay->finished) sink.done();
          return true;
        },
        [relay](bool success) {
          if (!success) relay->cancel->cancel();
          relay->cv.notify_all();
        });
  }

  void models(httplib::Response& res) {
    auto r = client_->list_models();
    if (!r) return reply_library_error(res, r.error());
    std::string out;
    JsonWriter w(out);
    w.begin_object().key("object").string("list").key("data").begin_array();
    for (const auto& m : *r)
      w.begin_object().key("id").string(m.id).key("object").string(m.object.empty() ? "model" : m.object)
          .key("created").number(m.created).key("owned_by").string(m.owned_by).end_object();
    w.end_array().end_object();
    res.set_content(out, "application/json");
  }

  void logs(httplib::Response& res) {
    std::string out = "{\"logs\":[";
    const auto recent = memory_->recent(20);
    for (std::size_t i = 0; i < recent.size(); ++i) out += (i ? "," : "") + recent[i].to_json();
    out += "],\"summary\":" + memory_->summary().to_json() + "}";
    res.set_content(out, "application/json");
  }

  void usage(const httplib::Request& req, httplib::Response& res) {
    if (opts_.db_path.empty())
      return reply_error(res, 404, "no usage database configured", "invalid_request_error", "no_database", "");
    taotoken::UsageQuery q;
    auto parse_time = [](const std::string& v) -> std::optional<std::chrono::system_clock::time_point> {
      std::tm tm{};
      const char* end = strptime(v.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
      if (!end) {
        tm = {};
        end = strptime(v.c_str(), "%Y-%m-%d", &tm);
      }
      if (!end) return std::nullopt;
      return std::chrono::system_clock::from_time_t(timegm(&tm));
    };
    for (const char* name : {"since", "until"}) {
      if (!req.has_param(name)) continue;
      auto t = parse_time(req.get_param_value(name));
      if (!t)
        return reply_error(res, 400, fmt::format("{} expects YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)", name),
                           "invalid_request_error", "bad_time", "");
      (std::string_view(name) == "since" ? q.since : q.until) = *t;
    }
    const std::string by = req.has_param("by") ? req.get_param_value("by") : "model";
    if (by != "model" && by != "day" && by != "tag")
      return reply_error(res, 400, "by expects model, day or tag", "invalid_request_error", "bad_group", "");
    for (const auto& r : opts_.client.recorders) r->flush();  // include what is still queued
    auto s = taotoken::SqliteRecorder::summarize(opts_.db_path, q);
    if (!s) return reply_error(res, 500, s.error().message(), "server_error", "usage_query_failed", "");
    const auto& groups = by == "model" ? s->by_model : by == "day" ? s->by_day : s->by_tag;
    std::string out;
    JsonWriter w(out);
    w.begin_object().key("by").string(by).key("total").raw(s->total.to_json());
    w.key("groups").begin_object();
    for (const auto& [k, t] : groups) w.key(k).raw(t.to_json());
    w.end_object().end_object();
    res.set_content(out, "application/json");
  }

  ProxyOptions opts_;
  std::shared_ptr<taotoken::MemoryRecorder> memory_;
  std::optional<taotoken::TaotokenClient> client_;
  std::string upstream_key_;
  std::mutex relays_mu_;
  std::condition_variable relays_cv_;
  int relays_ = 0;
  httplib::Server svr_;
  int listen_fd_ = -1;
  int port_ = -1;
};

ProxyServer::ProxyServer(ProxyOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
ProxyServer::~ProxyServer() = default;
int ProxyServer::port() const noexcept { return impl_->port(); }
void ProxyServer::run() { impl_->run(); }
void ProxyServer::stop() { impl_->stop(); }

}  // namespace taotoken_proxy
