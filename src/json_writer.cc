#include "json_writer.h"

#include <charconv>
#include <cmath>
#include <cstring>

#include <simdjson.h>

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

void JsonWriter::separator() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (depth_ > 0) {
    const std::uint64_t bit = std::uint64_t{1} << (depth_ > 64 ? 63 : depth_ - 1);
    if (has_element_ & bit) out_.push_back(',');
    has_element_ |= bit;
  }
}

void JsonWriter::open_container() {
  ++depth_;
  if (depth_ <= 64) has_element_ &= ~(std::uint64_t{1} << (depth_ - 1));
}

JsonWriter& JsonWriter::begin_object() {
  separator();
  out_.push_back('{');
  open_container();
  return *this;
}

JsonWriter& JsonWriter::end_object() {
  out_.push_back('}');
  --depth_;
  return *this;
}

JsonWriter& JsonWriter::begin_array() {
  separator();
  out_.push_back('[');
  open_container();
  return *this;
}

JsonWriter& JsonWriter::end_array() {
  out_.push_back(']');
  --depth_;
  return *this;
}

JsonWriter& JsonWriter::key(std::string_view name) {
  separator();
  append_string(out_, name, ':');
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::key_lit(std::string_view name) {
  separator();
  append_unchecked(out_, name, ':');
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::string(std::string_view s) {
  separator();
  append_string(out_, s, 0);
  return *this;
}

JsonWriter& JsonWriter::number(std::int64_t v) {
  separator();
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out_.append(buf, r.ptr);
  return *this;
}

JsonWriter& JsonWriter::number(double v) {
  separator();
  if (!std::isfinite(v)) {
    out_.append("null");
    return *this;
  }
  // Shortest representation that round-trips.
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out_.append(buf, r.ptr);
  return *this;
}

JsonWriter& JsonWriter::boolean(bool v) {
  separator();
  out_.append(v ? "true" : "false");
  return *this;
}

JsonWriter& JsonWriter::null() {
  separator();
  out_.append("null");
  return *this;
}

JsonWriter& JsonWriter::raw(std::string_view json) {
  separator();
  out_.append(json);
  return *this;
}

namespace {
// Bytes that need escaping in a JSON string: control characters, quote, backslash.
constexpr bool needs_escape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }
struct EscapeTable {
  bool v[256];
  constexpr EscapeTable() : v() {
    for (int c = 0; c < 256; ++c) v[c] = needs_escape(static_cast<unsigned char>(c));
  }
};
constexpr EscapeTable kEscape;

// How many leading bytes of `s` need no escaping.
std::size_t clean_prefix(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size() && !kEscape.v[static_cast<unsigned char>(s[i])]) ++i;
  return i;
}
}  // namespace

void JsonWriter::append_quoted(std::string& out, std::string_view s) { append_string(out, s, 0); }

void JsonWriter::append_string(std::string& out, std::string_view s, char then) {
  // One scan: text that needs no escaping (ids, model names, keys) is
  // copied at once; otherwise escaping starts where the scan stopped.
  const std::size_t clean = clean_prefix(s);
  if (clean == s.size()) {
    append_unchecked(out, s, then);
    return;
  }
  append_escaped(out, s, clean);
  if (then) out.push_back(then);
}

void JsonWriter::append_unchecked(std::string& out, std::string_view s, char then) {
  // One append (each std::string call costs more than copying a key):
  // short text is quoted on the stack first.
  char buf[128];
  const std::size_t n = s.size();
  if (n + 3 <= sizeof buf) {
    buf[0] = '"';
    std::memcpy(buf + 1, s.data(), n);
    buf[n + 1] = '"';
    buf[n + 2] = then;
    out.append(buf, n + (then ? 3 : 2));
    return;
  }
  out.push_back('"');
  out.append(s.data(), n);
  out.push_back('"');
  if (then) out.push_back(then);
}

void JsonWriter::append_escaped(std::string& out, std::string_view s, std::size_t clean) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out.push_back('"');
  out.append(s.data(), clean);
  const char* p = s.data() + clean;
  const char* const end = s.data() + s.size();
  while (p < end) {
    // The common case: a run of bytes that need no escape, copied at once.
    const char* run = p;
    while (p < end && !kEscape.v[static_cast<unsigned char>(*p)]) ++p;
    out.append(run, static_cast<std::size_t>(p - run));
    if (p == end) break;
    const auto c = static_cast<unsigned char>(*p++);
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
        out.append(esc, sizeof esc);
      }
    }
  }
  out.push_back('"');
}

void sanitize_utf8(std::string& s) {
  if (simdjson::validate_utf8(s.data(), s.size())) return;
  std::string out;
  out.reserve(s.size() + 8);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && p + len <= end;
    for (int i = 1; ok && i < len; ++i) ok = (p[i] & 0xC0) == 0x80;
    if (ok && len > 1) ok = simdjson::validate_utf8(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
    if (ok) {
      out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
      p += len;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      ++p;
    }
  }
  s.swap(out);
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE
