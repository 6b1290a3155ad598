#include "json_writer.h"

#include <simdjson.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

using taotoken::detail::JsonWriter;

namespace {
std::string json_quote(std::string_view s) {
  std::string out;
  JsonWriter::append_quoted(out, s);
  return out;
}

// Parses `json` and returns the string value (to prove the escape round-trips).
std::string parse_string(const std::string& json) {
  simdjson::dom::parser p;
  return std::string(std::string_view(p.parse(json)));
}
}  // namespace

TEST_CASE("JSON strings escape quotes, backslashes and control characters") {
  CHECK(json_quote("plain") == "\"plain\"");
  CHECK(json_quote("a\"b") == R"("a\"b")");
  CHECK(json_quote("a\\b") == R"("a\\b")");
  CHECK(json_quote("\n\r\t\b\f") == R"("\n\r\t\b\f")");
  CHECK(json_quote(std::string_view("\0", 1)) == R"("\u0000")");
  CHECK(json_quote("\x01\x1f") == R"("\u0001\u001f")");
  CHECK(json_quote("\x7f") == "\"\x7f\"");  // DEL is legal in JSON strings
  CHECK(json_quote("/") == "\"/\"");
}

TEST_CASE("JSON strings pass UTF-8 through unchanged") {
  const std::string s = "h\xC3\xA9llo \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x91\x8B \xE2\x80\xA8";
  CHECK(json_quote(s) == "\"" + s + "\"");
  CHECK(parse_string(json_quote(s)) == s);
}

TEST_CASE("every byte below 0x20 round-trips through a JSON parser") {
  std::string all;
  for (int c = 0; c < 0x20; ++c) all.push_back(static_cast<char>(c));
  all += "\"\\ end";
  CHECK(parse_string(json_quote(all)) == all);
}

TEST_CASE("the writer places commas and colons correctly") {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.key("a").number(std::int64_t{1});
  w.key("b").begin_array().string("x").number(2.5).boolean(true).null().begin_object().end_object().end_array();
  w.key("c").begin_object().key("d").raw("[1,2]").end_object();
  w.key("e").number(std::numeric_limits<std::int64_t>::min());
  w.end_object();
  CHECK(out == R"({"a":1,"b":["x",2.5,true,null,{}],"c":{"d":[1,2]},"e":-9223372036854775808})");
  simdjson::dom::parser p;
  CHECK(p.parse(out).error() == simdjson::SUCCESS);
}

TEST_CASE("doubles are written in their shortest round-trip form; non-finite become null") {
  std::string out;
  JsonWriter w(out);
  w.begin_array().number(0.1).number(1e21).number(0.7).number(std::numeric_limits<double>::quiet_NaN());
  w.number(std::numeric_limits<double>::infinity()).end_array();
  CHECK(out == "[0.1,1e+21,0.7,null,null]");
}
