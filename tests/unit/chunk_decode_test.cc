// detail::decode_chunk against the straightforward reference decoder
// (chunk_reference.h): the same chunk, the same in-stream error and the
// same bad_response message for every recorded event, for handwritten edge
// cases and for many thousands of mutated events (truncated, garbage in
// unused fields, wrong types, duplicate keys, invalid UTF-8, trailing
// bytes, deep nesting), each decoded into a fresh chunk and into one chunk
// reused across the whole sequence, as a stream does.
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <dirent.h>

#include <algorithm>
#include <random>

#include "chunk_describe.h"
#include "chunk_reference.h"
#include "codec.h"
#include "fixtures.h"
#include "sse.h"

using namespace taotoken;

namespace {

using test_support::describe;
using test_support::show;

std::string describe(const std::optional<Error>& e) {
  if (!e) return "(none)";
  return fmt::format("kind={} message={} type={} code={} param={} http_status={}", to_string(e->kind()),
                     e->message(), show(e->type), show(e->code), show(e->param), e->http_status);
}

struct Decoded {
  std::optional<Error> failure;  // bad_response
  std::optional<Error> in_stream;
  std::string chunk;             // describe(), when decoded
};

Decoded reference(const std::string& padded) {
  Decoded d;
  ChatCompletionChunk c;
  d.failure = chunkref::decode_chunk(padded, c, d.in_stream);
  if (!d.failure) d.chunk = describe(c);
  return d;
}

Decoded tuned(const std::string& padded, ChatCompletionChunk& c, detail::ChunkPrefix* prefix) {
  Decoded d;
  d.failure = detail::decode_chunk(padded, c, d.in_stream, prefix);
  if (!d.failure) d.chunk = describe(c);
  return d;
}

// A copy with SIMDJSON_PADDING bytes of spare capacity, as SseDecoder
// leaves them.
std::string padded(std::string_view s) {
  std::string out;
  out.reserve(s.size() + simdjson::SIMDJSON_PADDING);
  out.assign(s);
  return out;
}

// The data of every event of every recorded stream, in order, and every
// recorded non-streaming body.
std::vector<std::string> recorded_events() {
  std::vector<std::string> out;
  for (const char* sub : {"/stream", "/nonstream", "/errors"}) {
    const std::string d = fixtures::dir() + sub;
    DIR* dir = opendir(d.c_str());
    REQUIRE(dir);
    std::vector<std::string> names;
    while (dirent* e = readdir(dir)) {
      std::string n = e->d_name;
      if (n.size() > 4 && (n.substr(n.size() - 4) == ".sse" || n.substr(n.size() - 5) == ".json")) names.push_back(n);
    }
    closedir(dir);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      const std::string bytes = fixtures::read_file(d + "/" + n);
      if (n.substr(n.size() - 4) != ".sse") {
        out.push_back(bytes);
        continue;
      }
      detail::SseDecoder dec;
      dec.feed(bytes, [&](const detail::SseEvent& ev) {
        out.emplace_back(ev.data);
        return true;
      });
    }
  }
  return out;
}

// Handwritten events: every field with every JSON type, nulls, duplicates,
// escapes, and the shapes the mutations below rarely reach.
std::vector<std::string> edge_cases() {
  const std::string env = R"("id":"c1","object":"chat.completion.chunk","created":1,"model":"m",)";
  std::vector<std::string> out = {
      "{}",
      "[]",
      "null",
      "1",
      "\"x\"",
      "",
      " ",
      "{\"choices\":null}",
      "{\"choices\":[]}",
      "{\"choices\":{}}",
      "{\"choices\":[1]}",
      "{\"choices\":[null]}",
      "{\"choices\":[{}]}",
      "{\"choices\":[{\"delta\":null}]}",
      "{\"choices\":[{\"delta\":1}]}",
      "{\"choices\":[{\"delta\":{}}],\"choices\":[{\"delta\":{\"content\":\"b\"}}]}",
      "{" + env + R"("choices":[{"index":0,"delta":{"content":"a"}}],"choices":[{"index":1,"delta":{"content":"b"}}]})",
      "{" + env + R"("id":"c2","model":null,"object":null,"created":null})",
      "{" + env + R"("created":1.6,"system_fingerprint":null,"provider":{"a":[1,2]}})",
      "{" + env + R"("created":-1e3,"provider":12,"provider":"p","system_fingerprint":"fp"})",
      "{" + env + R"("created":9223372036854775807})",
      "{" + env + R"("created":9223372036854775808})",
      "{" + env + R"("created":18446744073709551615})",
      "{" + env + R"("created":18446744073709551616})",
      "{" + env + R"("created":1e19})",
      "{" + env + R"("created":-9223372036854775808})",
      "{" + env + R"("created":"1"})",
      "{" + env + R"("created":true})",
      "{" + env + R"("id":1})",
      "{" + env + R"("model":[]})",
      "{" + env + R"("system_fingerprint":2})",
      "{" + env + R"("usage":null,"usage":{"prompt_tokens":3,"completion_tokens":null,"total_tokens":4.4,"cost":0.5,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}})",
      "{" + env + R"("usage":{"cost":null,"prompt_tokens_details":null,"completion_tokens_details":{}},"usage":1})",
      "{" + env + R"("usage":{"cost":"1"}})",
      "{" + env + R"("usage":{"prompt_tokens":"1"}})",
      "{" + env + R"("usage":{"prompt_tokens_details":{"cached_tokens":"x"}}})",
      "{" + env + R"("error":null})",
      "{" + env + R"("error":"plain"})",
      "{" + env + R"("error":{"message":"m","code":429,"type":"t","param":null}})",
      "{" + env + R"("error":{"message":{"a":1},"code":"503"},"choices":[{"finish_reason":"error","delta":{}}]})",
      "{" + env + R"("error":{"code":600},"error":{"message":"second"}})",
      "{" + env + R"("error":{"message":"m"},"error":null})",
      "{" + env + R"("error":1})",
      "{" + env + R"("error":[]})",
      "{" + env + R"("choices":[{"index":"0"}]})",
      "{" + env + R"("choices":[{"index":2.5,"finish_reason":1}]})",
      "{" + env + R"("choices":[{"index":3,"finish_reason":null,"finish_reason":"stop","logprobs":null}]})",
      "{" + env + R"("choices":[{"logprobs":{"content":[{"token":"a","logprob":-0.5}],"refusal":null},"logprobs":[]}]})",
      "{" + env + R"("choices":[{"logprobs":{"content":[]},"logprobs":1}]})",
      "{" + env + R"("choices":[{"delta":{"role":"assistant","role":null,"content":null,"refusal":"r","refusal":null}}]})",
      "{" + env + R"("choices":[{"delta":{"role":1}}]})",
      "{" + env + R"("choices":[{"delta":{"content":1}}]})",
      "{" + env + R"("choices":[{"delta":{"content":{}}}]})",
      "{" + env + R"("choices":[{"delta":{"content":"a","content":"b"}}]})",
      "{" + env + R"("choices":[{"delta":{"content":"a","content":null}}]})",
      "{" + env + R"("choices":[{"delta":{"content":[{"type":"text","text":"a"},{"text":1},3,{"text":"b"}]}}]})",
      "{" + env + R"("choices":[{"delta":{"content":[]}}]})",
      "{" + env + R"("choices":[{"delta":{"reasoning":"x","reasoning_content":null,"reasoning":"y"}}]})",
      "{" + env + R"("choices":[{"delta":{"reasoning_content":1}}]})",
      "{" + env + R"("choices":[{"delta":{"reasoning":"x","reasoning_content":null}}]})",
      "{" + env + R"("choices":[{"delta":{"reasoning_content":"x","reasoning":null,"content":""}}]})",
      "{" + env + R"("choices":[{"delta":1,"delta":{"content":"second delta"},"delta":null}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":null}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":{}}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[1]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{}],"tool_calls":[{"index":1}]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\""}},{"index":1,"id":null,"type":null,"function":{"name":null,"arguments":null}}]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{"function":{"arguments":{"x":[1,true]}}},{"function":{"arguments":7}},{"function":null},{"function":1}]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{"id":1}]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{"function":{"name":2}}]}}]})",
      "{" + env + R"("choices":[{"delta":{"tool_calls":[{"index":"1"}]}}]})",
      "{" + env + R"("choices":[{"delta":{"content":"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t"}}]})",
      "{" + env + R"("choices":[{"delta":{"content":"\ud800"}}]})",
      "{" + env + R"("choices":[{"delta":{"content":"\x"}}]})",
      "{" + env + R"("ch\u006fices":[{"delta":{"content":"escaped key"}}],"\u0069d":"escaped id"})",
      "{" + env + R"("choices":[{"delta":{"content":"a"}}]} )",
      "{" + env + R"("choices":[{"delta":{"content":"a"}}]}x)",
      "{" + env + R"("choices":[{"delta":{"content":"a"}}]}{})",
      "{" + env + R"("choices":[{"delta":{"content":"a"}}],})",
      "{" + env + R"(})",
      "{" + env,
      "{" + env + R"("x":tru,"choices":[]})",
      "{" + env + R"("x":nul})",
      "{" + env + R"("x":-})",
      "{" + env + R"("x":01})",
      "{" + env + R"("x":1e999})",
      "{" + env + R"("x":"a)" + std::string(1, '\x01') + R"("})",
      "{" + env + R"("x":")" + std::string("\xff\xfe") + R"("})",
      "{" + env + R"("x":")" + std::string("\xc3") + R"("})",
      "{" + env + R"("x":")" + std::string("\xed\xa0\x80") + R"("})",
      "{" + env + R"("x":")" + std::string("\xe2\x82\xac") + R"("})",
      "{" + env + R"("x":1)" + std::string(1, '\0') + R"(})",
      "{" + env + R"("x":[[[]]],"y":{"z":{"w":null}}})",
      " \t\n{" + env + R"("choices":[]}  )" + "\r\n",
  };
  // Nesting at and beyond the parser's depth limit, in a field that is
  // never read and in one that is.
  for (std::size_t depth : {10u, 1000u, 1022u, 1023u, 1024u, 1025u, 5000u}) {
    out.push_back("{" + env + "\"x\":" + std::string(depth, '[') + std::string(depth, ']') + "}");
    out.push_back("{" + env + R"("choices":[{"logprobs":)" + std::string(depth, '[') + std::string(depth, ']') + "}]}");
  }
  return out;
}

// Random damage to an event: each mutation is one way real input goes
// wrong (or right: many results are still valid JSON).
std::string mutate(std::string s, std::mt19937& rng) {
  static const std::vector<std::string> tokens = {
      "\"", "\\", "{", "}", "[", "]", ",", ":", " ", "tru", "nul", "fals", "true", "null", "-", "1e999", "0.5",
      "\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80", std::string(1, '\0'), "\x01", "\n", "\\u12", "\\ud800",
      "\"id\":\"x\",", "\"choices\":[],", "\"choices\":null,", "\"model\":\"m2\",", "\"usage\":{\"total_tokens\":9},",
      "\"error\":{\"message\":\"m\",\"code\":429},", "\"created\":2,", "\"system_fingerprint\":\"fp\",",
      "\"provider\":\"p\",", "\"content\":\"c\",", "\"index\":1,", "\"finish_reason\":\"stop\","};
  static const std::vector<std::string> values = {
      "null", "1", "-1", "1.5", "1e30", "18446744073709551615", "\"s\"", "[]", "{}", "true", "false",
      "[{\"text\":\"a\"},{\"text\":1}]", "{\"content\":[1]}", "[{\"index\":0,\"delta\":{\"content\":\"z\"}}]",
      "{\"name\":\"n\",\"arguments\":{}}", "\"\\u00e9\"", "[[[[[]]]]]"};
  auto pick = [&](std::size_t n) { return n ? static_cast<std::size_t>(rng() % n) : 0; };
  switch (rng() % 9) {
    case 0:  // cut anywhere
      s.resize(pick(s.size() + 1));
      break;
    case 1: {  // drop a range
      const std::size_t at = pick(s.size() + 1);
      s.erase(at, 1 + pick(8));
      break;
    }
    case 2:  // insert a token anywhere
      s.insert(pick(s.size() + 1), tokens[pick(tokens.size())]);
      break;
    case 3: {  // flip a byte
      if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng());
      break;
    }
    case 4: {  // replace the value after a colon with another JSON value
      std::vector<std::size_t> colons;
      for (std::size_t i = 0; i < s.size(); ++i)
        if (s[i] == ':') colons.push_back(i);
      if (colons.empty()) break;
      const std::size_t at = colons[pick(colons.size())] + 1;
      std::size_t end = at;
      int depth = 0;
      bool in_str = false;
      for (; end < s.size(); ++end) {
        const char ch = s[end];
        if (in_str) {
          if (ch == '\\') ++end;
          else if (ch == '"') in_str = false;
          continue;
        }
        if (ch == '"') in_str = true;
        else if (ch == '{' || ch == '[') ++depth;
        else if (ch == '}' || ch == ']') {
          if (depth == 0) break;
          --depth;
        } else if (ch == ',' && depth == 0) break;
      }
      s.replace(at, std::min(end, s.size()) - at, values[pick(values.size())]);
      break;
    }
    case 5: {  // duplicate a member (text between two commas)
      std::vector<std::size_t> commas;
      for (std::size_t i = 0; i < s.size(); ++i)
        if (s[i] == ',') commas.push_back(i);
      if (commas.size() < 2) break;
      const std::size_t i = pick(commas.size() - 1);
      const std::string member = s.substr(commas[i], commas[i + 1] - commas[i]);
      s.insert(commas[pick(commas.size())], member);
      break;
    }
    case 6:  // trailing bytes
      s += tokens[pick(tokens.size())];
      break;
    case 7: {  // insert a member right after the opening brace or after a comma
      const std::size_t brace = s.find('{');
      if (brace == std::string::npos) break;
      std::vector<std::size_t> commas = {brace};
      for (std::size_t i = 0; i < s.size(); ++i)
        if (s[i] == ',') commas.push_back(i);
      const std::string& t = tokens[26 + pick(tokens.size() - 26)];
      s.insert(commas[pick(commas.size())] + 1, t);
      break;
    }
    case 8: {  // change one character of a key or short value, keeping the shape
      std::vector<std::size_t> letters;
      for (std::size_t i = 0; i < s.size(); ++i)
        if (s[i] >= 'a' && s[i] <= 'z') letters.push_back(i);
      if (!letters.empty()) s[letters[pick(letters.size())]] = static_cast<char>('a' + pick(26));
      break;
    }
  }
  return s;
}

// Whether decode_chunk can take the template path for `raw`: the event
// equals the template outside one slot's string body (the path then still
// checks the new body).
bool templated(const detail::ChunkPrefix& prefix, const std::string& raw) {
  const std::string& old = prefix.chunk.raw_json;
  for (const auto& s : prefix.slots) {
    const std::size_t tail = old.size() - s.close;
    if (raw.size() >= s.open + tail && raw.compare(0, s.open, old, 0, s.open) == 0 &&
        raw.compare(raw.size() - tail, tail, old, s.close, tail) == 0)
      return true;
  }
  return false;
}

}  // namespace

TEST_CASE("decode_chunk decodes every event like the reference decoder") {
  std::vector<std::string> corpus = recorded_events();
  REQUIRE(corpus.size() > 300);
  const std::vector<std::string> edges = edge_cases();
  corpus.insert(corpus.end(), edges.begin(), edges.end());

  // The recorded streams in order with the mutants of each event after it,
  // so a reused chunk sees valid and damaged events in every order.
  std::vector<std::string> events;
  std::mt19937 rng(20240611);
  for (const auto& doc : corpus) {
    events.push_back(doc);
    for (int i = 0; i < 40; ++i) {
      std::string m = mutate(doc, rng);
      const int more = static_cast<int>(rng() % 3);
      for (int j = 0; j < more; ++j) m = mutate(std::move(m), rng);
      events.push_back(std::move(m));
      if (rng() % 4 == 0) events.push_back(doc);
    }
  }

  // Decoded three ways: into a fresh chunk, and into one chunk reused
  // across the sequence without and with a ChunkPrefix kept across it (a
  // stream's; most mutants keep their original's leading members, so they
  // are decoded from the prefix).
  ChatCompletionChunk reused, streamed;
  detail::ChunkPrefix prefix;
  std::size_t valid = 0, invalid = 0, in_stream = 0, from_prefix = 0, from_prefix_invalid = 0, from_template = 0;
  for (const auto& raw : events) {
    const std::string ev = padded(raw);
    const Decoded want = reference(ev);
    ChatCompletionChunk fresh;
    const bool has_prefix = !prefix.bytes.empty() && raw.size() > prefix.bytes.size() &&
                            raw.compare(0, prefix.bytes.size(), prefix.bytes) == 0;
    from_template += templated(prefix, raw);
    const Decoded got = tuned(ev, fresh, nullptr);
    const Decoded again = tuned(ev, reused, nullptr);
    const Decoded cached = tuned(ev, streamed, &prefix);
    INFO("event: " << raw);
    REQUIRE(describe(got.failure) == describe(want.failure));
    REQUIRE(describe(got.in_stream) == describe(want.in_stream));
    REQUIRE(got.chunk == want.chunk);
    REQUIRE(describe(again.failure) == describe(want.failure));
    REQUIRE(describe(again.in_stream) == describe(want.in_stream));
    REQUIRE(again.chunk == want.chunk);
    REQUIRE(describe(cached.failure) == describe(want.failure));
    REQUIRE(describe(cached.in_stream) == describe(want.in_stream));
    REQUIRE(cached.chunk == want.chunk);
    if (has_prefix) {
      ++from_prefix;
      if (want.failure) ++from_prefix_invalid;
    }
    if (want.failure) {
      CHECK(want.failure->kind() == ErrorKind::bad_response);
      ++invalid;
    } else {
      ++valid;
    }
    if (want.in_stream) ++in_stream;
  }
  // The mutations must reach both outcomes often, or the test proves little.
  CHECK(valid > events.size() / 5);
  CHECK(invalid > events.size() / 5);
  CHECK(in_stream > 100);
  CHECK(from_prefix > events.size() / 5);
  CHECK(from_prefix_invalid > from_prefix / 5);
  CHECK(from_template > events.size() / 20);
}

TEST_CASE("decode_chunk from a stream's prefix: damage after the prefix gives the reference's result") {
  // Every recorded event that leaves a prefix, followed by mutants damaged
  // only after that prefix (so each is decoded from it) and mutants of the
  // prefix part alone (so each is not, and must not be).
  std::vector<std::string> corpus = recorded_events();
  const std::vector<std::string> edges = edge_cases();
  corpus.insert(corpus.end(), edges.begin(), edges.end());
  std::mt19937 rng(777);
  std::size_t with_prefix = 0, decoded = 0, failed = 0;
  for (const auto& doc : corpus) {
    detail::ChunkPrefix prefix;
    ChatCompletionChunk c;
    const std::string first = padded(doc);
    const Decoded want_first = reference(first);
    const Decoded got_first = tuned(first, c, &prefix);
    REQUIRE(got_first.chunk == want_first.chunk);
    REQUIRE(describe(got_first.failure) == describe(want_first.failure));
    if (prefix.bytes.empty()) continue;
    ++with_prefix;
    INFO("original: " << doc);
    const std::string head = prefix.bytes;
    REQUIRE(doc.compare(0, head.size(), head) == 0);
    const std::string tail = doc.substr(head.size());
    for (int i = 0; i < 300; ++i) {
      std::string m;
      if (i % 10 == 9) {
        m = mutate(head, rng) + tail;
      } else {
        m = mutate(tail, rng);
        if (rng() % 2) m = mutate(std::move(m), rng);
        m = head + m;
      }
      const std::string ev = padded(m);
      const Decoded want = reference(ev);
      detail::ChunkPrefix kept = prefix;
      const Decoded got = tuned(ev, c, &kept);
      INFO("event: " << m);
      REQUIRE(describe(got.failure) == describe(want.failure));
      REQUIRE(describe(got.in_stream) == describe(want.in_stream));
      REQUIRE(got.chunk == want.chunk);
      ++(want.failure ? failed : decoded);
    }
  }
  CHECK(with_prefix > 250);
  CHECK(decoded > with_prefix * 60);
  CHECK(failed > with_prefix * 60);
}

TEST_CASE("decode_chunk's prefix: only whole leading members that set the envelope") {
  auto prefix_of = [](const std::string& doc) {
    detail::ChunkPrefix prefix;
    ChatCompletionChunk c;
    std::optional<Error> in_stream;
    const std::string ev = padded(doc);
    CHECK_FALSE(detail::decode_chunk(ev, c, in_stream, &prefix));
    return prefix.bytes;
  };
  CHECK(prefix_of(R"({"id":"a","model":"m","choices":[]})") == R"({"id":"a","model":"m",)");
  CHECK(prefix_of(R"( { "id" : "a" ,"choices":[]})") == R"( { "id" : "a" ,)");
  CHECK(prefix_of(R"({"id":"a", "choices":[]})") == "");  // a space before the key: not reused
  CHECK(prefix_of(R"({"choices":[],"id":"a"})") == "");
  CHECK(prefix_of(R"({"id":"a,\",\"b","x":{"choices":[1,{"y":","}]},"usage":null,"choices":[]})") ==
        R"({"id":"a,\",\"b","x":{"choices":[1,{"y":","}]},)");
  CHECK(prefix_of(R"({"id":"a","error":null,"choices":[]})") == R"({"id":"a",)");
  CHECK(prefix_of(R"({"id":"a","ch\u006fices":[],"model":"m"})") == R"({"id":"a",)");
  CHECK(prefix_of(R"({"id":"a","model":"m"})") == "");  // no choices: nothing to reuse it for
}

namespace {

// Events built for the template: every slot kind, and the keys, nulls and
// duplicates that decide whether a string is one.
std::vector<std::string> template_docs() {
  const std::string env = R"({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",)";
  auto choice = [&](const std::string& delta, const std::string& more = "") {
    return env + R"("choices":[{"index":0,"delta":)" + delta + R"(,"logprobs":null,"finish_reason":null}])" + more +
           "}";
  };
  return {
      choice(R"({"content":"w"})"),
      choice(R"({"content":""})"),
      choice(R"({"role":"assistant","content":"","refusal":null})"),
      choice(R"({"content":"a\"b\\c\u00e9\ud83d\ude00"})"),
      choice(R"({"content":"a","content":"b"})"),
      choice(R"({"content":"a","content":null})"),
      choice(R"({"content":null,"content":"a"})"),
      choice(R"({"content":[{"type":"text","text":"a"}]})"),
      choice(R"({"content":"a","c\u006fntent":"b"})"),
      choice(R"({"c\u006fntent":"b","content":"a"})"),
      choice(R"({"refusal":"no"})"),
      choice(R"({"refusal":"no","refusal":null})"),
      choice(R"({"reasoning_content":"r","content":null})"),
      choice(R"({"reasoning":"r","reasoning_content":null})"),
      choice(R"({"reasoning":"a","reasoning_content":"b"})"),
      choice(R"({"reasoning_content":"b","reasoning":null,"content":""})"),
      choice(R"({"reasoning":null,"reasoning":"x"})"),
      choice(R"({"content":"c","reasoning":"r","refusal":"f"})"),
      choice(R"({"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\""}}]})"),
      choice(R"({"tool_calls":[{"index":0,"function":{"arguments":""}},{"index":1,"function":{"arguments":"x"}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a","arguments":"b"}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a","arguments":null}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a"},"function":{"name":"n"}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a"}}],"tool_calls":[{"function":{"arguments":"b"}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a","\u0061rguments":"b"}}]})"),
      choice(R"({"tool_calls":[{"function":{"arguments":"a"},"f\u0075nction":{}}]})"),
      choice(R"({"content":"w"})", R"(,"usage":{"prompt_tokens":1})"),
      choice(R"({"content":"w"})", R"(,"error":null)"),
      choice(R"({"content":"w"})", R"(,"error":{"message":"m","code":429})"),
      choice(R"({"content":"w"})", R"(,"content":"top")"),
      choice(R"({"content":"w"})", R"(,"choices":[])"),
      choice(R"({"content":"w"})", R"(,"ch\u006fices":[])"),
      env + R"("choices":[{"index":0,"delta":{"content":"a"},"delta":{"refusal":"r"}}]})",
      env + R"("choices":[{"index":0,"delta":{"content":"a"},"d\u0065lta":{}}]})",
      env + R"("choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]})",
      env + R"("choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"token":"a","logprob":-1}]}}]})",
      env + R"("choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]})",
      R"( { "choices" : [ { "delta" : { "content" : "a" , "role" : "assistant" } } ] } )",
      R"({"choices":[{"delta":{"content":"a"}}]})" "\n",
  };
}

// New string bodies: each is one way a string goes right or wrong for
// simdjson (escapes, surrogates, control characters, UTF-8) or stops being
// one string (quotes, a trailing backslash).
std::vector<std::string> body_pieces() {
  return {"a", " word", "", "\\\"", "\\\\", "\\/", "\\b\\f\\n\\r\\t", "\\u00e9", "\\u00E9", "\\u0000", "\\u001f",
          "\\u007f", "\\u0800", "\\uffff", "\\uFFFE", "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\ud800", "\\udc00",
          "\\udfff", "\\ud800\\ud800", "\\ud800\\u0041", "\\ud800x", "\\udbff\\udfff", "\\ud800\\udc0", "\\u",
          "\\u12", "\\u12g4", "\\uZZZZ", "\\x", "\\'", "\\a", "\\0", "\\U0041", "\\", "\\\\\\", "\"", "\",\"x\":\"",
          "\"}", "\\\"}", std::string(1, '\x01'), std::string(1, '\x1f'), std::string(1, '\0'), "\t", "\n", "\x7f",
          "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xc0\xaf",
          "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "{", "}", "[", "]", ",", ":", "null", std::string(300, 'z')};
}

}  // namespace

TEST_CASE("decode_chunk's template: only strings that decide one field are slots") {
  auto slots_of = [](const std::string& doc) {
    detail::ChunkPrefix prefix;
    prefix.last_full = true;  // as after an event decoded the full way: a template is made
    ChatCompletionChunk c;
    std::optional<Error> in_stream;
    const std::string ev = padded(doc);
    (void)detail::decode_chunk(ev, c, in_stream, &prefix);
    std::vector<std::string> out;
    for (const auto& s : prefix.slots) {
      static const char* names[] = {"content", "refusal", "reasoning", "arguments"};
      out.push_back(fmt::format("{}[{}].{}{}={}", "choices", s.choice, names[s.field],
                                s.field == detail::ChunkPrefix::StringSlot::arguments ? fmt::format("[{}]", s.tool) : "",
                                doc.substr(s.open, s.close - s.open)));
    }
    return out;
  };
  using V = std::vector<std::string>;
  const std::string env = R"({"id":"c","choices":[{"index":0,"delta":)";
  CHECK(slots_of(env + R"({"content":" w"}}]})") == V{"choices[0].content= w"});
  CHECK(slots_of(env + R"({"role":"assistant","content":"","refusal":null}}]})") == V{"choices[0].content="});
  CHECK(slots_of(env + R"({"content":"a","content":"b"}}]})") == V{"choices[0].content=b"});
  CHECK(slots_of(env + R"({"content":"a","content":null}}]})") == V{});
  CHECK(slots_of(env + R"({"content":"a","c\u006fntent":"b"}}]})") == V{});
  CHECK(slots_of(env + R"({"content":[{"text":"a"}]}}]})") == V{});
  CHECK(slots_of(env + R"({"reasoning":"a","reasoning_content":null}}]})") == V{"choices[0].reasoning=a"});
  CHECK(slots_of(env + R"({"reasoning":"a","reasoning_content":"b"}}]})") == V{"choices[0].reasoning=b"});
  CHECK(slots_of(env + R"({"content":"c","refusal":"f","reasoning":"r"}}]})") ==
        V{"choices[0].content=c", "choices[0].refusal=f", "choices[0].reasoning=r"});
  CHECK(slots_of(env + R"({"tool_calls":[{"function":{"arguments":"a"}},{"function":{"arguments":"b","arguments":"c"}}]}}]})") ==
        V{"choices[0].arguments[0]=a", "choices[0].arguments[1]=c"});
  CHECK(slots_of(env + R"({"tool_calls":[{"function":{"arguments":"a"}}],"tool_calls":[]}}]})") == V{});
  CHECK(slots_of(env + R"({"tool_calls":[{"function":{"arguments":"a"},"function":{}}]}}]})") == V{});
  CHECK(slots_of(env + R"({"content":"a"},"delta":{}}]})") == V{});
  CHECK(slots_of(env + R"({"content":"a"}},{"delta":{"content":"b"}}]})") ==
        V{"choices[0].content=a", "choices[1].content=b"});
  CHECK(slots_of(env + R"({"content":"a"}}],"choices":[]})") == V{});
  CHECK(slots_of(env + R"({"content":"a"}}],"\u0069d":"x"})") == V{});
  CHECK(slots_of(env + R"({"content":"a"}}],"error":{"message":"m"}})") == V{});
  CHECK(slots_of(env + R"({"content":"a"}}],"error":null})") == V{"choices[0].content=a"});
  CHECK(slots_of(env + R"({"content":"a"}}],"x":tru})") == V{});  // invalid: no template
}

TEST_CASE("decode_chunk's template: a new string in a slot gives the reference's result") {
  std::vector<std::string> corpus = recorded_events();
  const std::vector<std::string> extra = template_docs();
  corpus.insert(corpus.end(), extra.begin(), extra.end());
  const std::vector<std::string> pieces = body_pieces();
  std::mt19937 rng(4242);
  std::size_t templates = 0, slots = 0, taken = 0, valid = 0, failed = 0, streamed = 0;
  ChatCompletionChunk reused;  // decoded into across everything, as a stream's
  for (const auto& doc : corpus) {
    detail::ChunkPrefix prefix;
    prefix.last_full = true;  // as after an event decoded the full way: a template is made
    const std::string first = padded(doc);
    const Decoded want_first = reference(first);
    const Decoded got_first = tuned(first, reused, &prefix);
    REQUIRE(got_first.chunk == want_first.chunk);
    if (prefix.slots.empty()) continue;
    ++templates;
    INFO("template: " << doc);
    REQUIRE(prefix.chunk.raw_json == doc);
    // One stream's prefix state, carried across the new events in order:
    // a fallback refreshes the template from a new event.
    detail::ChunkPrefix stream = prefix;
    for (const auto& slot : prefix.slots) {
      ++slots;
      for (int i = 0; i < 120; ++i) {
        std::string body;
        if (i < static_cast<int>(pieces.size())) {
          body = pieces[i];
        } else {
          const int n = 1 + static_cast<int>(rng() % 4);
          for (int j = 0; j < n; ++j) body += pieces[rng() % pieces.size()];
        }
        const std::string m = doc.substr(0, slot.open) + body + doc.substr(slot.close);
        const std::string ev = padded(m);
        const Decoded want = reference(ev);
        INFO("event: " << m);
        REQUIRE(templated(prefix, m));
        ++taken;
        detail::ChunkPrefix kept = prefix;
        const Decoded got = tuned(ev, reused, &kept);
        REQUIRE(describe(got.failure) == describe(want.failure));
        REQUIRE(describe(got.in_stream) == describe(want.in_stream));
        REQUIRE(got.chunk == want.chunk);
        streamed += templated(stream, m);
        const Decoded in_stream = tuned(ev, reused, &stream);
        REQUIRE(describe(in_stream.failure) == describe(want.failure));
        REQUIRE(in_stream.chunk == want.chunk);
        ++(want.failure ? failed : valid);
      }
    }
    // Damage anywhere (a key, a second string, the structure) after the
    // template, decoded with it.
    for (int i = 0; i < 60; ++i) {
      std::string m = mutate(doc, rng);
      if (rng() % 2) m = mutate(std::move(m), rng);
      const std::string ev = padded(m);
      const Decoded want = reference(ev);
      detail::ChunkPrefix kept = prefix;
      INFO("event: " << m);
      const Decoded got = tuned(ev, reused, &kept);
      REQUIRE(describe(got.failure) == describe(want.failure));
      REQUIRE(describe(got.in_stream) == describe(want.in_stream));
      REQUIRE(got.chunk == want.chunk);
    }
  }
  CHECK(templates > 250);
  CHECK(slots >= templates);
  CHECK(valid > taken / 4);
  CHECK(failed > taken / 4);
  CHECK(streamed > taken / 2);
}

TEST_CASE("decode_chunk's held chunk: a hit on the slot of the hit before writes that field alone, or defers it") {
  // Events of each template's shape with new strings in random slots (so a
  // hit follows a hit on the same slot or on another one), each decoded
  // into one object as `held` (what the call before left) and into another
  // with the writes deferred (then done as StreamAssembler does when it is
  // read: set_slot_field and raw_json). Both must equal the reference.
  std::vector<std::string> corpus = recorded_events();
  const std::vector<std::string> extra = template_docs();
  corpus.insert(corpus.end(), extra.begin(), extra.end());
  const std::vector<std::string> pieces = body_pieces();
  std::mt19937 rng(5150);
  std::size_t deferred_hits = 0, events = 0;
  for (const auto& doc : corpus) {
    detail::ChunkPrefix now, later;
    now.last_full = later.last_full = true;  // as after an event decoded the full way: a template is made
    ChatCompletionChunk held, deferred;
    const std::string first = padded(doc);
    std::optional<Error> in_stream, error;
    const bool valid = detail::decode_chunk_into(first, held, in_stream, &now, error, false);
    in_stream.reset();
    error.reset();
    REQUIRE(detail::decode_chunk_into(first, deferred, in_stream, &later, error, false) == valid);
    if (!valid || now.slots.empty()) continue;
    INFO("template: " << doc);
    const std::vector<detail::ChunkPrefix::StringSlot> slots = now.slots;
    for (int i = 0; i < 80; ++i) {
      const auto& slot = slots[rng() % 3 == 0 ? rng() % slots.size() : 0];
      const std::string body = pieces[rng() % pieces.size()];
      const std::string m = doc.substr(0, slot.open) + body + doc.substr(slot.close);
      const std::string ev = padded(m);
      const Decoded want = reference(ev);
      INFO("event: " << m);
      ++events;
      std::optional<Error> in_now, err_now, in_later, err_later;
      const bool ok_now = detail::decode_chunk_into(ev, held, in_now, &now, err_now, /*held=*/true);
      bool was_deferred = false;
      const bool ok_later =
          detail::decode_chunk_into(ev, deferred, in_later, &later, err_later, /*held=*/true, &was_deferred);
      REQUIRE(describe(err_now) == describe(want.failure));
      REQUIRE(describe(err_later) == describe(want.failure));
      REQUIRE(ok_now == !want.failure);
      REQUIRE(ok_later == !want.failure);
      if (want.failure) continue;
      REQUIRE(describe(held) == want.chunk);
      if (was_deferred) {
        ++deferred_hits;
        REQUIRE(later.hit != 0);
        CHECK(later.hit_value.data() != nullptr);
        detail::set_slot_field(deferred, later.slots[later.hit_slot], later.hit_value);
        deferred.raw_json.assign(ev);
      }
      REQUIRE(describe(deferred) == want.chunk);
    }
  }
  CHECK(deferred_hits > events / 6);  // (many new strings are invalid: those fail before)
}

TEST_CASE("decode_chunk's template: made from an event decoded the full way right after another") {
  // A stream: role chunk, content chunks, a tool-call chunk, tool-call
  // chunks. The first event of each shape is decoded the full way and
  // makes no template; the second one does (the template before it stays
  // until then), and the rest of that shape come from it. Every result
  // equals the reference's.
  const std::string env = R"({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":)";
  const std::vector<std::string> docs = {
      env + R"({"role":"assistant","content":""}}]})",
      env + R"({"content":"Hel"}}]})",
      env + R"({"content":"lo"}}]})",
      env + R"({"content":" there"}}]})",
      env + R"({"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":""}}]}}]})",
      env + R"({"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]})",
      env + R"({"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]})",
  };
  const std::vector<int> template_after = {-1, 1, 1, 1, 1, 5, 5};  // the event the template is (-1: none)
  const std::vector<bool> from_template = {false, false, true, true, false, false, true};
  detail::ChunkPrefix prefix;
  ChatCompletionChunk c;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    INFO("event " << i << ": " << docs[i]);
    CHECK(templated(prefix, docs[i]) == from_template[i]);
    const std::string ev = padded(docs[i]);
    const Decoded got = tuned(ev, c, &prefix);
    const Decoded want = reference(ev);
    REQUIRE_FALSE(want.failure);
    REQUIRE_FALSE(got.failure);
    CHECK(got.chunk == want.chunk);
    CHECK(prefix.slots.empty() == (template_after[i] < 0));
    if (template_after[i] >= 0) CHECK(prefix.chunk.raw_json == docs[template_after[i]]);
  }
}

TEST_CASE("decode_chunk's templates: kept for the next stream and moved onto its prefix") {
  // Streams decoded one after the other with one ChunkPrefix, reset()
  // between them as a recycled assembler does. A stream's first content
  // chunk comes from the last stream's template and its finish chunk from
  // the last finish chunk, moved onto the new stream's prefix (another id,
  // created, provider, fingerprint, of another length) - unless members
  // after the prefix set envelope fields (then the new prefix would not
  // decide them). Every result equals the reference's.
  struct Stream {
    std::string head;  // the members in front of "choices"
    std::string tail;  // after the choices array
  };
  auto events = [](const Stream& s) {
    const std::string env = "{" + s.head + R"("choices":[{"index":0,"delta":)";
    const std::string end = "}]" + s.tail + "}";
    return std::vector<std::string>{
        env + R"({"role":"assistant","content":""},"finish_reason":null)" + end,
        env + R"({"content":"Hel"},"finish_reason":null)" + end,
        env + R"({"content":"lo"},"finish_reason":null)" + end,
        env + R"({"content":" there"},"finish_reason":null)" + end,
        env + R"({},"finish_reason":"stop")" + end,
        "{" + s.head + R"("choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}})",
    };
  };
  const std::string object = R"("object":"chat.completion.chunk",)";
  struct Case {
    const char* name;
    std::vector<Stream> streams;
    bool moved;  // whether later streams' first content and finish chunks come from the templates
  };
  const std::vector<Case> cases = {
      {"OpenAI's members",
       {{R"("id":"chatcmpl-1",)" + object + R"("created":1,"model":"m","system_fingerprint":"fp_a",)",
         R"(,"usage":null)"},
        {R"("id":"chatcmpl-22222",)" + object + R"("created":1753357673,"model":"m","system_fingerprint":null,)",
         R"(,"usage":null)"},
        {R"("id":"c3",)" + object + R"("created":3,"model":"m2",)", R"(,"usage":null)"}},
       true},
      {"a provider in the prefix",
       {{R"("id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o",)" + object + R"("created":5,)", ""},
        {R"("id":"gen-2x","provider":"Azure","model":"openai/gpt-4o",)" + object + R"("created":6,)", ""},
        {R"("id":"gen-3","provider":7,"model":"openai/gpt-4o",)" + object + R"("created":7,)", ""}},
       true},
      {"the model after the choices",
       {{R"("id":"a1",)" + object, R"(,"model":"m1")"},
        {R"("id":"a22",)" + object, R"(,"model":"m1")"},
        {R"("id":"a3",)" + object, R"(,"model":"m3","system_fingerprint":"x")"}},
       false},
      {"an id after the choices",
       {{R"("created":1,)" + object, R"(,"id":"x1")"}, {R"("created":2,)" + object, R"(,"id":"x1")"}},
       false},
  };
  for (const Case& k : cases) {
    INFO("case: " << k.name);
    detail::ChunkPrefix prefix;
    ChatCompletionChunk c;
    for (std::size_t n = 0; n < k.streams.size(); ++n) {
      prefix.reset();
      const std::vector<std::string> docs = events(k.streams[n]);
      for (std::size_t i = 0; i < docs.size(); ++i) {
        INFO("stream " << n << " event " << i << ": " << docs[i]);
        const bool from_template = templated(prefix, docs[i]);
        const bool repeated = prefix.repeat.raw_json == docs[i];
        if (i == 1 || i == 4) {
          // Moved: the first content chunk and the finish chunk of every
          // stream after the first.
          CHECK((i == 1 ? from_template : repeated) == (n > 0 && k.moved));
        }
        const std::string ev = padded(docs[i]);
        const Decoded got = tuned(ev, c, &prefix);
        const Decoded want = reference(ev);
        REQUIRE_FALSE(want.failure);
        REQUIRE_FALSE(got.failure);
        CHECK(got.chunk == want.chunk);
      }
    }
  }
}

TEST_CASE("decode_chunk's first-event template: a stream's first event with a new id, in the next streams") {
  // Streams decoded one after the other with one ChunkPrefix (reset()
  // between them). From the second stream on, the first event comes from
  // the first-event template when only the values of its prefix members
  // changed (id, created, fingerprint, an unread member); the prefix it
  // makes serves the stream's next events. Anything else is decoded the
  // full way. Every result equals the reference's.
  auto stream = [](const std::string& head) {
    const std::string env = "{" + head + R"("choices":[{"index":0,"delta":)";
    return std::vector<std::string>{env + R"({"role":"assistant","content":""},"finish_reason":null}],"usage":null})",
                                    env + R"({"content":"Hel"},"finish_reason":null}],"usage":null})",
                                    env + R"({"content":"lo"},"finish_reason":null}],"usage":null})",
                                    env + R"({},"finish_reason":"stop"}],"usage":null})"};
  };
  const std::string obj = R"("object":"chat.completion.chunk",)";
  struct Case {
    const char* name;
    std::vector<std::string> heads;
    std::vector<bool> from_first;  // per stream: its first event from the template
  };
  const std::vector<Case> cases = {
      {"OpenAI's members",
       {R"("id":"chatcmpl-1",)" + obj + R"("created":1,"model":"m","service_tier":"default","system_fingerprint":"fp_a",)",
        R"("id":"chatcmpl-22222",)" + obj + R"("created":1753357673,"model":"m","service_tier":"auto","system_fingerprint":"fp_b",)",
        R"("id":"c\u00e9\"3",)" + obj + R"("created":3,"model":"m2","service_tier":"default","system_fingerprint":"f",)",
        R"("id":"c4",)" + obj + R"("created":-4,"model":"m","service_tier":"default","system_fingerprint":"f",)",
        R"("id":"c5",)" + obj + R"("created":05,"model":"m","service_tier":"default","system_fingerprint":"f",)",
        R"("id":"c6",)" + obj + R"("created":6,"model":"m","service_tier":"default","system_fingerprint":null,)",
        R"("id":"c7",)" + obj + R"("created":7,"model":"m","service_tier":"default","system_fingerprint":"f",)"},
       {false, true, true, false, false, false, false}},  // (the null fingerprint's event, the second odd one in a row, makes a new template)
      {"an id given twice, a provider",
       {R"("id":"a","id":"b1","provider":"OpenAI",)" + obj, R"("id":"zz","id":"b22","provider":"Azure",)" + obj,
        R"("id":"zz","id":"b3","provider":7,)" + obj},
       {false, true, false}},
      {"an integer no field reads after created (review: it was taken as created)",
       {R"("id":"chatcmpl-0",)" + obj + R"("created":1700000000,"model":"m","seq":0,)",
        R"("id":"chatcmpl-1",)" + obj + R"("created":1700000001,"model":"m","seq":7,)",
        R"("id":"chatcmpl-2",)" + obj + R"("created":1700000002,"seq":8,"model":"m",)"},
       {false, true, false}},
      {"the model after the choices (the first event stands alone)",
       {R"("id":"a1",)", R"("id":"a2",)"},
       {false, false}},
  };
  for (const Case& k : cases) {
    INFO("case: " << k.name);
    detail::ChunkPrefix prefix;
    ChatCompletionChunk c;
    for (std::size_t n = 0; n < k.heads.size(); ++n) {
      prefix.reset();
      std::vector<std::string> docs = stream(k.heads[n]);
      if (std::string(k.name).find("model after") != std::string::npos)
        for (auto& d : docs) d.insert(d.size() - 1, R"(,"model":"m")");
      for (std::size_t i = 0; i < docs.size(); ++i) {
        INFO("stream " << n << " event " << i << ": " << docs[i]);
        const std::uint64_t hits = prefix.first_keeping.hits;
        const std::string ev = padded(docs[i]);
        const Decoded got = tuned(ev, c, &prefix);
        const Decoded want = reference(ev);
        REQUIRE(describe(got.failure) == describe(want.failure));  // (a leading zero is invalid JSON)
        if (!want.failure) CHECK(got.chunk == want.chunk);
        CHECK(prefix.first_keeping.hits - hits == (i == 0 && k.from_first[n] ? 1u : 0u));
      }
    }
  }
}

TEST_CASE("decode_chunk's templates: a stream whose every chunk has another id moves them twice at most") {
  // Each event makes a new prefix; the templates are moved onto the first
  // two of a stream only (later ones would not be matched anyway).
  detail::ChunkPrefix prefix;
  ChatCompletionChunk c;
  for (int stream = 0; stream < 3; ++stream) {
    prefix.reset();
    for (int i = 0; i < 8; ++i) {
      const std::string doc = R"({"id":"chatcmpl-)" + std::to_string(stream * 100 + i) +
                              R"(","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"w)" +
                              std::to_string(i) + R"("},"finish_reason":null}]})";
      INFO("stream " << stream << " event " << i << ": " << doc);
      const std::string ev = padded(doc);
      const Decoded got = tuned(ev, c, &prefix);
      const Decoded want = reference(ev);
      REQUIRE_FALSE(want.failure);
      CHECK(got.chunk == want.chunk);
      CHECK(prefix.rebases <= 2);
    }
    CHECK(prefix.rebases == 2);
  }
}

TEST_CASE("decode_chunk's counts template: a usage chunk with new counts, in the next streams") {
  // Streams decoded one after the other with one ChunkPrefix (reset()
  // between them): each ends with a usage chunk whose counts differ. From
  // the second stream on, the usage chunk comes from the counts template
  // when only the digits of counts changed; any other change (a sign, a
  // fraction, a leading zero, 19 digits, a space, another key) is decoded
  // the full way. Every result equals the reference's.
  auto usage_event = [](int stream, const std::string& usage) {
    return R"({"id":"chatcmpl-)" + std::to_string(1000 + stream) +
           R"(","object":"chat.completion.chunk","created":)" + std::to_string(1700000000 + stream) +
           R"(,"model":"m","choices":[],"usage":)" + usage + "}";
  };
  auto stream_events = [&](int stream, const std::string& usage) {
    const std::string env = R"({"id":"chatcmpl-)" + std::to_string(1000 + stream) +
                            R"(","object":"chat.completion.chunk","created":)" + std::to_string(1700000000 + stream) +
                            R"(,"model":"m","choices":[{"index":0,"delta":)";
    return std::vector<std::string>{env + R"({"role":"assistant","content":""}}]})",
                                    env + R"({"content":"Hi"}}]})", env + R"({},"finish_reason":"stop"}]})",
                                    usage_event(stream, usage)};
  };
  auto openai = [](const std::string& p, const std::string& c, const std::string& t, const std::string& cached = "0",
                   const std::string& reasoning = "0") {
    return R"({"prompt_tokens":)" + p + R"(,"completion_tokens":)" + c + R"(,"total_tokens":)" + t +
           R"(,"prompt_tokens_details":{"cached_tokens":)" + cached +
           R"(,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":)" + reasoning +
           R"(,"audio_tokens":7,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}})";
  };
  struct Case {
    const char* name;
    std::vector<std::string> usages;  // one stream each
    std::vector<bool> from_counts;    // per stream: its usage chunk from the template
  };
  const std::vector<Case> cases = {
      {"new counts",
       {openai("19", "40", "59"), openai("7", "1", "8"), openai("123456", "654321", "777777", "1024", "512"),
        openai("0", "0", "0"), openai("999999999999999999", "1", "2")},
       {false, true, true, true, true}},
      {"not digits alone (each odd one between two that match)",
       {openai("19", "40", "59"), openai("-1", "40", "59"), openai("20", "40", "60"), openai("1.5", "40", "59"),
        openai("21", "40", "61"), openai("019", "40", "59"), openai("22", "40", "62"), openai("1e2", "40", "59"),
        openai("23", "40", "63"), openai("1000000000000000000", "1", "2"), openai("24", "40", "64"),
        openai("19 ", "40", "59"), openai("25", "40", "65")},
       {false, false, true, false, true, false, true, false, true, false, true, false, true}},
      {"a shape that changes (a new template at the second odd one in a row)",
       {openai("19", "40", "59"), R"({"prompt_tokens":3,"completion_tokens":4})",
        R"({"prompt_tokens":5,"completion_tokens":6})", R"({"prompt_tokens":7,"completion_tokens":8})"},
       {false, false, false, true}},
      {"a count given twice (the last wins), a cost, a field no count reads",
       {R"({"prompt_tokens":1,"prompt_tokens":19,"completion_tokens":4,"total_tokens":23,"cost":0.5,"x":3})",
        R"({"prompt_tokens":2,"prompt_tokens":29,"completion_tokens":5,"total_tokens":34,"cost":0.5,"x":99})",
        R"({"prompt_tokens":2,"prompt_tokens":29,"completion_tokens":5,"total_tokens":34,"cost":0.25,"x":99})"},
       {false, true, false}},
  };
  for (const Case& k : cases) {
    INFO("case: " << k.name);
    detail::ChunkPrefix prefix;
    ChatCompletionChunk c;
    for (std::size_t n = 0; n < k.usages.size(); ++n) {
      prefix.reset();
      const std::vector<std::string> docs = stream_events(static_cast<int>(n), k.usages[n]);
      for (std::size_t i = 0; i < docs.size(); ++i) {
        INFO("stream " << n << " event " << i << ": " << docs[i]);
        const std::uint64_t hits = prefix.counts_keeping.hits;
        const std::string ev = padded(docs[i]);
        const Decoded got = tuned(ev, c, &prefix);
        const Decoded want = reference(ev);
        REQUIRE(describe(got.failure) == describe(want.failure));  // (a leading zero is invalid JSON)
        if (!want.failure) CHECK(got.chunk == want.chunk);
        CHECK(prefix.counts_keeping.hits - hits == (i + 1 == docs.size() && k.from_counts[n] ? 1u : 0u));
      }
    }
  }
}

TEST_CASE("decode_chunk's template: every \\u escape and surrogate pair like simdjson") {
  const std::string head = R"({"id":"c","choices":[{"index":0,"delta":{"content":")";
  const std::string tail = R"("},"finish_reason":null}]})";
  detail::ChunkPrefix prefix;
  prefix.last_full = true;  // as after an event decoded the full way: a template is made
  ChatCompletionChunk c;
  const Decoded first = tuned(padded(head + "x" + tail), c, &prefix);
  REQUIRE(prefix.slots.size() == 1);
  std::size_t valid = 0, invalid = 0;
  auto check = [&](const std::string& body) {
    const std::string m = head + body + tail;
    const std::string ev = padded(m);
    REQUIRE(templated(prefix, m));
    const Decoded want = reference(ev);
    detail::ChunkPrefix kept = prefix;
    const Decoded got = tuned(ev, c, &kept);
    INFO("body: " << body);
    REQUIRE(describe(got.failure) == describe(want.failure));
    REQUIRE(got.chunk == want.chunk);
    ++(want.failure ? invalid : valid);
  };
  for (unsigned u = 0; u <= 0xFFFF; ++u) check(fmt::format("\\u{:04x}", u));
  for (unsigned hi = 0xD800; hi <= 0xDBFF; hi += 1) {
    for (unsigned lo : {0xDC00u, 0xDFFFu, 0xDBFFu, 0xE000u, 0xD7FFu, 0x0041u, 0xD800u})
      check(fmt::format("\\u{:04X}\\u{:04x}", hi, lo));
  }
  for (unsigned lo = 0xDC00; lo <= 0xDFFF; lo += 1) check(fmt::format("\\ud83d\\u{:04X}", lo));
  for (const char* bad : {"\\uD83D\\u", "\\uD83D\\uDE0", "\\uD83D\\uDE0g", "\\uD83D\\\\uDE00", "\\uD83D \\uDE00",
                          "\\uD83Du\\uDE00", "\\uG000", "\\u-001", "\\u+001", "\\u 001", "\\u0x01"})
    check(bad);
  CHECK(valid > 60000);
  CHECK(invalid > 3000);
}
