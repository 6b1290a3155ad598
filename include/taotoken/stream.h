#ifndef TAOTOKEN_STREAM_H
#define TAOTOKEN_STREAM_H

/// @file
/// Streaming types: the chunks of a `"stream": true` chat completion
/// (`CreateChatCompletionStreamResponse`) and the pull-style `ChatStream`.

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/result.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// A fragment of a tool call; fragments with the same `index` are one call.
struct ToolCallDelta {
  int index = 0;
  std::optional<std::string> id;
  std::optional<std::string> type;
  std::optional<std::string> name;
  /// A piece of the arguments text (concatenate in order).
  std::string arguments;
};

/// The change one chunk brings to one choice.
struct ChoiceDelta {
  int index = 0;
  std::optional<std::string> role;
  std::optional<std::string> content;
  std::optional<std::string> refusal;
  /// `reasoning_content` or `reasoning`, when the upstream sends either.
  std::optional<std::string> reasoning;
  std::vector<ToolCallDelta> tool_calls;
  std::optional<std::string> finish_reason;
  /// This chunk's `logprobs` object as raw JSON.
  std::optional<std::string> logprobs_json;
};

/// One `chat.completion.chunk` event.
struct ChatCompletionChunk {
  std::string id;
  std::string object;
  std::int64_t created = 0;
  std::string model;
  /// Often empty: the usage chunk, keep-alive chunks.
  std::vector<ChoiceDelta> choices;
  /// Set on the chunk that carries usage (usually the last one).
  std::optional<Usage> usage;
  std::optional<std::string> system_fingerprint;
  std::optional<std::string> provider;
  /// The event's data exactly as received.
  std::string raw_json;
};

/// Called for each chunk of a stream, on the calling thread. Return false to
/// cancel the stream (the call then fails with `cancelled`, and the partial
/// completion is in `Error::partial`). Exceptions thrown here are caught,
/// the transfer is stopped, and the exception is rethrown from the call.
using ChunkCallback = std::function<bool(const ChatCompletionChunk&)>;

/// Receives a forwarded stream's response as it arrives (see
/// `TaotokenClient::forward_stream`). Called on the calling thread.
struct ForwardSink {
  /// The status line and headers, once, before any body byte.
  std::function<void(int status, const std::vector<Header>& headers)> on_start;
  /// Body bytes exactly as received; return false to stop (`cancelled`).
  std::function<bool(std::string_view bytes)> on_data;
};

/// Pull-style streaming: `for (auto& chunk : stream) { … }`.
///
/// Each element is a `Result<ChatCompletionChunk>`; iteration ends after
/// the last chunk, or after one failed element carrying the error. After the
/// loop, `result()` gives the assembled completion (or the error).
/// Destroying the stream early cancels the transfer and waits for the call
/// to end (its usage record is written by then). The call runs on the
/// client's event loop: a pull stream adds no thread.
///
/// Thread safety: one thread at a time; movable, not copyable. Not on the
/// client's loop thread (an async callback): there `next()` and `result()`
/// return an `invalid_argument` error instead of waiting for themselves.
class ChatStream {
 public:
  class Impl;
  explicit ChatStream(std::unique_ptr<Impl> impl);
  ChatStream(ChatStream&&) noexcept;
  ChatStream& operator=(ChatStream&&) noexcept;
  ~ChatStream();

  /// The next chunk; `std::nullopt` at the end. After an error element,
  /// returns `std::nullopt`.
  std::optional<Result<ChatCompletionChunk>> next();
  /// The assembled completion, once the stream ended (drains it if needed).
  Result<ChatCompletion> result();

  class iterator {
   public:
    using value_type = Result<ChatCompletionChunk>;
    using difference_type = std::ptrdiff_t;
    using pointer = value_type*;
    using reference = value_type&;
    using iterator_category = std::input_iterator_tag;
    iterator() = default;
    explicit iterator(ChatStream* s) : s_(s) { ++*this; }
    reference operator*() { return *current_; }
    pointer operator->() { return &*current_; }
    iterator& operator++() {
      current_ = s_->next();
      if (!current_) s_ = nullptr;
      return *this;
    }
    bool operator==(const iterator& o) const { return s_ == o.s_; }
    bool operator!=(const iterator& o) const { return s_ != o.s_; }

   private:
    ChatStream* s_ = nullptr;
    std::optional<value_type> current_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

 private:
  std::unique_ptr<Impl> impl_;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_STREAM_H
