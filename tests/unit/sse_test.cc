// The SSE decoder and the stream assembler against every recorded stream,
// fed whole, line by line, byte by byte, at the recorded fragment offsets
// and at random offsets.
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <random>

#include "fixtures.h"
#include "sse.h"
#include "stream_assembler.h"

using namespace taotoken;
using detail::SseDecoder;
using detail::SseEvent;
using detail::StreamAssembler;

namespace {

struct Outcome {
  ChatCompletion completion;
  bool done = false;
  std::optional<Error> error;
  std::size_t ignored = 0;
  bool unterminated = false;
  std::size_t chunks = 0;
};

Outcome run_with(SseDecoder& dec, StreamAssembler& as, const std::string& bytes, const std::vector<std::size_t>& cuts) {
  Outcome o;
  std::size_t from = 0;
  auto feed = [&](std::string_view piece) {
    dec.feed(piece, [&](const SseEvent& ev) {
      if (as.on_event(ev) == StreamAssembler::Step::chunk) ++o.chunks;
      return true;
    });
  };
  for (std::size_t cut : cuts) {
    if (cut <= from || cut >= bytes.size()) continue;
    feed(std::string_view(bytes).substr(from, cut - from));
    from = cut;
  }
  feed(std::string_view(bytes).substr(from));
  as.on_end(dec);
  o.completion = as.assemble();
  o.done = as.done();
  o.error = as.error();
  o.ignored = as.ignored_events() + dec.empty_events();
  o.unterminated = dec.has_unterminated_tail();
  return o;
}

Outcome run(const std::string& bytes, const std::vector<std::size_t>& cuts) {
  SseDecoder dec;
  StreamAssembler as;
  return run_with(dec, as, bytes, cuts);
}

std::vector<std::size_t> every(std::size_t step, std::size_t n) {
  std::vector<std::size_t> v;
  for (std::size_t i = step; i < n; i += step) v.push_back(i);
  return v;
}

std::vector<std::size_t> line_ends(const std::string& s) {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s[i] == '\n' || s[i] == '\r') v.push_back(i + 1);
  return v;
}

std::size_t count_elements(const std::optional<std::string>& logprobs, const char* field) {
  if (!logprobs) return 0;
  simdjson::dom::parser p;
  return simdjson::dom::array(p.parse(*logprobs)[field]).size();
}

void check(const Outcome& o, const simdjson::dom::element& e) {
  CHECK(o.completion.id == std::string_view(e["id"]));
  CHECK(o.completion.model == std::string_view(e["model"]));
  const bool strict_done = bool(e["done"]);
  const bool tail_done = bool(e["done_in_unterminated_tail"]);
  CHECK(o.done == (strict_done || tail_done));  // a final [DONE] without its blank line still counts
  CHECK(o.unterminated == bool(e["unterminated_tail"]));
  CHECK(o.ignored == static_cast<std::size_t>(int64_t(e["ignored_events"])));
  simdjson::dom::element err = e["error"];
  if (err.is_null()) {
    CHECK_FALSE(o.error);
  } else {
    REQUIRE(o.error);
    const std::string_view kind = err["kind"];
    if (kind == "invalid_json") {
      CHECK(o.error->kind() == ErrorKind::bad_response);
    } else {
      CHECK(kind == "stream_error");
      CHECK(o.error->message() == std::string_view(err["error"]["message"]));
      CHECK(o.error->http_status == 200);
    }
  }
  simdjson::dom::array choices = e["choices"];
  REQUIRE(o.completion.choices.size() == choices.size());
  std::size_t i = 0;
  for (simdjson::dom::element ch : choices) {
    const Choice& got = o.completion.choices[i++];
    CHECK(got.index == int64_t(ch["index"]));
    CHECK(got.finish_reason == fixtures::opt_str(ch["finish_reason"]));
    CHECK(got.message.content == fixtures::opt_str(ch["content"]));
    CHECK(got.message.refusal == fixtures::opt_str(ch["refusal"]));
    CHECK(got.message.reasoning == fixtures::opt_str(ch["reasoning"]));
    simdjson::dom::array calls = ch["tool_calls"];
    REQUIRE(got.message.tool_calls.size() == calls.size());
    std::size_t j = 0;
    for (simdjson::dom::element tc : calls) {
      const ToolCall& t = got.message.tool_calls[j++];
      CHECK(t.id == std::string_view(tc["id"]));
      CHECK(t.name == std::string_view(tc["name"]));
      CHECK(t.arguments == std::string_view(tc["arguments"]));
    }
    CHECK(count_elements(got.logprobs_json, "content") == static_cast<std::size_t>(int64_t(ch["logprobs_content_tokens"])));
    CHECK(count_elements(got.logprobs_json, "refusal") == static_cast<std::size_t>(int64_t(ch["logprobs_refusal_tokens"])));
  }
  simdjson::dom::element usage = e["usage"];
  if (usage.is_null()) {
    CHECK_FALSE(o.completion.usage);
  } else {
    REQUIRE(o.completion.usage);
    CHECK(o.completion.usage->prompt_tokens == int64_t(usage["prompt_tokens"]));
    CHECK(o.completion.usage->completion_tokens == int64_t(usage["completion_tokens"]));
    CHECK(o.completion.usage->total_tokens == int64_t(usage["total_tokens"]));
    int64_t cached = 0;
    if (usage["cached_tokens"].get(cached) == simdjson::SUCCESS) CHECK(o.completion.usage->cached_tokens == cached);
    else CHECK_FALSE(o.completion.usage->cached_tokens);
  }
}

}  // namespace

TEST_CASE("every recorded stream gives its expected result however it is split") {
  int played = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "sse") continue;
    ++played;
    DYNAMIC_SECTION(sc.name) {
      const std::string bytes = fixtures::read_file(fixtures::dir() + "/" + sc.file);
      simdjson::dom::parser p;
      simdjson::dom::element expect = p.parse(sc.expect_json);
      const Outcome whole = run(bytes, {});
      check(whole, expect);
      std::vector<std::vector<std::size_t>> splits = {line_ends(bytes), every(1, bytes.size()), every(7, bytes.size())};
      const std::string frag_file = fixtures::dir() + "/" + sc.file.substr(0, sc.file.size() - 4) + ".fragments.json";
      if (std::ifstream(frag_file)) {
        simdjson::dom::parser fp;
        const std::string frag_text = fixtures::read_file(frag_file);
        std::vector<std::size_t> cuts;
        for (int64_t c : simdjson::dom::array(fp.parse(frag_text)["split_at"])) cuts.push_back(static_cast<std::size_t>(c));
        splits.push_back(cuts);
      }
      std::mt19937 rng(12345);
      for (int seed = 0; seed < 20; ++seed) {
        std::vector<std::size_t> cuts;
        std::size_t at = 0;
        while (at < bytes.size()) cuts.push_back(at += 1 + rng() % 40);
        splits.push_back(cuts);
      }
      for (const auto& cuts : splits) {
        const Outcome o = run(bytes, cuts);
        check(o, expect);
        CHECK(o.chunks == whole.chunks);
        CHECK(o.completion.text() == whole.completion.text());
      }
    }
  }
  CHECK(played == 39);
}

TEST_CASE("a decoder and an assembler reset between streams give each the result of fresh ones") {
  // The client recycles them across calls: nothing of one stream (a
  // partial line, an event type, a cached chunk prefix or template, usage,
  // an error) may leak into the next. Every recorded stream, one after the
  // other through the same pair, twice over, cut differently each time.
  SseDecoder dec;
  StreamAssembler as;
  std::mt19937 rng(777);
  int played = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& sc : fixtures::scenarios()) {
      if (sc.kind != "sse") continue;
      ++played;
      const std::string bytes = fixtures::read_file(fixtures::dir() + "/" + sc.file);
      std::vector<std::size_t> cuts;
      for (std::size_t at = 0; at < bytes.size();) cuts.push_back(at += 1 + rng() % 64);
      dec.reset();
      as.reset();
      const Outcome o = run_with(dec, as, bytes, cuts);
      simdjson::dom::parser p;
      simdjson::dom::element expect = p.parse(sc.expect_json);
      INFO(sc.name << " (pass " << pass << ")");
      check(o, expect);
      const Outcome fresh = run(bytes, {});
      CHECK(o.chunks == fresh.chunks);
      CHECK(o.completion.text() == fresh.completion.text());
      CHECK(o.completion.usage.has_value() == fresh.completion.usage.has_value());
      CHECK(o.completion.id == fresh.completion.id);
    }
  }
  CHECK(played == 78);
}

TEST_CASE("a stream that failed after an error object leaves nothing for the next one") {
  // The event decodes an `error` member, then fails on `choices`: the
  // in-stream error already decoded must not survive into the next stream
  // of a recycled assembler (it failed that stream with the old message).
  SseDecoder dec;
  StreamAssembler as;
  const std::string failing = "data: {\"error\":{\"message\":\"boom from stream 1\"},\"choices\":1}\n\n";
  const Outcome first = run_with(dec, as, failing, {});
  REQUIRE(first.error);
  CHECK(first.error->kind() == ErrorKind::bad_response);
  int played = 0;
  for (const auto& sc : fixtures::scenarios()) {
    if (sc.kind != "sse") continue;
    ++played;
    const std::string bytes = fixtures::read_file(fixtures::dir() + "/" + sc.file);
    dec.reset();
    as.reset();
    (void)run_with(dec, as, failing, {});  // fails the same way every time
    dec.reset();
    as.reset();
    const Outcome o = run_with(dec, as, bytes, {});
    const Outcome fresh = run(bytes, {});
    INFO(sc.name);
    CHECK(o.chunks == fresh.chunks);
    CHECK(o.done == fresh.done);
    CHECK(o.error.has_value() == fresh.error.has_value());
    if (o.error && fresh.error) CHECK(o.error->message() == fresh.error->message());
    CHECK(o.completion.text() == fresh.completion.text());
  }
  CHECK(played == 39);
}

TEST_CASE("SSE framing details") {
  std::vector<std::pair<std::string, std::string>> events;
  auto collect = [&](const SseEvent& ev) {
    events.emplace_back(std::string(ev.type), std::string(ev.data));
    return true;
  };
  SECTION("multi-line data is joined with LF; one leading space is stripped") {
    SseDecoder d;
    d.feed("data:  two spaces\ndata:none\n\n", collect);
    REQUIRE(events.size() == 1);
    CHECK(events[0].second == " two spaces\nnone");
  }
  SECTION("CRLF inside one feed is one line end (multi-line data stays one event)") {
    SseDecoder d;
    d.feed("data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\r", collect);
    REQUIRE(events.size() == 2);
    CHECK(events[0].second == "a\nb");
    CHECK(events[1].second == "c\nd");
  }
  SECTION("CR then LF split across feeds is one line end") {
    SseDecoder d;
    d.feed("data: a\r", collect);
    d.feed("\n\r", collect);
    d.feed("\ndata: b\r\r", collect);
    REQUIRE(events.size() == 2);
    CHECK(events[1].second == "b");
  }
  SECTION("a BOM split over feeds is dropped, but only at the start") {
    SseDecoder d;
    d.feed("\xEF", collect);
    d.feed("\xBB\xBF" "data: x\n\n", collect);
    d.feed("\xEF\xBB\xBF" "data: y\n\n", collect);
    REQUIRE(events.size() == 1);  // the second BOM makes an unknown field name
    CHECK(events[0].second == "x");
  }
  SECTION("event names, ids, retry, comments") {
    SseDecoder d;
    d.feed(": comment\nevent: error\nid: 7\nretry: 1500\ndata: {}\n\nevent: ping\n\n", collect);
    REQUIRE(events.size() == 1);
    CHECK(events[0].first == "error");
    CHECK(d.last_event_id() == "7");
    CHECK(d.retry_ms() == 1500);
  }
  SECTION("a handler can stop the decoder") {
    SseDecoder d;
    int seen = 0;
    CHECK_FALSE(d.feed("data: 1\n\ndata: 2\n\n", [&](const SseEvent&) { return ++seen < 1; }));
    CHECK(seen == 1);
    CHECK_FALSE(d.feed("data: 3\n\n", [&](const SseEvent&) { return ++seen < 100; }));
    CHECK(seen == 1);
  }
  SECTION("long streams are linear: a 4 MiB event arrives in 1-byte pieces") {
    SseDecoder d;
    const std::string payload(4 << 20, 'x');
    const std::string wire = "data: " + payload + "\n\n";
    for (char c : wire) d.feed(std::string_view(&c, 1), collect);
    REQUIRE(events.size() == 1);
    CHECK(events[0].second.size() == payload.size());
  }
}

TEST_CASE("assembly: usage is taken from the chunk that carries it, never summed") {
  SseDecoder d;
  StreamAssembler as;
  const std::string wire =
      R"(data: {"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})"
      "\n\n"
      R"(data: {"id":"a","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}})"
      "\n\ndata: [DONE]\n\n";
  d.feed(wire, [&](const SseEvent& ev) {
    as.on_event(ev);
    return true;
  });
  REQUIRE(as.done());
  auto c = as.assemble();
  CHECK(c.usage->prompt_tokens == 5);
  CHECK(c.usage->total_tokens == 12);
  CHECK(c.streamed);
}

TEST_CASE("an empty feed (even a null view) is harmless") {
  SseDecoder dec;
  int events = 0;
  auto count = [&](const SseEvent&) {
    ++events;
    return true;
  };
  CHECK(dec.feed(std::string_view(), count));  // data() is null: no memchr on it (UBSan)
  CHECK(dec.feed("data: x\n", count));
  CHECK(dec.feed(std::string_view(), count));
  CHECK(dec.feed("\n", count));
  CHECK(events == 1);
  CHECK_FALSE(dec.has_unterminated_tail());
}
