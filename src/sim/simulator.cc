// The simulator: a small blocking HTTP/1.1 server, one thread per
// connection. Written on raw sockets rather than an HTTP library because its
// purpose is misbehaving on demand: cutting a body after N bytes, resetting
// a connection, stalling before the status line.

#include "taotoken/simulator.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <pthread.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <random>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>

#include "json_writer.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace sim {
namespace {

using detail::JsonWriter;
using Headers = std::vector<std::pair<std::string, std::string>>;

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

const std::string* find(const Headers& headers, std::string_view name) noexcept {
  for (const auto& h : headers)
    if (iequals(h.first, name)) return &h.second;
  return nullptr;
}

std::string error_body(std::string_view message, std::string_view type, std::string_view code) {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("error").begin_object();
  w.key("message").string(message).key("type").string(type).key("param").null();
  if (code.empty()) w.key("code").null(); else w.key("code").string(code);
  w.end_object().end_object();
  return out;
}

std::int64_t count_words(std::string_view s) {
  std::int64_t n = 0;
  bool in_word = false;
  for (char c : s) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

std::string gzip(std::string_view in) {
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, static_cast<uLong>(in.size())) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

const char* reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void reset_and_close(int fd) {
  linger lg{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

}  // namespace

const std::string* ReceivedRequest::header(std::string_view name) const noexcept { return find(headers, name); }

namespace {

// What the simulator understood of a chat request.
struct SimChat {
  std::string model;
  std::string last_user;
  std::int64_t prompt_tokens = 0;
  std::int64_t n = 1;
  bool stream = false;
  bool include_usage = false;
  std::string tool;  // first tool's name when tools were given (and not tool_choice "none")
};

std::optional<SimChat> parse_chat(std::string_view request_body, int& status, std::string& error) {
  status = 200;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(request_body.data(), request_body.size(), true).get(root) != simdjson::SUCCESS ||
      !root.is_object()) {
    status = 400;
    error = error_body("We could not parse the JSON body of your request.", "invalid_request_error", "");
    return std::nullopt;
  }
  SimChat chat;
  std::string_view model;
  if (root["model"].get_string().get(model) != simdjson::SUCCESS || model.empty()) {
    status = 400;
    error = error_body("you must provide a model parameter", "invalid_request_error", "");
    return std::nullopt;
  }
  chat.model = std::string(model);
  simdjson::dom::array messages;
  if (root["messages"].get_array().get(messages) != simdjson::SUCCESS || messages.size() == 0) {
    status = 400;
    error = error_body("'messages' must contain at least one message", "invalid_request_error", "");
    return std::nullopt;
  }
  for (auto m : messages) {
    std::string_view role;
    if (m["role"].get_string().get(role) != simdjson::SUCCESS) role = {};
    std::string text;
    simdjson::dom::element content;
    if (m["content"].get(content) == simdjson::SUCCESS) {
      if (content.is_string()) {
        text = std::string(content.get_string().value());
      } else if (content.is_array()) {
        for (auto part : content.get_array()) {
          std::string_view t;
          if (part["text"].get_string().get(t) == simdjson::SUCCESS) text += t;
        }
      }
    }
    chat.prompt_tokens += 4 + count_words(text);
    if (role == "user") chat.last_user = std::move(text);
  }
  if (root["n"].get_int64().get(chat.n) != simdjson::SUCCESS) chat.n = 1;
  chat.n = std::clamp<std::int64_t>(chat.n, 1, 8);
  if (root["stream"].get_bool().get(chat.stream) != simdjson::SUCCESS) chat.stream = false;
  if (root["stream_options"]["include_usage"].get_bool().get(chat.include_usage) != simdjson::SUCCESS)
    chat.include_usage = false;
  std::string_view choice;
  const bool none = root["tool_choice"].get_string().get(choice) == simdjson::SUCCESS && choice == "none";
  simdjson::dom::array tools;
  if (!none && root["tools"].get_array().get(tools) == simdjson::SUCCESS && tools.size() > 0) {
    std::string_view name;
    if (tools.at(0)["function"]["name"].get_string().get(name) == simdjson::SUCCESS) chat.tool = std::string(name);
  }
  return chat;
}

std::string next_id() {
  static std::atomic<std::uint64_t> counter{0};
  return fmt::format("chatcmpl-sim{:012}", ++counter);
}

std::string tool_arguments(const SimChat& chat) {
  std::string args;
  JsonWriter a(args);
  a.begin_object().key("text").string(chat.last_user).end_object();
  return args;
}

void usage_object(JsonWriter& w, const SimChat& chat, std::int64_t completion_tokens) {
  w.key("usage").begin_object();
  w.key("prompt_tokens").number(chat.prompt_tokens).key("completion_tokens").number(completion_tokens);
  w.key("total_tokens").number(chat.prompt_tokens + completion_tokens);
  w.key("prompt_tokens_details").begin_object().key("cached_tokens").number(std::int64_t{0}).end_object();
  w.key("completion_tokens_details").begin_object().key("reasoning_tokens").number(std::int64_t{0}).end_object();
  w.end_object();
}

std::string completion_body(const SimChat& chat) {
  const std::string reply = "Echo: " + chat.last_user;
  const std::int64_t completion_tokens = (chat.tool.empty() ? count_words(reply) : count_words(chat.last_user) + 5) * chat.n;
  std::string out;
  out.reserve(reply.size() * static_cast<std::size_t>(chat.n) + 512);
  JsonWriter w(out);
  w.begin_object();
  w.key("id").string(next_id());
  w.key("object").string("chat.completion");
  w.key("created").number(static_cast<std::int64_t>(std::time(nullptr)));
  w.key("model").string(chat.model);
  w.key("choices").begin_array();
  for (std::int64_t i = 0; i < chat.n; ++i) {
    w.begin_object().key("index").number(i);
    w.key("message").begin_object().key("role").string("assistant");
    if (chat.tool.empty()) {
      w.key("content").string(reply);
    } else {
      w.key("content").null().key("tool_calls").begin_array().begin_object();
      w.key("id").string(fmt::format("call_sim_{}", i)).key("type").string("function");
      w.key("function").begin_object().key("name").string(chat.tool).key("arguments").string(tool_arguments(chat));
      w.end_object().end_object().end_array();
    }
    w.key("refusal").null().end_object();
    w.key("logprobs").null().key("finish_reason").string(chat.tool.empty() ? "stop" : "tool_calls").end_object();
  }
  w.end_array();
  usage_object(w, chat, completion_tokens);
  w.key("system_fingerprint").string("fp_taotoken_sim");
  w.key("service_tier").string("default");
  w.end_object();
  return out;
}

// The data payloads of a streamed answer, in order ("[DONE]" included).
std::vector<std::string> stream_events(const SimChat& chat, const Fault* fault) {
  const std::string id = next_id();
  const auto created = static_cast<std::int64_t>(std::time(nullptr));
  auto chunk = [&](const std::function<void(JsonWriter&)>& choices, bool with_usage, std::int64_t tokens) {
    std::string out;
    JsonWriter w(out);
    w.begin_object().key("id").string(id).key("object").string("chat.completion.chunk");
    w.key("created").number(created).key("model").string(chat.model);
    w.key("system_fingerprint").string("fp_taotoken_sim");
    w.key("choices").begin_array();
    choices(w);
    w.end_array();
    if (with_usage) usage_object(w, chat, tokens);
    w.end_object();
    return out;
  };
  auto delta = [&](std::int64_t index, const std::function<void(JsonWriter&)>& fill, const char* finish) {
    return [=](JsonWriter& w) {
      w.begin_object().key("index").number(index).key("delta").begin_object();
      fill(w);
      w.end_object().key("logprobs").null().key("finish_reason");
      if (finish) w.string(finish); else w.null();
      w.end_object();
    };
  };
  std::vector<std::string> events;
  std::int64_t tokens = 0;
  int content_chunks = 0;
  const std::string reply = "Echo: " + chat.last_user;
  for (std::int64_t i = 0; i < chat.n; ++i)
    events.push_back(chunk(delta(i, [&](JsonWriter& w) { w.key("role").string("assistant").key("content").string(""); }, nullptr), false, 0));
  for (std::int64_t i = 0; i < chat.n; ++i) {
    if (chat.tool.empty()) {
      // Word-sized deltas, each word with its leading space.
      std::size_t at = 0;
      while (at < reply.size()) {
        std::size_t next = reply.find(' ', at + 1);
        if (next == std::string::npos) next = reply.size();
        const std::string piece = reply.substr(at, next - at);
        if (fault && fault->stream_error_after && content_chunks == *fault->stream_error_after) {
          events.push_back(R"({"error":{"message":"simulated mid-stream error","type":"server_error","param":null,"code":"sim_stream_error"}})");
          return events;
        }
        events.push_back(chunk(delta(i, [&](JsonWriter& w) { w.key("content").string(piece); }, nullptr), false, 0));
        ++content_chunks;
        ++tokens;
        at = next;
      }
    } else {
      const std::string args = tool_arguments(chat);
      events.push_back(chunk(delta(i, [&](JsonWriter& w) {
        w.key("tool_calls").begin_array().begin_object().key("index").number(std::int64_t{0});
        w.key("id").string(fmt::format("call_sim_{}", i)).key("type").string("function");
        w.key("function").begin_object().key("name").string(chat.tool).key("arguments").string("");
        w.end_object().end_object().end_array();
      }, nullptr), false, 0));
      for (std::size_t at = 0; at < args.size(); at += 7) {
        const std::string piece = args.substr(at, 7);
        events.push_back(chunk(delta(i, [&](JsonWriter& w) {
          w.key("tool_calls").begin_array().begin_object().key("index").number(std::int64_t{0});
          w.key("function").begin_object().key("arguments").string(piece).end_object().end_object().end_array();
        }, nullptr), false, 0));
        ++tokens;
      }
    }
    events.push_back(chunk(delta(i, [](JsonWriter&) {}, chat.tool.empty() ? "stop" : "tool_calls"), false, 0));
  }
  if (chat.include_usage) events.push_back(chunk([](JsonWriter&) {}, true, tokens));
  if (!(fault && fault->stream_no_done)) events.push_back("[DONE]");
  return events;
}

}  // namespace

std::string completion_for(std::string_view request_body, int& status) {
  std::string error;
  auto chat = parse_chat(request_body, status, error);
  return chat ? completion_body(*chat) : error;
}

class Simulator::Impl {
 public:
  explicit Impl(SimulatorOptions o) : opts_(std::move(o)) {}
  ~Impl() { stop(); }

  void start() {
    std::lock_guard<std::mutex> lock(lifecycle_mu_);
    if (listen_fd_ >= 0) return;
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "simulator: socket");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opts_.port);
    if (::inet_pton(AF_INET, opts_.host.c_str(), &addr.sin_addr) != 1) {
      ::close(fd);
      throw std::system_error(EINVAL, std::generic_category(), "simulator: bad host " + opts_.host);
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, SOMAXCONN) != 0) {
      const int err = errno;
      ::close(fd);
      throw std::system_error(err, std::generic_category(), "simulator: bind/listen");
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (::pipe2(wake_, O_CLOEXEC) != 0) {
      ::close(fd);
      throw std::system_error(errno, std::generic_category(), "simulator: pipe");
    }
    listen_fd_ = fd;
    stopping_ = false;
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  void stop() {
    std::lock_guard<std::mutex> lock(lifecycle_mu_);
    if (listen_fd_ < 0) return;
    stopping_ = true;
    char b = 1;
    (void)!::write(wake_[1], &b, 1);
    acceptor_.join();
    {
      std::lock_guard<std::mutex> g(conn_mu_);
      for (auto& c : conns_)
        if (c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);
    }
    {
      std::unique_lock<std::mutex> g(conn_mu_);
      conn_cv_.notify_all();  // wakes connections waiting out a delay
    }
    // Join with the nodes still alive: each thread refers to its own Conn.
    std::list<Conn> all;
    {
      std::lock_guard<std::mutex> g(conn_mu_);
      all.splice(all.end(), conns_);
    }
    for (auto& c : all)
      if (c.thread.joinable()) c.thread.join();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
    listen_fd_ = -1;
  }

  std::uint16_t port() const noexcept { return port_; }

  void push_fault(Fault f, int times) {
    std::lock_guard<std::mutex> g(fault_mu_);
    for (int i = 0; i < times; ++i) queued_.push_back(f);
  }
  void set_fault(std::optional<Fault> f) {
    std::lock_guard<std::mutex> g(fault_mu_);
    persistent_ = std::move(f);
  }
  void clear_faults() {
    std::lock_guard<std::mutex> g(fault_mu_);
    queued_.clear();
    persistent_.reset();
  }

  std::vector<ReceivedRequest> requests() const {
    std::lock_guard<std::mutex> g(rec_mu_);
    return recorded_;
  }
  std::size_t request_count() const noexcept { return count_.load(); }
  void clear_requests() {
    std::lock_guard<std::mutex> g(rec_mu_);
    recorded_.clear();
  }

 private:
  struct Conn {
    int fd;
    std::uint64_t id = 0;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void accept_loop() {
    ::pthread_setname_np(::pthread_self(), "taotoken-sim");
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (::poll(fds, 2, 1000) < 0 && errno != EINTR) return;
      if (stopping_) return;
      reap();
      if (!(fds[0].revents & POLLIN)) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> g(conn_mu_);
      conns_.emplace_back();
      Conn& c = conns_.back();
      c.fd = fd;
      c.id = ++connections_;
      c.thread = std::thread([this, &c] {
        ::pthread_setname_np(::pthread_self(), "taotoken-sim");  // tests tell its threads from the client's
        serve(c);
        close_conn(c);
        c.done = true;
      });
    }
  }

  // Joins finished connection threads so a long run does not accumulate them.
  void reap() {
    std::list<Conn> finished;
    {
      std::lock_guard<std::mutex> g(conn_mu_);
      for (auto it = conns_.begin(); it != conns_.end();) {
        auto next = std::next(it);
        if (it->done) finished.splice(finished.end(), conns_, it);
        it = next;
      }
    }
    for (auto& c : finished) c.thread.join();
  }

  // Reads until `buf` holds `need` bytes past `from`; false on EOF/error.
  static bool fill(int fd, std::string& buf, std::size_t need) {
    char tmp[16384];
    while (buf.size() < need) {
      const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        return false;
      }
      buf.append(tmp, static_cast<std::size_t>(n));
    }
    return true;
  }

  void serve(Conn& c) {
    const int fd = c.fd;
    std::string buf;
    for (;;) {
      // Head.
      std::size_t head_end;
      while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
        if (buf.size() > 64 * 1024 || !fill(fd, buf, buf.size() + 1)) return;
      }
      ReceivedRequest req;
      req.received_at = std::chrono::system_clock::now();
      req.connection_id = c.id;
      std::string_view head(buf.data(), head_end);
      auto line_end = head.find("\r\n");
      std::string_view request_line = head.substr(0, line_end);
      auto sp1 = request_line.find(' ');
      auto sp2 = request_line.rfind(' ');
      if (sp1 == std::string_view::npos || sp2 == sp1) return;
      req.method = std::string(request_line.substr(0, sp1));
      req.path = std::string(request_line.substr(sp1 + 1, sp2 - sp1 - 1));
      const bool http10 = request_line.substr(sp2 + 1) == "HTTP/1.0";
      std::size_t pos = line_end == std::string_view::npos ? head.size() : line_end + 2;
      while (pos < head.size()) {
        auto e = head.find("\r\n", pos);
        if (e == std::string_view::npos) e = head.size();
        std::string_view line = head.substr(pos, e - pos);
        auto colon = line.find(':');
        if (colon != std::string_view::npos) {
          std::string_view v = line.substr(colon + 1);
          while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
          while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
          req.headers.emplace_back(std::string(line.substr(0, colon)), std::string(v));
        }
        pos = e + 2;
      }
      buf.erase(0, head_end + 4);

      // Body.
      if (const auto* expect = find(req.headers, "expect"); expect && iequals(*expect, "100-continue"))
        send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n");
      const auto* te = find(req.headers, "transfer-encoding");
      if (te && te->find("chunked") != std::string::npos) {
        for (;;) {
          std::size_t le;
          while ((le = buf.find("\r\n")) == std::string::npos)
            if (!fill(fd, buf, buf.size() + 1)) return;
          const std::size_t size = std::strtoul(buf.c_str(), nullptr, 16);
          if (!fill(fd, buf, le + 2 + size + 2)) return;
          req.body.append(buf, le + 2, size);
          buf.erase(0, le + 2 + size + 2);
          if (size == 0) break;
          if (req.body.size() > opts_.max_request_bytes) break;
        }
      } else if (const auto* cl = find(req.headers, "content-length")) {
        const std::size_t len = std::strtoull(cl->c_str(), nullptr, 10);
        if (len > opts_.max_request_bytes) {
          respond_simple(fd, 413, error_body("request body too large", "invalid_request_error", ""), true);
          return;
        }
        if (!fill(fd, buf, len)) return;
        req.body = buf.substr(0, len);
        buf.erase(0, len);
      }

      const auto* conn_hdr = find(req.headers, "connection");
      const bool close_after = http10 || (conn_hdr && iequals(*conn_hdr, "close"));
      // Recorded before answering, so a client that has its answer can
      // always find its request.
      ++count_;
      {
        std::lock_guard<std::mutex> g(conn_mu_);  // no lost wake-up for a hold_until_requests waiter
      }
      conn_cv_.notify_all();
      if (opts_.record_requests) {
        std::lock_guard<std::mutex> g(rec_mu_);
        recorded_.push_back(req);
      }
      bool reset = false;
      const bool keep = handle(fd, req, close_after, reset);
      if (reset) close_conn(c, true);
      if (!keep || close_after) return;
    }
  }

  // Closing under the lock keeps stop() from shutting down a reused fd.
  void close_conn(Conn& c, bool reset = false) {
    std::lock_guard<std::mutex> g(conn_mu_);
    if (c.fd < 0) return;
    if (reset) reset_and_close(c.fd);
    ::close(c.fd);
    c.fd = -1;
  }

  std::optional<Fault> take_fault(const ReceivedRequest& req) {
    const std::string& path = req.path;
    const std::string* session = find(req.headers, "x-sim-session");
    auto matches = [&](const Fault& f) {
      return (f.path.empty() || f.path == path) && (f.session.empty() || (session && *session == f.session));
    };
    std::lock_guard<std::mutex> g(fault_mu_);
    for (auto it = queued_.begin(); it != queued_.end(); ++it) {
      if (matches(*it)) {
        Fault f = std::move(*it);
        queued_.erase(it);
        return f;
      }
    }
    if (persistent_ && matches(*persistent_)) return persistent_;
    return std::nullopt;
  }

  void respond_simple(int fd, int status, const std::string& body, bool close) {
    send_all(fd, fmt::format("HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}", status,
                             reason(status), body.size(), close ? "Connection: close\r\n" : "", body));
  }

  // Sends the answer; false when the connection must be closed.
  bool handle(int fd, const ReceivedRequest& req, bool close_after, bool& reset) {
    std::optional<Fault> fault = take_fault(req);
    if (fault && fault->hold_until_requests > 0) {
      std::unique_lock<std::mutex> g(conn_mu_);
      conn_cv_.wait(g, [&] { return stopping_.load() || count_.load() >= fault->hold_until_requests; });
      if (stopping_) return false;
    }
    if (fault && fault->delay.count() > 0) {
      std::unique_lock<std::mutex> g(conn_mu_);
      conn_cv_.wait_for(g, fault->delay, [this] { return stopping_.load(); });
      if (stopping_) return false;
    }
    if (fault && fault->drop) return false;

    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    std::string path = req.path.substr(0, req.path.find('?'));
    if (opts_.api_key) {
      const auto* auth = find(req.headers, "authorization");
      if (!auth || *auth != "Bearer " + *opts_.api_key) {
        status = 401;
        body = error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key");
      }
    }
    if (status == 200) {
      if (path == "/v1/chat/completions" && req.method == "POST") {
        std::string error;
        auto chat = parse_chat(req.body, status, error);
        if (!chat) {
          body = error;
        } else if (chat->stream && (!fault || (!fault->status && !fault->replace_body && !fault->drop))) {
          return stream(fd, *chat, fault ? &*fault : nullptr, close_after, reset);
        } else {
          body = completion_body(*chat);
        }
      } else if (path == "/v1/models" && req.method == "GET") {
        JsonWriter w(body);
        w.begin_object().key("object").string("list").key("data").begin_array();
        for (const auto& m : opts_.models) {
          w.begin_object().key("id").string(m).key("object").string("model");
          w.key("created").number(std::int64_t{1700000000}).key("owned_by").string("taotoken-sim").end_object();
        }
        w.end_array().end_object();
      } else {
        status = 404;
        body = error_body(fmt::format("Unknown request URL: {} {}", req.method, path), "invalid_request_error",
                          "unknown_url");
      }
    }
    Headers extra;
    if (fault) {
      if (fault->status) status = fault->status;
      if (fault->replace_body) {
        body = fault->body;
        content_type = fault->content_type;
      }
      extra = fault->headers;
    }
    bool gzipped = false;
    if (fault && fault->gzip) {
      const auto* ae = find(req.headers, "accept-encoding");
      if (ae && ae->find("gzip") != std::string::npos) {
        body = gzip(body);
        gzipped = true;
      }
    }
    const bool chunked = fault && fault->chunked;
    std::string head = fmt::format("HTTP/1.1 {} {}\r\n", status, reason(status));
    if (!content_type.empty()) head += fmt::format("Content-Type: {}\r\n", content_type);
    if (chunked) head += "Transfer-Encoding: chunked\r\n";
    else head += fmt::format("Content-Length: {}\r\n", body.size());
    if (gzipped) head += "Content-Encoding: gzip\r\n";
    if (!find(extra, "x-request-id")) head += fmt::format("x-request-id: sim-{}\r\n", count_.load());
    for (const auto& [k, v] : extra) head += fmt::format("{}: {}\r\n", k, v);
    if (close_after) head += "Connection: close\r\n";
    head += "\r\n";

    std::optional<std::size_t> cut;
    if (fault && fault->close_after_bytes) cut = fault->close_after_bytes;
    if (fault && fault->reset_after_bytes) {
      cut = fault->reset_after_bytes;
      reset = true;
    }
    if (chunked) {
      std::string wire;
      constexpr std::size_t kChunk = 8192;
      for (std::size_t off = 0; off < body.size(); off += kChunk) {
        const auto n = std::min(kChunk, body.size() - off);
        wire += fmt::format("{:x}\r\n", n);
        wire.append(body, off, n);
        wire += "\r\n";
      }
      wire += "0\r\n\r\n";
      body = std::move(wire);
    }
    if (cut) {
      send_all(fd, head);
      send_all(fd, std::string_view(body).substr(0, std::min(*cut, body.size())));
      return false;
    }
    head += body;
    return send_all(fd, head);
  }

  // Sleeps unless the simulator stops first; false when stopping.
  bool pause(std::chrono::microseconds d) {
    if (d.count() <= 0) return !stopping_;
    std::unique_lock<std::mutex> g(conn_mu_);
    conn_cv_.wait_for(g, d, [this] { return stopping_.load(); });
    return !stopping_;
  }

  // Writes an event stream in random fragments, each an HTTP chunk.
  bool stream(int fd, const SimChat& chat, const Fault* fault, bool close_after, bool& reset) {
    const char* eol = fault && fault->stream_crlf ? "\r\n" : "\n";
    std::string wire;
    for (const auto& data : stream_events(chat, fault)) {
      if (fault && fault->stream_comments) wire += std::string(": keep-alive") + eol;
      wire += "data: " + data + eol + eol;
    }
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
        "Transfer-Encoding: chunked\r\n";
    head += fmt::format("x-request-id: sim-{}\r\n", count_.load());
    if (fault)
      for (const auto& [k, v] : fault->headers) head += fmt::format("{}: {}\r\n", k, v);
    if (close_after) head += "Connection: close\r\n";
    head += "\r\n";
    if (!send_all(fd, head)) return false;
    std::optional<std::size_t> cut;
    if (fault && fault->close_after_bytes) cut = fault->close_after_bytes;
    if (fault && fault->reset_after_bytes) {
      cut = fault->reset_after_bytes;
      reset = true;
    }
    std::mt19937 rng(static_cast<unsigned>(count_.load()));
    bool stalled = false;
    std::size_t sent = 0;
    while (sent < wire.size()) {
      std::size_t n = 1 + rng() % std::max<std::size_t>(1, opts_.max_fragment);
      n = std::min(n, wire.size() - sent);
      if (cut && sent + n >= *cut) n = *cut - sent;
      if (fault && fault->stall_after_bytes && !stalled && sent + n >= *fault->stall_after_bytes)
        n = *fault->stall_after_bytes - sent;
      if (n > 0) {
        if (!send_all(fd, fmt::format("{:x}\r\n", n) + wire.substr(sent, n) + "\r\n")) return false;
        sent += n;
      }
      if (cut && sent >= *cut) return false;  // cut mid-stream: close (or reset)
      if (fault && fault->stall_after_bytes && !stalled && sent >= *fault->stall_after_bytes) {
        stalled = true;
        if (!pause(fault->stall)) return false;
      }
      const auto max_delay = opts_.max_fragment_delay.count();
      if (max_delay > 0 && !pause(std::chrono::microseconds(rng() % (max_delay + 1)))) return false;
    }
    return send_all(fd, "0\r\n\r\n");
  }

  SimulatorOptions opts_;
  std::mutex lifecycle_mu_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;

  std::mutex conn_mu_;
  std::condition_variable conn_cv_;
  std::list<Conn> conns_;
  std::uint64_t connections_ = 0;

  std::mutex fault_mu_;
  std::deque<Fault> queued_;
  std::optional<Fault> persistent_;

  mutable std::mutex rec_mu_;
  std::vector<ReceivedRequest> recorded_;
  std::atomic<std::size_t> count_{0};
};

Simulator::Simulator(SimulatorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Simulator::~Simulator() = default;
void Simulator::start() { impl_->start(); }
void Simulator::stop() { impl_->stop(); }
std::uint16_t Simulator::port() const noexcept { return impl_->port(); }
std::string Simulator::base_url() const { return fmt::format("http://127.0.0.1:{}/v1", impl_->port()); }
void Simulator::push_fault(Fault fault, int times) { impl_->push_fault(std::move(fault), times); }
void Simulator::set_fault(std::optional<Fault> fault) { impl_->set_fault(std::move(fault)); }
void Simulator::clear_faults() { impl_->clear_faults(); }
std::vector<ReceivedRequest> Simulator::requests() const { return impl_->requests(); }
std::size_t Simulator::request_count() const noexcept { return impl_->request_count(); }
void Simulator::clear_requests() { impl_->clear_requests(); }

}  // namespace sim
TAOTOKEN_END_NAMESPACE
