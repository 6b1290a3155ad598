// Streaming through real libcurl against the simulator's event streams.
#include <simdjson.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "chunk_describe.h"
#include "codec.h"
#include "fixtures.h"
#include "sim_fixture.h"
#include "sse.h"
#include "stream_assembler.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {

struct Collected {
  std::vector<ChatCompletionChunk> chunks;
  std::string text;
  ChunkCallback callback() {
    return [this](const ChatCompletionChunk& c) {
      chunks.push_back(c);
      for (const auto& d : c.choices)
        if (d.content) text += *d.content;
      return true;
    };
  }
};

}  // namespace

TEST_CASE("a plain stream: chunks as they arrive, the assembled message, usage and TTFT") {
  SimFixture f;
  Collected got;
  auto r = f.client().chat_stream(SimFixture::ask("hello streaming world"), got.callback());
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: hello streaming world");
  CHECK(got.text == r->text());
  CHECK(got.chunks.size() >= 6);  // role, 4 words, finish, usage
  CHECK(got.chunks.back().choices.empty());  // the usage chunk
  REQUIRE(r->usage);
  CHECK(r->usage->completion_tokens == 4);
  CHECK(r->choices.at(0).finish_reason == std::optional<std::string>("stop"));
  CHECK(r->streamed);
  REQUIRE(r->time_to_first_token);
  CHECK(*r->time_to_first_token <= r->latency);
  CHECK(r->attempts == 1);
  CHECK_THAT(r->id, Catch::StartsWith("chatcmpl-sim"));
  const auto seen = f.sim.requests();
  CHECK_THAT(seen.at(0).body, Catch::Contains(R"("stream":true,"stream_options":{"include_usage":true})"));
}

// What chat_stream()'s callback sees comes from the decoder's fast paths
// (the stream's prefix, the template) through the mailbox's recycled
// objects; each chunk must be exactly the one its event decodes to alone.
TEST_CASE("every chunk the callback sees equals its event decoded alone") {
  auto check_chunks = [](const std::vector<ChatCompletionChunk>& chunks) {
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      std::string data = chunks[i].raw_json;
      std::optional<Error> in_stream;
      auto alone = detail::decode_chunk(data, in_stream);
      INFO("chunk " << i << ": " << chunks[i].raw_json);
      REQUIRE(alone.ok());
      CHECK(test_support::describe(chunks[i]) == test_support::describe(*alone));
    }
  };

  SECTION("every recorded stream, replayed whole, against the same bytes decoded in process") {
    SimFixture f;
    auto client = f.client();
    // Besides the recordings: a template with two slots whose strings change
    // in turn (each chunk must have the other slot's string back).
    std::vector<std::pair<std::string, std::string>> bodies;
    {
      const std::string env = R"(data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":)";
      std::string b = env + R"({"role":"assistant"}}]})" "\n\n";
      const char* pieces[][2] = {{"r0", "c0"}, {"r1", "c0"}, {"r0", "c1"}, {"r2", "c0"}, {"r0", "c2"}, {"r0", "c0"}};
      for (const auto& p : pieces)
        b += env + R"({"reasoning_content":")" + p[0] + R"(","content":")" + p[1] + R"("}}]})" "\n\n";
      b += "data: [DONE]\n\n";
      bodies.emplace_back("two slots in turn", b);
      // Runs of deltas in each kind of slot (each run reaches the caller
      // as the new bytes of one slot of its working chunk).
      auto run = [&](const std::string& choice_head, const std::string& before, const std::string& after,
                     std::initializer_list<const char*> pieces) {
        std::string r = env.substr(0, env.find("\"choices\":[")) + "\"choices\":[" + choice_head;
        std::string out;
        for (const char* piece : pieces) out += r + before + piece + after + "\n\n";
        return out;
      };
      const std::string d0 = R"({"index":0,"delta":)";
      bodies.emplace_back("reasoning, then refusal deltas",
                          env + R"({"role":"assistant"}}]})" "\n\n" +
                              run(d0, R"({"reasoning":")", R"("}}]})", {"Le", "t me", " th\\\"ink", "..."}) +
                              run(d0, R"({"refusal":")", R"("}}]})", {"I can", "no", "t \\u00e9", "."}) +
                              "data: [DONE]\n\n");
      bodies.emplace_back(
          "tool-call argument deltas",
          env + R"({"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]})" "\n\n" +
              run(d0, R"({"tool_calls":[{"index":0,"function":{"arguments":")", R"("}}]}}]})",
                  {"{\\\"a", "\\\":", " 1", "}"}) +
              "data: [DONE]\n\n");
      bodies.emplace_back("a second choice's content",
                          run(R"({"index":1,"delta":)", R"({"content":")", R"("}}]})", {"x", "yy", "zzz", "w"}) +
                              "data: [DONE]\n\n");
    }
    for (const auto& sc : fixtures::scenarios())
      if (sc.kind == "sse") bodies.emplace_back(sc.name, fixtures::read_file(fixtures::dir() + "/" + sc.file));
    int played = 0;
    for (const auto& [name, body] : bodies) {
      // In process: every event decoded into its own chunk.
      std::vector<std::string> want;
      std::string want_text;
      {
        detail::SseDecoder decoder;
        detail::StreamAssembler assembler;
        decoder.feed(body, [&](const detail::SseEvent& ev) {
          if (assembler.on_event(ev) == detail::StreamAssembler::Step::chunk)
            want.push_back(test_support::describe(assembler.chunk()));
          return !assembler.finished();
        });
        want_text = assembler.assemble().text();
      }
      DYNAMIC_SECTION(name) {
        sim::Fault replay;
        replay.replace_body = true;
        replay.body = body;
        replay.content_type = "text/event-stream";
        f.sim.push_fault(replay);
        Collected got;
        auto r = client.chat_stream(SimFixture::ask("replay"), got.callback());
        std::vector<std::string> seen;
        for (const auto& c : got.chunks) seen.push_back(test_support::describe(c));
        CHECK(seen == want);
        check_chunks(got.chunks);
        INFO("result: " << (r.ok() ? std::string("ok") : r.error().describe()));
        const std::string text = r.ok() ? r->text() : r.error().partial ? r.error().partial->text() : "";
        CHECK(text == want_text);
      }
      ++played;
    }
    CHECK(played >= 31);
  }

  SECTION("the simulator's streams, in small fragments, with comments, CRLF and tool calls") {
    SimFixture f;
    for (int variant = 0; variant < 3; ++variant) {
      sim::Fault odd;
      odd.stream_comments = variant == 1;
      odd.stream_crlf = variant == 1;
      f.sim.push_fault(odd);
      ChatRequest req = SimFixture::ask("a b c d e f g h i j k l m n o p q r s t u v w x y z \"quoted\" \u00e9 done");
      if (variant == 2) {
        Tool t;
        t.name = "get_weather";
        t.parameters_json = R"({"type":"object","properties":{"text":{"type":"string"}}})";
        req.tools.push_back(t);
      }
      Collected got;
      auto r = f.client().chat_stream(req, got.callback());
      REQUIRE(r.ok());
      CHECK(got.chunks.size() >= 6);
      check_chunks(got.chunks);
      if (variant < 2) CHECK(got.text == r->text());
    }
  }
}

TEST_CASE("a failed stream's error object does not reach the next stream of the client") {
  // The client recycles its decoding state: an event that decoded an
  // `error` member and then failed left it behind, and the next stream
  // failed with the old message.
  SimFixture f;
  auto client = f.client();
  sim::Fault bad;
  bad.replace_body = true;
  bad.body = "data: {\"error\":{\"message\":\"boom from stream 1\"},\"choices\":1}\n\n";
  bad.content_type = "text/event-stream";
  f.sim.push_fault(bad);
  auto first = client.chat_stream(SimFixture::ask("one"), [](const ChatCompletionChunk&) { return true; });
  REQUIRE_FALSE(first.ok());
  CHECK(first.error().kind() == ErrorKind::bad_response);
  auto second = client.chat_stream(SimFixture::ask("two words"), [](const ChatCompletionChunk&) { return true; });
  INFO("second: " << (second.ok() ? std::string("ok") : second.error().describe()));
  REQUIRE(second.ok());
  CHECK(second->text() == "Echo: two words");
}

TEST_CASE("include_usage can be turned off") {
  SimFixture f;
  auto o = f.options();
  o.stream_include_usage = false;
  auto r = TaotokenClient(o).chat_stream(SimFixture::ask("x"), nullptr);
  REQUIRE(r.ok());
  CHECK_FALSE(r->usage);
  CHECK_THAT(f.sim.requests().at(0).body, Catch::Contains(R"("stream_options":{"include_usage":false})"));
}

TEST_CASE("tool-call deltas assemble into valid JSON arguments") {
  SimFixture f;
  ChatRequest req = SimFixture::ask("what's the weather in \"Paris\"?");
  Tool t;
  t.name = "get_weather";
  t.parameters_json = R"({"type":"object","properties":{"text":{"type":"string"}}})";
  req.tools.push_back(t);
  auto r = f.client().chat_stream(req, nullptr);
  REQUIRE(r.ok());
  const auto& calls = r->choices.at(0).message.tool_calls;
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].name == "get_weather");
  CHECK(calls[0].id == "call_sim_0");
  simdjson::dom::parser p;
  simdjson::dom::element args;
  REQUIRE(p.parse(calls[0].arguments).get(args) == simdjson::SUCCESS);
  CHECK(std::string_view(args["text"]) == "what's the weather in \"Paris\"?");
  CHECK(r->choices.at(0).finish_reason == std::optional<std::string>("tool_calls"));
  CHECK_FALSE(r->choices.at(0).message.content);
}

TEST_CASE("comments and CRLF line endings change nothing") {
  SimFixture f;
  sim::Fault odd;
  odd.stream_comments = true;
  odd.stream_crlf = true;
  f.sim.push_fault(odd);
  auto r = f.client().chat_stream(SimFixture::ask("same words here"), nullptr);
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: same words here");
}

TEST_CASE("an error object mid-stream fails the call with the upstream's error and the partial text") {
  SimFixture f;
  sim::Fault err;
  err.stream_error_after = 2;
  f.sim.push_fault(err);
  auto r = TaotokenClient(f.options(true)).chat_stream(SimFixture::ask("one two three four"), nullptr);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::server_error);
  CHECK(r.error().message() == "simulated mid-stream error");
  CHECK(r.error().code == std::optional<std::string>("sim_stream_error"));
  REQUIRE(r.error().partial);
  CHECK(r.error().partial->text() == "Echo: one");
  CHECK(f.sim.request_count() == 1);  // not retried
}

TEST_CASE("a stream cut after data reached the caller is stream_truncated, never retried") {
  SimFixture f;
  auto client = TaotokenClient(f.options(true));
  for (bool reset : {false, true}) {
    DYNAMIC_SECTION((reset ? "reset" : "closed")) {
      sim::Fault cut;
      (reset ? cut.reset_after_bytes : cut.close_after_bytes) = 600;
      f.sim.push_fault(cut);
      Collected got;
      auto r = client.chat_stream(SimFixture::ask("many words make a longer stream than six hundred bytes"),
                                  got.callback());
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().kind() == ErrorKind::stream_truncated);
      REQUIRE(r.error().partial);
      CHECK_FALSE(got.chunks.empty());
      CHECK(r.error().partial->text() == got.text);
      CHECK(f.sim.request_count() == 1);
    }
  }
  SECTION("a clean end without [DONE]") {
    sim::Fault no_done;
    no_done.stream_no_done = true;
    f.sim.push_fault(no_done);
    auto r = client.chat_stream(SimFixture::ask("a b"), nullptr);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::stream_truncated);
    REQUIRE(r.error().partial);
    CHECK(r.error().partial->text() == "Echo: a b");
    CHECK(r.error().partial->usage);  // the usage chunk came before the cut
  }
}

TEST_CASE("returning false from the chunk callback cancels promptly") {
  SimFixture f;
  int seen = 0;
  auto r = f.client().chat_stream(SimFixture::ask("one two three four five six"),
                                  [&](const ChatCompletionChunk&) { return ++seen < 2; });
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::cancelled);
  CHECK(seen == 2);
  REQUIRE(r.error().partial);
  CHECK(f.sim.request_count() == 1);
  // The client is fine afterwards.
  CHECK(f.client().chat_stream(SimFixture::ask("again"), nullptr).ok());
}

TEST_CASE("a callback that stops or throws mid-stream leaves the client's next stream whole") {
  // Most chunks reach a synchronous callback as the new string of the one
  // before (the caller's working chunk changes in one field): stopping or
  // throwing among them must lose nothing, stale nothing.
  SimFixture f;
  auto client = f.client();
  const ChatRequest long_one = SimFixture::ask("one two three four five six seven eight nine ten eleven twelve");
  for (int stop_at : {2, 3, 5, 9}) {
    for (bool by_throw : {false, true}) {
      INFO("stop at chunk " << stop_at << (by_throw ? " by throwing" : " by returning false"));
      std::vector<ChatCompletionChunk> seen;
      auto cb = [&](const ChatCompletionChunk& c) -> bool {
        seen.push_back(c);
        if (static_cast<int>(seen.size()) < stop_at) return true;
        if (by_throw) throw std::runtime_error("enough");
        return false;
      };
      if (by_throw) {
        CHECK_THROWS_WITH(client.chat_stream(long_one, cb), "enough");
      } else {
        auto r = client.chat_stream(long_one, cb);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().kind() == ErrorKind::cancelled);
      }
      CHECK(static_cast<int>(seen.size()) == stop_at);
      Collected got;
      auto r = client.chat_stream(SimFixture::ask("after the stop, all of it"), got.callback());
      REQUIRE(r.ok());
      CHECK(r->text() == "Echo: after the stop, all of it");
      CHECK(got.text == r->text());
      for (const auto& c : got.chunks) {
        std::string data = c.raw_json;
        std::optional<Error> in_stream;
        auto alone = detail::decode_chunk(data, in_stream);
        REQUIRE(alone.ok());
        CHECK(test_support::describe(c) == test_support::describe(*alone));
      }
      for (const auto& c : seen) {  // what the stopped stream showed was right too
        std::string data = c.raw_json;
        std::optional<Error> in_stream;
        auto alone = detail::decode_chunk(data, in_stream);
        REQUIRE(alone.ok());
        CHECK(test_support::describe(c) == test_support::describe(*alone));
      }
    }
  }
}

TEST_CASE("an exception from the chunk callback stops the stream and propagates") {
  SimFixture f;
  auto client = f.client();
  CHECK_THROWS_WITH(client.chat_stream(SimFixture::ask("x y z"),
                                       [](const ChatCompletionChunk&) -> bool { throw std::runtime_error("boom"); }),
                    "boom");
  CHECK(client.chat_stream(SimFixture::ask("after"), nullptr).ok());
}

TEST_CASE("the idle timeout ends a stalled stream but never a flowing one") {
  sim::SimulatorOptions so;
  so.max_fragment_delay = 20ms;  // gaps well below the idle timeout
  so.max_fragment = 512;
  SimFixture f(so);
  auto o = f.options();
  o.idle_timeout = 300ms;
  TaotokenClient client(o);
  std::string words;
  for (int i = 0; i < 60; ++i) words += "word ";
  const auto start = std::chrono::steady_clock::now();
  auto flowing = client.chat_stream(SimFixture::ask(words), nullptr);
  REQUIRE(flowing.ok());
  // Only meaningful if the stream outlived the idle timeout (a slow machine only makes it longer).
  CHECK(std::chrono::steady_clock::now() - start > 300ms);
  INFO("the flowing stream took " << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count() << " ms");
  CHECK(flowing->text() == "Echo: " + words);

  sim::Fault stall;
  stall.stall_after_bytes = 500;
  stall.stall = 10s;
  f.sim.push_fault(stall);
  auto stalled = client.chat_stream(SimFixture::ask(words), nullptr);
  REQUIRE_FALSE(stalled.ok());
  CHECK(stalled.error().kind() == ErrorKind::timeout);
  CHECK_THAT(stalled.error().message(), Catch::Contains("idle"));
  REQUIRE(stalled.error().partial);
}

TEST_CASE("header lines arriving slowly keep a stream alive under the idle timeout") {
  // The header lines of one libcurl round share one clock read; lines that
  // arrive in later rounds must each count as activity. Six lines 100 ms
  // apart (600 ms of headers) under a 300 ms idle timeout.
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string body =
      "data: {\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
      "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"slow headers\"},\"finish_reason\":\"stop\"}]}\n\n"
      "data: [DONE]\n\n";
  std::thread server([&] {
    const int c = ::accept(listener, nullptr, nullptr);
    if (c < 0) return;
    char buf[4096];
    std::string request;
    while (request.find("\r\n\r\n") == std::string::npos) {  // the body (if any) is not needed
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      request.append(buf, static_cast<std::size_t>(n));
    }
    auto send_all = [c](const std::string& s) { (void)::send(c, s.data(), s.size(), MSG_NOSIGNAL); };
    send_all("HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 6; ++i) {
      std::this_thread::sleep_for(100ms);
      send_all("X-Slow-" + std::to_string(i) + ": yes\r\n");
    }
    send_all("Content-Type: text/event-stream\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\nConnection: close\r\n\r\n" + body);
    ::shutdown(c, SHUT_WR);
    while (::recv(c, buf, sizeof buf, 0) > 0) {
    }
    ::close(c);
  });
  ClientOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/v1";
  o.idle_timeout = 300ms;
  o.retry_policy = RetryPolicy::none();  // one attempt: a timeout would show
  const auto start = std::chrono::steady_clock::now();
  auto r = TaotokenClient(o).chat_stream(SimFixture::ask("x"), nullptr);
  const auto took = std::chrono::steady_clock::now() - start;
  server.join();
  ::close(listener);
  INFO("result: " << (r.ok() ? std::string("ok") : r.error().describe()));
  REQUIRE(r.ok());
  CHECK(r->text() == "slow headers");
  CHECK(took > 300ms);  // the headers alone outlasted the idle timeout
}

TEST_CASE("an HTTP error before the stream starts is retried like any other") {
  SimFixture f;
  sim::Fault limited;
  limited.status = 429;
  limited.replace_body = true;
  limited.body = R"({"error":{"message":"slow down","type":"rate_limit_error"}})";
  limited.headers = {{"retry-after-ms", "10"}};
  f.sim.push_fault(limited);
  Collected got;
  auto r = TaotokenClient(f.options(true)).chat_stream(SimFixture::ask("patience"), got.callback());
  REQUIRE(r.ok());
  CHECK(r->attempts == 2);
  CHECK(got.text == "Echo: patience");  // no duplicated chunks from the failed attempt
}

TEST_CASE("an upstream that answers a stream request with JSON is accepted") {
  SimFixture f;
  sim::Fault json;
  json.replace_body = true;
  json.body = R"({"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"plain json"},"finish_reason":"stop"}]})";
  f.sim.push_fault(json);
  int chunks = 0;
  auto r = f.client().chat_stream(SimFixture::ask("x"), [&](const ChatCompletionChunk&) { return ++chunks > 0; });
  REQUIRE(r.ok());
  CHECK(r->text() == "plain json");
  CHECK(chunks == 0);
}

TEST_CASE("pull-style: iterate a ChatStream") {
  SimFixture f;
  auto client = f.client();
  SECTION("to the end") {
    ChatStream s = client.stream(SimFixture::ask("pull these words"));
    std::string text;
    int n = 0;
    for (auto& chunk : s) {
      REQUIRE(chunk.ok());
      ++n;
      for (const auto& d : chunk->choices)
        if (d.content) text += *d.content;
    }
    CHECK(n >= 5);
    auto r = s.result();
    REQUIRE(r.ok());
    CHECK(r->text() == text);
  }
  SECTION("an error is the last element") {
    sim::Fault err;
    err.stream_error_after = 1;
    f.sim.push_fault(err);
    ChatStream s = client.stream(SimFixture::ask("a b c"));
    std::optional<Error> last;
    for (auto& chunk : s)
      if (!chunk.ok()) last = chunk.error();
    REQUIRE(last);
    CHECK(last->message() == "simulated mid-stream error");
    CHECK_FALSE(s.result().ok());
  }
  SECTION("leaving early cancels the transfer without hanging") {
    f.stall_next_stream();
    {
      ChatStream s = client.stream(SimFixture::ask("one two three four five six seven"));
      auto first = s.next();
      REQUIRE(first);
      REQUIRE(first->ok());
    }  // destroyed mid-stall: must return promptly
    CHECK(client.chat(SimFixture::ask("still fine")).ok());
  }
}

TEST_CASE("forward_stream() passes the bytes through unchanged and learns usage") {
  SimFixture f;
  auto client = TaotokenClient(f.options(true));
  int status = 0;
  std::string content_type, bytes;
  ForwardSink sink;
  sink.on_start = [&](int s, const std::vector<Header>& headers) {
    status = s;
    for (const auto& [k, v] : headers)
      if (k == "Content-Type") content_type = v;
  };
  sink.on_data = [&](std::string_view b) {
    bytes.append(b);
    return true;
  };
  auto r = client.forward_stream(
      R"({"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"relay me"}]})", sink);
  REQUIRE(r.ok());
  CHECK(status == 200);
  CHECK_THAT(content_type, Catch::StartsWith("text/event-stream"));
  CHECK(r->body.empty());
  REQUIRE(r->decoded);
  CHECK(r->decoded->text() == "Echo: relay me");
  REQUIRE(r->decoded->usage);
  CHECK(r->decoded->usage->completion_tokens == 3);
  // What the sink got decodes to the same events.
  detail::SseDecoder d;
  int events = 0;
  bool done = false;
  d.feed(bytes, [&](const detail::SseEvent& ev) {
    ++events;
    done = ev.data == "[DONE]";
    return true;
  });
  CHECK(done);
  CHECK(events >= 6);
  CHECK_THAT(f.sim.requests().at(0).body, Catch::StartsWith(R"({"model":"claude-sonnet-4-6","stream":true)"));

  SECTION("an error status is retried, then passed to the sink as it came") {
    sim::Fault busy;
    busy.status = 503;
    busy.replace_body = true;
    busy.body = R"({"error":{"message":"busy"}})";
    f.sim.push_fault(busy, 3);
    auto o = f.options(true);
    o.sleep_for = [](std::chrono::milliseconds) {};
    status = 0;
    bytes.clear();
    auto e = TaotokenClient(o).forward_stream(R"({"stream":true,"messages":[{"role":"user","content":"x"}]})", sink);
    REQUIRE(e.ok());
    CHECK(e->attempts == 3);
    CHECK(status == 503);
    CHECK(bytes == busy.body);
  }
}

TEST_CASE("pull-style: the caller's cancel token stops a stalled stream promptly") {
  SimFixture f;
  f.stall_next_stream();
  RequestOptions ro;
  ro.cancel = std::make_shared<CancelToken>();
  ChatStream s = f.client().stream(SimFixture::ask("one two three four five six seven"), ro);
  auto first = s.next();
  REQUIRE(first);
  const auto start = std::chrono::steady_clock::now();
  std::thread canceller([token = ro.cancel] {
    std::this_thread::sleep_for(100ms);
    token->cancel();
  });
  auto r = s.result();
  canceller.join();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::cancelled);
  CHECK(std::chrono::steady_clock::now() - start < 10s);  // not the 30 s stall (a hang detector)
}

TEST_CASE("a complete stream is a success however the connection then ends") {
  SimFixture f;
  auto client = f.client();
  // The whole stream, then the server goes silent for 10 s before closing.
  const std::string words = "done then silence";
  sim::Fault quiet;
  // Measure the exact stream once (forward_stream hands over the raw bytes).
  std::size_t total = 0;
  ForwardSink sink;
  sink.on_data = [&](std::string_view b) {
    total += b.size();
    return true;
  };
  const std::string body = R"({"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":")" + words + R"("}]})";
  REQUIRE(client.forward_stream(body, sink).ok());
  REQUIRE(total > 100);
  quiet.stall_after_bytes = total;
  quiet.stall = 10s;
  f.sim.push_fault(quiet);
  const auto start = std::chrono::steady_clock::now();
  auto r = client.chat_stream(SimFixture::ask(words), nullptr);
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: " + words);
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // did not wait out the silence

  sim::Fault reset;
  reset.reset_after_bytes = total;
  f.sim.push_fault(reset);
  auto after_reset = client.chat_stream(SimFixture::ask(words), nullptr);
  REQUIRE(after_reset.ok());  // [DONE] arrived before the reset
}
