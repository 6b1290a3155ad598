#ifndef TAOTOKEN_SRC_SSE_H
#define TAOTOKEN_SRC_SSE_H

// An incremental Server-Sent Events decoder (WHATWG HTML "event stream
// interpretation"): input may be split at any byte; LF, CRLF and CR end
// lines (a CR at the end of one feed and an LF at the start of the next are
// one line end); comments, `event:`, `id:`, `retry:` and unknown fields;
// multi-line `data:` joined with "\n"; one leading space stripped; a UTF-8
// BOM at the start ignored. Each byte is scanned once: partial lines are
// kept in a buffer that only grows by what arrives.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

struct SseEvent {
  std::string_view type;  // "message" when no event: field was given
  std::string_view data;
  std::string_view id;
};

class SseDecoder {
 public:
  // SseEvent::data of a dispatched event is followed by at least this many
  // readable bytes (its buffer's spare capacity).
  static constexpr std::size_t kPadding = 64;

  // Feeds bytes; calls `on_event(const SseEvent&)` for each complete event.
  // The handler returns false to stop: feed() returns false and ignores the
  // rest of the input from then on.
  template <typename Handler>
  bool feed(std::string_view bytes, Handler&& on_event);

  // Back to a fresh decoder's state, keeping the buffers' capacity (a
  // recycled decoder allocates nothing for the next stream).
  void reset() noexcept {
    line_.clear();
    data_.clear();
    event_type_.clear();
    last_id_.clear();
    has_data_ = after_cr_ = stopped_ = false;
    bom_checked_ = 0;
    empty_events_ = 0;
    retry_ms_ = -1;
  }
  // The bytes its buffers hold on to (whether it is worth recycling).
  std::size_t retained_bytes() const noexcept {
    return line_.capacity() + data_.capacity() + event_type_.capacity() + last_id_.capacity();
  }

  // At end of input: true when an event or a line was left incomplete (the
  // stream was cut). The incomplete event's data, as far as it got, is in
  // pending_data() (e.g. a final "data: [DONE]" without its blank line).
  bool has_unterminated_tail() const noexcept { return !line_.empty() || has_data_; }
  std::string pending_data() const;

  // Events that had a data field but produced nothing to dispatch (empty
  // data); the caller counts events it chose to ignore itself.
  std::size_t empty_events() const noexcept { return empty_events_; }
  std::int64_t retry_ms() const noexcept { return retry_ms_; }
  const std::string& last_event_id() const noexcept { return last_id_; }

 private:
  // Processes one complete line; returns false if the handler stopped.
  template <typename Handler>
  bool line(std::string_view l, Handler& on_event);

  std::string line_;        // partial line carried between feeds
  std::string data_;        // data buffer of the event being built
  std::string event_type_;  // event type buffer
  std::string last_id_;
  bool has_data_ = false;   // a data field was seen in this event
  bool after_cr_ = false;   // the previous feed ended with CR
  bool stopped_ = false;
  int bom_checked_ = 0;     // bytes of the start inspected for a BOM (0..3)
  std::size_t empty_events_ = 0;
  std::int64_t retry_ms_ = -1;
};

template <typename Handler>
bool SseDecoder::feed(std::string_view in, Handler&& on_event) {
  if (stopped_) return false;
  // Strip a UTF-8 BOM at the very start, even when split across feeds.
  static constexpr char kBom[] = "\xEF\xBB\xBF";
  while (bom_checked_ < 3 && !in.empty()) {
    if (in.front() != kBom[bom_checked_]) {
      // Not a BOM after all: give back the bytes we swallowed.
      if (bom_checked_ > 0) line_.append(kBom, static_cast<std::size_t>(bom_checked_));
      bom_checked_ = 3;
      break;
    }
    ++bom_checked_;
    in.remove_prefix(1);
  }
  if (after_cr_ && !in.empty()) {
    after_cr_ = false;
    if (in.front() == '\n') in.remove_prefix(1);
  }
  const char* p = in.data();
  const char* end = p + in.size();
  // Most streams end lines with LF alone: one pass over the whole input
  // finds out, and then no line needs its own search for a CR.
  const bool has_cr = !in.empty() && std::memchr(p, '\r', in.size()) != nullptr;
  while (p < end) {
    // memchr finds line ends at memory speed; a CR can only end the line
    // early, so it is searched for only before the next LF.
    const char* eol = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    if (!eol) eol = end;
    if (has_cr)
      if (const void* cr = std::memchr(p, '\r', static_cast<std::size_t>(eol - p))) eol = static_cast<const char*>(cr);
    if (eol == end) {
      line_.append(p, static_cast<std::size_t>(end - p));
      break;
    }
    // The common event, one `data:` line and a blank line, whole in this
    // input and followed by kPadding more bytes of it: dispatched from the
    // input itself, without copying the data or a second line search.
    // Exactly what the two line() calls would do.
    if (line_.empty() && !has_data_ && event_type_.empty() && eol - p >= 5 && std::memcmp(p, "data:", 5) == 0) {
      const char* blank_end = nullptr;  // just past the blank line
      if (*eol == '\n') {
        if (end - eol > 1 && eol[1] == '\n') blank_end = eol + 2;
      } else if (end - eol > 3 && eol[1] == '\n' && eol[2] == '\r' && eol[3] == '\n') {
        blank_end = eol + 4;
      }
      if (blank_end && end - blank_end >= static_cast<std::ptrdiff_t>(kPadding)) {
        const char* v = p + 5;
        if (v < eol && *v == ' ') ++v;
        if (v == eol) {
          ++empty_events_;
        } else if (!on_event(SseEvent{"message", std::string_view(v, static_cast<std::size_t>(eol - v)), last_id_})) {
          stopped_ = true;
          return false;
        }
        p = blank_end;
        continue;
      }
    }
    bool ok;
    if (line_.empty()) {
      ok = line(std::string_view(p, static_cast<std::size_t>(eol - p)), on_event);
    } else {
      line_.append(p, static_cast<std::size_t>(eol - p));
      std::string l;
      l.swap(line_);
      ok = line(l, on_event);
      l.clear();
      if (line_.empty()) line_.swap(l);  // keep the capacity
    }
    if (!ok) {
      stopped_ = true;
      return false;
    }
    if (*eol == '\r') {
      if (eol + 1 == end) {
        after_cr_ = true;
        p = end;
        break;
      }
      if (eol[1] == '\n') ++eol;
    }
    p = eol + 1;
  }
  return true;
}

template <typename Handler>
bool SseDecoder::line(std::string_view l, Handler& on_event) {
  if (l.empty()) {
    // Dispatch.
    if (!has_data_) {
      event_type_.clear();
      return true;
    }
    has_data_ = false;
    if (data_.empty()) {
      ++empty_events_;
      event_type_.clear();
      return true;
    }
    data_.pop_back();  // the "\n" after the last data line
    // Room after the data so a JSON parser may read ahead (simdjson needs
    // 64 bytes): the event can then be parsed in place, without a copy.
    if (data_.capacity() < data_.size() + kPadding) data_.reserve(data_.size() + kPadding);
    if (data_.empty()) {
      ++empty_events_;
      event_type_.clear();
      return true;
    }
    SseEvent ev{event_type_.empty() ? std::string_view("message") : std::string_view(event_type_), data_, last_id_};
    const bool go_on = on_event(ev);
    data_.clear();
    event_type_.clear();
    return go_on;
  }
  if (l.front() == ':') return true;  // comment
  std::string_view field = l, value;
  if (auto colon = l.find(':'); colon != std::string_view::npos) {
    field = l.substr(0, colon);
    value = l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  // Length first, then a constant-size memcmp the compiler inlines
  // (string_view's == calls an out-of-line compare() on every line).
  auto is = [&field](const char* name, std::size_t n) {
    return field.size() == n && std::memcmp(field.data(), name, n) == 0;
  };
  if (is("data", 4)) {
    data_.append(value);
    data_.push_back('\n');
    has_data_ = true;
  } else if (is("event", 5)) {
    event_type_.assign(value);
  } else if (is("id", 2)) {
    if (value.find('\0') == std::string_view::npos) last_id_.assign(value);
  } else if (is("retry", 5)) {
    if (!value.empty() && value.find_first_not_of("0123456789") == std::string_view::npos && value.size() < 12)
      retry_ms_ = std::stoll(std::string(value));
  }
  return true;
}

inline std::string SseDecoder::pending_data() const {
  std::string out = data_;
  if (!line_.empty()) {
    std::string_view l = line_;
    if (l.substr(0, 5) == "data:") {
      l.remove_prefix(5);
      if (!l.empty() && l.front() == ' ') l.remove_prefix(1);
      out.append(l);
      return out;
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_SSE_H
