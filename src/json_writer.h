#ifndef TAOTOKEN_SRC_JSON_WRITER_H
#define TAOTOKEN_SRC_JSON_WRITER_H

// A minimal streaming JSON writer for request bodies. It appends to a
// std::string and tracks only whether a comma is needed, so building a body
// costs one pass and no intermediate DOM.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}

  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  // Writes `"name":`; the next call writes the value.
  JsonWriter& key(std::string_view name);
  // The same for a name known to need no escaping (a literal in our code):
  // no scan of its bytes.
  JsonWriter& key_lit(std::string_view name);
  JsonWriter& string(std::string_view s);
  JsonWriter& number(std::int64_t v);
  JsonWriter& number(double v);  // non-finite values are written as null
  JsonWriter& boolean(bool v);
  JsonWriter& null();
  // Writes already-serialised JSON (the caller has validated it).
  JsonWriter& raw(std::string_view json);

  // Appends `s` as a quoted JSON string. Control characters, quotes and
  // backslashes are escaped; everything else (UTF-8 included) passes through.
  static void append_quoted(std::string& out, std::string_view s);

 private:
  // `"s"` then `then` (unless 0), escaped as needed.
  static void append_string(std::string& out, std::string_view s, char then);
  // `"s"` then `then` (unless 0); `s` needs no escaping.
  static void append_unchecked(std::string& out, std::string_view s, char then);
  // `"s"`, escaped; its first `clean` bytes need none.
  static void append_escaped(std::string& out, std::string_view s, std::size_t clean);
  void separator();
  void open_container();
  std::string& out_;
  // Bit d of `has_element_` is set once the container open at depth d
  // holds an element (no allocation; requests nest far less than 64 deep,
  // deeper containers are tracked as if at depth 63).
  std::uint64_t has_element_ = 0;
  int depth_ = 0;
  bool after_key_ = false;
};

// Replaces every invalid UTF-8 sequence in `s` with U+FFFD, in place (text
// from callers or upstreams headed for a database or a JSON file).
void sanitize_utf8(std::string& s);

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_JSON_WRITER_H
