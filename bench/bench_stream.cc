// Streaming benchmarks.
//
// 1. End to end (--base-url): a hand-written libcurl stream reader versus
//    TaotokenClient::chat_stream(), same upstream, same request body, same
//    event stream (a trimmed real recording, see stream_body()).
// 2. In process (--decode): decoding throughput of that event stream,
//    repeated to --decode-mib MiB and fed in --decode-chunk byte pieces,
//    through detail::SseDecoder alone (framing) and through SseDecoder +
//    detail::StreamAssembler (framing, JSON chunk parsing, assembly).
//
// Usage:
//   taotoken_bench_stream --base-url http://127.0.0.1:PORT/stream/v1
//                         [--rounds 15] [--requests 1000] [--warmup 500]
//                         [--status-url http://127.0.0.1:PORT/nginx_status]
//                         [--only raw|chat] [--no-json-baseline]
//   taotoken_bench_stream --decode [--decode-mib 64] [--decode-chunk 4096] [--decode-passes 5]
//   taotoken_bench_stream --print-stream-body   # the body the upstream must serve
// --base-url and --decode can be combined (the network part runs first).
//
// Output:
//   RESULT name=raw_curl_stream rps=<x> us_per_req=<y>
//   RESULT name=chat_stream rps=<x> us_per_req=<y>
//   RESULT name=chat_stream_vs_raw ratio=<chat rps / raw rps>
//   RESULT name=raw_curl_stream_json rps=<x> us_per_req=<y>   (reader + JSON, for perspective)
//   RESULT name=chat_stream_vs_raw_json ratio=<chat rps / that>
//   RESULT name=sse_frame mb_per_s=<x> events_per_s=<y>
//   RESULT name=sse_decode mb_per_s=<x> chunks_per_s=<y> us_per_stream=<z>
// Exit status 1 when any request or check fails, 2 on bad usage.

#include <curl/curl.h>
#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench_chat.h"
#include "bench_common.h"
#include "sse.h"
#include "stream_assembler.h"
#include "taotoken/client.h"

#ifndef TAOTOKEN_BENCH_STREAM_FIXTURE
#error "TAOTOKEN_BENCH_STREAM_FIXTURE must name the recorded stream (set by bench/CMakeLists.txt)"
#endif

namespace {

using bench::Captured;
using bench::CaptureServer;
using bench::Clock;
using bench::median;
using bench::print_head;
namespace detail = taotoken::detail;

// ---- the request and the event stream -------------------------------------

constexpr const char* kModel = "gpt-4o-mini";
constexpr const char* kUser = "How many angels can dance on the head of a pin?";

// The stream is a real recording (gpt-4.1 through a gateway,
// tests/fixtures/stream/aibridge-gpt41-long.sse) cut after the first
// sentence: the role chunk, kContentEvents content deltas of one word or
// less each, then the recording's own finish chunk, usage chunk and
// [DONE]. Only the usage numbers are changed to match the cut.
constexpr std::size_t kContentEvents = 40;
constexpr std::size_t kChunks = 1 + kContentEvents + 2;  // role, content..., finish, usage
constexpr std::size_t kDataLines = kChunks + 1;          // + data: [DONE]
constexpr const char* kExpected =
    "The question \"How many angels can dance on the head of a pin?\" is a classic example of a "
    "**philosophical or theological riddle**, not a genuine inquiry about metaphysical realities.";

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "bench_stream: %s\n", why.c_str());
  std::exit(1);
}

std::string read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(std::string("cannot read ") + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Replaces the integer after "key": in `event`; returns the old value.
long replace_number(std::string& event, const std::string& key, long value) {
  const std::string k = "\"" + key + "\":";
  const auto p = event.find(k);
  if (p == std::string::npos) fail("the usage chunk has no " + key);
  const auto start = p + k.size();
  auto end = start;
  while (end < event.size() && event[end] >= '0' && event[end] <= '9') ++end;
  if (end == start) fail("the usage chunk's " + key + " is not a number");
  const long old = std::strtol(event.c_str() + start, nullptr, 10);
  if (value >= 0) event.replace(start, end - start, std::to_string(value));
  return old;
}

std::string stream_body() {
  const std::string rec = read_file(TAOTOKEN_BENCH_STREAM_FIXTURE);
  std::vector<std::string> events;
  std::size_t start = 0;
  for (;;) {
    const auto p = rec.find("\n\n", start);
    if (p == std::string::npos) break;
    events.push_back(rec.substr(start, p - start));
    start = p + 2;
  }
  const std::size_t n = events.size();
  if (start != rec.size() || n < kContentEvents + 4 || events[n - 1] != "data: [DONE]" ||
      events[n - 2].find("\"choices\":[]") == std::string::npos ||
      events[n - 3].find("\"finish_reason\":\"stop\"") == std::string::npos)
    fail("unexpected layout of " TAOTOKEN_BENCH_STREAM_FIXTURE);
  std::string usage = events[n - 2];
  const long prompt = replace_number(usage, "prompt_tokens", -1);
  replace_number(usage, "completion_tokens", static_cast<long>(kContentEvents));
  replace_number(usage, "total_tokens", prompt + static_cast<long>(kContentEvents));
  std::string body;
  for (std::size_t i = 0; i < 1 + kContentEvents; ++i) body += events[i] + "\n\n";
  body += events[n - 3] + "\n\n" + usage + "\n\n" + events[n - 1] + "\n\n";
  return body;
}

// The body a careful hand-written program sends: byte-identical to what
// the library encodes for the request below (checked at start).
std::string raw_request_body() {
  return std::string("{\"model\":\"") + kModel + "\",\"messages\":[{\"role\":\"user\",\"content\":\"" + kUser +
         "\"}],\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
}

taotoken::ChatRequest chat_request() {
  taotoken::ChatRequest req;
  req.model = kModel;
  req.messages.push_back(taotoken::Message::user(kUser));
  return req;
}

// Decodes `body` with the library's decoder and assembler, fed in `piece`
// byte pieces; fails unless it yields the expected stream.
void check_body_decodes(const std::string& body, std::size_t piece) {
  detail::SseDecoder decoder;
  detail::StreamAssembler assembler;
  std::size_t chunks = 0;
  for (std::size_t off = 0; off < body.size(); off += piece) {
    decoder.feed(std::string_view(body).substr(off, piece), [&](const detail::SseEvent& ev) {
      const auto step = assembler.on_event(ev);
      if (step == detail::StreamAssembler::Step::chunk) ++chunks;
      return step != detail::StreamAssembler::Step::failed;
    });
  }
  assembler.on_end(decoder);
  if (assembler.error()) fail("the stream body does not decode: " + assembler.error()->describe());
  const taotoken::ChatCompletion c = assembler.assemble();
  if (!assembler.done() || decoder.has_unterminated_tail()) fail("the stream body does not reach [DONE]");
  if (c.text().empty() || c.text() != kExpected) fail("the stream body decodes to unexpected content: " + c.text());
  if (chunks != kChunks) fail("the stream body has " + std::to_string(chunks) + " chunks");
  if (!c.usage || c.usage->completion_tokens != static_cast<std::int64_t>(kContentEvents))
    fail("the stream body has no usage or the wrong one");
  if (c.choices.empty() || c.choices[0].finish_reason != std::optional<std::string>("stop"))
    fail("the stream body has no finish_reason stop");
}

// ---- the raw libcurl stream reader ----------------------------------------

// What a careful hand-written libcurl stream reader does at the least: one
// easy handle reused for every request (keep-alive), options set once, and
// a write callback that splits the bytes into lines (memchr for '\n', a
// trailing '\r' dropped, a line cut between two callbacks carried over in a
// std::string) and picks out the `data: ` lines: it counts them, sums their
// payload sizes and notes `data: [DONE]`. Everything else (blank lines,
// comments, other fields) is skipped. It parses no JSON and builds no
// event objects: a real client would still have to do that.
class RawStream {
 public:
  // `parse_json`: also parse each chunk's JSON (simdjson DOM, like the
  // library) and join choices[0].delta.content, checked at the end: the
  // least a real consumer of the stream does on top of reading it.
  RawStream(const std::string& url, const std::string& body, const std::string& api_key, bool parse_json = false)
      : body_(body), parse_json_(parse_json) {
    headers_ = bench::raw_headers(api_key, "text/event-stream");
    h_ = bench::raw_easy(url, body_, headers_, &RawStream::on_write, this);
    partial_.reserve(4096);
  }
  ~RawStream() {
    curl_easy_cleanup(h_);
    curl_slist_free_all(headers_);
  }
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  // One streamed request; false (with a message) unless it got a 200 whose
  // stream had the expected number of data lines and ended with [DONE].
  // With `capture`, the body bytes are also appended there.
  bool once(std::string& why, std::string* capture = nullptr) {
    partial_.clear();
    text_.clear();
    bad_json_ = false;
    data_lines_ = 0;
    data_bytes_ = 0;
    writes_ = 0;
    done_ = false;
    capture_ = capture;
    const CURLcode rc = curl_easy_perform(h_);
    capture_ = nullptr;
    if (rc != CURLE_OK) {
      why = std::string("curl: ") + curl_easy_strerror(rc);
      return false;
    }
    long status = 0;
    curl_easy_getinfo(h_, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 || !done_ || data_lines_ != kDataLines || !partial_.empty()) {
      why = "HTTP " + std::to_string(status) + ", " + std::to_string(data_lines_) + " data lines, " +
            (done_ ? "[DONE]" : "no [DONE]");
      return false;
    }
    if (parse_json_ && (bad_json_ || text_ != kExpected)) {
      why = bad_json_ ? "malformed chunk JSON" : "unexpected content: " + text_.substr(0, 80);
      return false;
    }
    return true;
  }
  std::size_t data_bytes() const { return data_bytes_; }
  // Write callbacks of the last request (how libcurl handed the body over).
  std::size_t writes() const { return writes_; }

 private:
  static size_t on_write(char* data, size_t size, size_t nmemb, void* user) {
    auto* self = static_cast<RawStream*>(user);
    const size_t n = size * nmemb;
    ++self->writes_;
    if (self->capture_) self->capture_->append(data, n);
    self->feed(data, n);
    return n;
  }

  void feed(const char* p, std::size_t n) {
    const char* end = p + n;
    if (!partial_.empty()) {
      const void* nl = std::memchr(p, '\n', n);
      if (!nl) {
        partial_.append(p, n);
        return;
      }
      const char* eol = static_cast<const char*>(nl);
      partial_.append(p, static_cast<std::size_t>(eol - p));
      line(partial_.data(), partial_.size());
      partial_.clear();
      p = eol + 1;
    }
    while (p < end) {
      const void* nl = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
      if (!nl) {
        partial_.assign(p, static_cast<std::size_t>(end - p));
        break;
      }
      const char* eol = static_cast<const char*>(nl);
      line(p, static_cast<std::size_t>(eol - p));
      p = eol + 1;
    }
  }

  void line(const char* p, std::size_t n) {
    if (n > 0 && p[n - 1] == '\r') --n;
    if (n < 6 || std::memcmp(p, "data: ", 6) != 0) return;
    ++data_lines_;
    data_bytes_ += n - 6;
    if (n == 12 && std::memcmp(p + 6, "[DONE]", 6) == 0) {
      done_ = true;
      return;
    }
    if (parse_json_) parse_chunk(p + 6, n - 6);
  }

  void parse_chunk(const char* p, std::size_t n) {
    json_.assign(p, n);
    json_.reserve(n + simdjson::SIMDJSON_PADDING);
    simdjson::dom::element root;
    if (parser_.parse(json_.data(), json_.size(), false).get(root) != simdjson::SUCCESS) {
      bad_json_ = true;
      return;
    }
    simdjson::dom::array choices;
    if (root["choices"].get_array().get(choices) != simdjson::SUCCESS) return;
    for (simdjson::dom::element c : choices) {
      std::string_view content;
      if (c["delta"]["content"].get_string().get(content) == simdjson::SUCCESS) text_.append(content);
      break;
    }
  }

  std::string body_;
  bool parse_json_ = false;
  bool bad_json_ = false;
  std::string json_, text_;
  simdjson::dom::parser parser_;
  std::string partial_;
  std::string* capture_ = nullptr;
  std::size_t data_lines_ = 0;
  std::size_t data_bytes_ = 0;
  std::size_t writes_ = 0;
  bool done_ = false;
  CURL* h_ = nullptr;
  curl_slist* headers_ = nullptr;
};

// ---- the library side -------------------------------------------------------

struct ChatSide {
  std::size_t chunks = 0;
  taotoken::ChunkCallback on_chunk = [this](const taotoken::ChatCompletionChunk&) {
    ++chunks;
    return true;
  };

  bool once(const taotoken::TaotokenClient& client, const taotoken::ChatRequest& req, std::string& why) {
    chunks = 0;
    auto r = client.chat_stream(req, on_chunk);
    if (!r.ok()) {
      why = r.error().describe();
      return false;
    }
    if (r->text() != kExpected) {
      why = "unexpected content: " + r->text().substr(0, 80);
      return false;
    }
    if (chunks != kChunks) {
      why = std::to_string(chunks) + " chunks instead of " + std::to_string(kChunks);
      return false;
    }
    return true;
  }
};

// Sends one request from each side to a capture server serving the stream;
// false when the request bodies differ or a side does not get the stream.
bool check_same_body(const std::string& raw_body, const taotoken::ChatRequest& req, const std::string& api_key,
                     const std::string& stream) {
  Captured lib, raw;
  {
    CaptureServer server(stream, "text/event-stream");
    std::thread t([&] { lib = server.serve_one(); });
    taotoken::ClientOptions o;
    o.base_url = "http://127.0.0.1:" + std::to_string(server.port()) + "/stream/v1";
    o.api_key = api_key;
    taotoken::TaotokenClient client(o);
    ChatSide side;
    std::string why;
    const bool ok = side.once(client, req, why);
    t.join();
    if (!ok) {
      std::fprintf(stderr, "body check: chat_stream() failed: %s\n", why.c_str());
      return false;
    }
  }
  {
    CaptureServer server(stream, "text/event-stream");
    std::thread t([&] { raw = server.serve_one(); });
    RawStream curl("http://127.0.0.1:" + std::to_string(server.port()) + "/stream/v1/chat/completions", raw_body,
                   api_key);
    std::string why, got;
    const bool ok = curl.once(why, &got);
    t.join();
    if (!ok || got != stream) {
      std::fprintf(stderr, "body check: raw stream request failed: %s\n", ok ? "wrong bytes" : why.c_str());
      return false;
    }
  }
  print_head("raw_curl_stream", raw.head);
  print_head("chat_stream", lib.head);
  if (lib.body != raw.body || raw.body != raw_body) {
    std::fprintf(stderr, "body check: the bodies differ\n  chat: %s\n  raw:  %s\n", lib.body.c_str(), raw.body.c_str());
    return false;
  }
  std::printf("INFO same request body on both sides (%zu bytes): %s\n", raw_body.size(), raw_body.c_str());
  return true;
}

// ---- end to end ---------------------------------------------------------------

int run_network(std::string base_url, const std::string& status_url, const std::string& only, long rounds,
                long requests, long warmup, const std::string& stream, bool json_baseline) {
  while (!base_url.empty() && base_url.back() == '/') base_url.pop_back();
  const std::string api_key = "bench-key";
  const std::string raw_body = raw_request_body();
  const taotoken::ChatRequest req = chat_request();
  if (!check_same_body(raw_body, req, api_key, stream)) return 1;

  taotoken::ClientOptions opts;
  opts.base_url = base_url;
  opts.api_key = api_key;
  const taotoken::TaotokenClient client(opts);
  RawStream raw(base_url + "/chat/completions", raw_body, api_key);
  ChatSide chat;

  std::string why;
  auto run_raw = [&](long n) {
    for (long i = 0; i < n; ++i)
      if (!raw.once(why)) fail("raw_curl_stream: request failed: " + why);
  };
  auto run_chat = [&](long n) {
    for (long i = 0; i < n; ++i)
      if (!chat.once(client, req, why)) fail("chat_stream: request failed: " + why);
  };
  const bool do_raw = only != "chat", do_chat = only != "raw";

  // The upstream must serve exactly the stream (nginx `return` escaping).
  {
    std::string got;
    if (!raw.once(why, &got)) fail("raw_curl_stream: request failed: " + why);
    if (got != stream)
      fail("the upstream does not serve the expected stream (" + std::to_string(got.size()) + " bytes, want " +
           std::to_string(stream.size()) + ")");
  }
  // Warm-up: connections, allocator, caches, CPU frequency.
  if (do_raw) run_raw(warmup);
  if (do_chat) run_chat(warmup);
  std::printf(
      "INFO upstream %s, stream %zu bytes (%zu data lines, %zu payload bytes, %zu write callback(s) in the "
      "raw reader's last request), %ld rounds x %ld requests per side, warm-up %ld\n",
      base_url.c_str(), stream.size(), kDataLines, raw.data_bytes(), raw.writes(), rounds, requests, warmup);

  bench::run_interleaved("raw_curl_stream", "chat_stream", 0.85, rounds, requests, do_raw, do_chat, run_raw, run_chat, status_url);

  // For perspective, not the target: the same against a raw reader that
  // also parses each chunk's JSON and joins the content.
  if (do_raw && do_chat && json_baseline) {
    RawStream raw_json(base_url + "/chat/completions", raw_body, api_key, /*parse_json=*/true);
    auto run_raw_json = [&](long n) {
      for (long i = 0; i < n; ++i)
        if (!raw_json.once(why)) fail("raw_curl_stream_json: request failed: " + why);
    };
    run_raw_json(warmup);
    bench::run_interleaved("raw_curl_stream_json", "chat_stream", 0, rounds, requests, true, true, run_raw_json,
                           run_chat, status_url, "chat_stream_vs_raw_json");
  }
  return 0;
}

// ---- in process ----------------------------------------------------------------

// Feeds `input` to `decoder` in `piece`-byte pieces.
template <typename Handler>
void feed_all(detail::SseDecoder& decoder, const std::string& input, std::size_t piece, Handler&& handler) {
  const char* p = input.data();
  const std::size_t n = input.size();
  for (std::size_t off = 0; off < n; off += piece)
    decoder.feed(std::string_view(p + off, std::min(piece, n - off)), handler);
}

int run_decode(const std::string& stream, long mib, long piece_bytes, long passes) {
  const auto piece = static_cast<std::size_t>(piece_bytes);
  const std::size_t target = static_cast<std::size_t>(mib) << 20;
  std::string input;
  input.reserve(target + stream.size());
  std::size_t copies = 0;
  while (input.size() < target) {
    input += stream;
    ++copies;
  }
  const double mb = static_cast<double>(input.size()) / 1e6;
  std::printf("INFO decode input: the %zu-byte stream x %zu = %.1f MB, fed in %zu-byte pieces, %ld passes each\n",
              stream.size(), copies, mb, piece, passes);

  // Framing only: SseDecoder with a handler that counts events and data
  // bytes (so nothing is optimized away).
  auto frame_pass = [&]() {
    detail::SseDecoder decoder;
    std::size_t events = 0, bytes = 0;
    const auto t0 = Clock::now();
    feed_all(decoder, input, piece, [&](const detail::SseEvent& ev) {
      ++events;
      bytes += ev.data.size();
      return true;
    });
    const std::chrono::duration<double> dt = Clock::now() - t0;
    if (events != copies * kDataLines || decoder.has_unterminated_tail() || bytes == 0)
      fail("sse_frame: " + std::to_string(events) + " events, want " + std::to_string(copies * kDataLines));
    return dt.count();
  };
  // Full decode: SseDecoder + StreamAssembler, as chat_stream() drives them
  // (chunk JSON parsed into ChatCompletionChunk, merged into the
  // completion); at each [DONE] the completion is assembled and checked and
  // the assembler is reset for the next copy of the stream, as a client
  // recycles it (its buffers kept, nothing of the stream before: no prefix,
  // no template).
  // The same input with each copy's own id (the last 8 characters of the
  // recording's id numbered), as each response of a real upstream has: the
  // templates kept from stream to stream are then moved onto each new
  // prefix. (The network part's upstream serves the constant recording:
  // putting an id into every chunk cost nginx about 1.5 us a response,
  // which would slow both sides and flatter the ratio; this measures what
  // identical responses save the client instead.)
  std::string distinct = input;
  {
    const std::string key = "\"id\":\"";
    const auto at = stream.find(key);
    const auto end = stream.find('"', at + key.size());
    if (at == std::string::npos || end == std::string::npos || end - at - key.size() < 8)
      fail("the stream has no id to number");
    const std::string id = stream.substr(at + key.size(), end - at - key.size());
    std::size_t ids = 0;
    for (std::size_t p = distinct.find(id); p != std::string::npos; p = distinct.find(id, p + id.size())) {
      char n[9];
      // (the copy it is in; the low 32 bits tell copies apart)
      std::snprintf(n, sizeof n, "%08x", static_cast<unsigned>((p / stream.size()) & 0xffffffffu));
      distinct.replace(p + id.size() - 8, 8, n);
      ++ids;
    }
    if (ids != copies * kChunks) fail("the numbered copies do not carry their id in every chunk");
  }
  auto decode_pass = [&](const std::string& in = std::string()) {
    const std::string& input_now = in.empty() ? input : in;
    detail::SseDecoder decoder;
    detail::StreamAssembler assembler;
    std::size_t chunks = 0, streams = 0;
    bool bad = false;
    const auto t0 = Clock::now();
    feed_all(decoder, input_now, piece, [&](const detail::SseEvent& ev) {
      switch (assembler.on_event(ev)) {
        case detail::StreamAssembler::Step::chunk:
          ++chunks;
          break;
        case detail::StreamAssembler::Step::done:
          if (assembler.assemble().text() != kExpected) bad = true;
          ++streams;
          assembler.reset();
          break;
        case detail::StreamAssembler::Step::failed:
          bad = true;
          return false;
        case detail::StreamAssembler::Step::ignored:
          break;
      }
      return true;
    });
    const std::chrono::duration<double> dt = Clock::now() - t0;
    if (bad || streams != copies || chunks != copies * kChunks)
      fail("sse_decode: " + std::to_string(streams) + " streams, " + std::to_string(chunks) + " chunks" +
           (bad ? ", wrong content or a failed event" : ""));
    return dt.count();
  };

  frame_pass();  // warm-up: page in the input, grow the buffers
  decode_pass();
  decode_pass(distinct);
  std::vector<double> frame_mbps, decode_mbps, distinct_mbps;
  for (long i = 0; i < passes; ++i) {
    frame_mbps.push_back(mb / frame_pass());
    decode_mbps.push_back(mb / decode_pass());
    distinct_mbps.push_back(mb / decode_pass(distinct));
    std::printf("INFO pass %ld: sse_frame mb_per_s=%.0f sse_decode mb_per_s=%.1f (distinct ids: %.1f)\n", i + 1,
                frame_mbps.back(), decode_mbps.back(), distinct_mbps.back());
  }
  const double frame = median(frame_mbps), decode = median(decode_mbps), with_ids = median(distinct_mbps);
  const double per_mb_streams = 1e6 / static_cast<double>(stream.size());
  std::printf("RESULT name=sse_frame mb_per_s=%.1f events_per_s=%.0f\n", frame,
              frame * per_mb_streams * static_cast<double>(kDataLines));
  std::printf("RESULT name=sse_decode mb_per_s=%.1f chunks_per_s=%.0f us_per_stream=%.2f\n", decode,
              decode * per_mb_streams * static_cast<double>(kChunks), 1e6 / (decode * per_mb_streams));
  std::printf("RESULT name=sse_decode_distinct_ids mb_per_s=%.1f us_per_stream=%.2f extra_us_per_stream=%.2f\n",
              with_ids, 1e6 / (with_ids * per_mb_streams), 1e6 / (with_ids * per_mb_streams) - 1e6 / (decode * per_mb_streams));
  return 0;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: taotoken_bench_stream [--base-url URL [--rounds N] [--requests N] [--warmup N] "
               "[--status-url URL] [--only raw|chat] [--no-json-baseline]]\n"
               "                             [--decode [--decode-mib N] [--decode-chunk N] [--decode-passes N]]\n"
               "       taotoken_bench_stream --print-stream-body\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string base_url, status_url, only;
  long rounds = 15, requests = 1000, warmup = 500;
  bool decode = false;
  bool json_baseline = true;
  long decode_mib = 64, decode_chunk = 4096, decode_passes = 5;
  const std::string stream = stream_body();
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--print-stream-body") {
      std::fwrite(stream.data(), 1, stream.size(), stdout);
      return 0;
    } else if (a == "--base-url" && has_value) {
      base_url = argv[++i];
    } else if (a == "--status-url" && has_value) {
      status_url = argv[++i];
    } else if (a == "--only" && has_value) {
      only = argv[++i];
      if (only != "raw" && only != "chat") usage();
    } else if (a == "--rounds" && has_value) {
      rounds = bench::parse_count(argv[++i], usage);
    } else if (a == "--requests" && has_value) {
      requests = bench::parse_count(argv[++i], usage);
    } else if (a == "--warmup" && has_value) {
      warmup = bench::parse_count(argv[++i], usage);
    } else if (a == "--decode") {
      decode = true;
    } else if (a == "--no-json-baseline") {
      json_baseline = false;
    } else if (a == "--decode-mib" && has_value) {
      decode_mib = bench::parse_count(argv[++i], usage);
    } else if (a == "--decode-chunk" && has_value) {
      decode_chunk = bench::parse_count(argv[++i], usage);
    } else if (a == "--decode-passes" && has_value) {
      decode_passes = bench::parse_count(argv[++i], usage);
    } else {
      usage();
    }
  }
  if (base_url.empty() && !decode) usage();

  // The body must decode to the expected completion, whole and cut at
  // every size the benchmarks use.
  check_body_decodes(stream, stream.size());
  check_body_decodes(stream, static_cast<std::size_t>(decode_chunk));
  check_body_decodes(stream, 1);

  int rc = 0;
  if (!base_url.empty()) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = run_network(base_url, status_url, only, rounds, requests, warmup, stream, json_baseline);
    curl_global_cleanup();
  }
  if (rc == 0 && decode) rc = run_decode(stream, decode_mib, decode_chunk, decode_passes);
  return rc;
}
