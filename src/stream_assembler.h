#ifndef TAOTOKEN_SRC_STREAM_ASSEMBLER_H
#define TAOTOKEN_SRC_STREAM_ASSEMBLER_H

// Turns SSE events into chunks and assembles the final completion: content,
// refusal and reasoning concatenated per choice; tool calls merged by index
// (id/type/name from the first delta that has them, arguments appended);
// the last non-null finish_reason; usage from the chunk that carries it
// (the last wins, never summed); `[DONE]` ends the stream; an error object
// or `event: error` fails it; malformed JSON is bad_response.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "codec.h"
#include "sse.h"
#include "taotoken/chat.h"
#include "taotoken/error.h"
#include "taotoken/stream.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

class StreamAssembler {
 public:
  enum class Step { chunk, ignored, done, failed };

  // Handles one SSE event from SseDecoder (whose data is followed by
  // SseDecoder::kPadding readable bytes: chunks are parsed in place).
  // On Step::chunk the decoded chunk is in chunk().
  // After done/failed, further events are ignored (data after [DONE]).
  Step on_event(const SseEvent& ev);

  // At end of input (decoder finished): a final "[DONE]" left without its
  // blank line still counts as done.
  void on_end(const SseDecoder& decoder);

  // The chunk of the last Step::chunk; read it (or take it) before the
  // next event.
  const ChatCompletionChunk& chunk() {
    settle();
    return *chunk_;
  }
  // A consumer may take the object, giving another (never null): it has
  // been merged, and the next event is decoded over whatever the object in
  // its place holds.
  void swap_chunk(std::unique_ptr<ChatCompletionChunk>& other) {
    settle();
    chunk_.swap(other);
    held_ = false;
  }
  // When the last chunk came from the slot template: the template's
  // generation and the slot (see ChunkPrefix::hit), else {0, 0}. The
  // chunks of one generation and slot differ only in that slot's field and
  // raw_json: a consumer that keeps one of them can make the next from
  // hit_slot(), hit_value() and hit_event() alone (without chunk(), whose
  // raw_json is then never written).
  std::pair<std::uint64_t, std::size_t> template_hit() const noexcept {
    return {prefix_.hit, prefix_.hit_slot};
  }
  const ChunkPrefix::StringSlot& hit_slot() const noexcept { return prefix_.slots[prefix_.hit_slot]; }
  // The slot's new string and the event's data (views valid until the next
  // event).
  std::string_view hit_value() const noexcept { return prefix_.hit_value; }
  std::string_view hit_event() const noexcept { return event_; }
  // The bytes of the event after the slot's string (from its closing quote).
  std::size_t hit_tail() const noexcept { return prefix_.chunk.raw_json.size() - hit_slot().close; }
  bool done() const noexcept { return done_; }
  const std::optional<Error>& error() const noexcept { return error_; }
  bool finished() const noexcept { return done_ || error_.has_value(); }
  std::size_t ignored_events() const noexcept { return ignored_; }
  // True once any content, refusal, reasoning or tool-call delta arrived.
  bool has_token() const noexcept { return has_token_; }

  // The completion as assembled so far.
  ChatCompletion assemble() const;

  // Back to a fresh assembler's state for the next stream; the chunk object
  // and the prefix cache keep their buffers, and the templates of the
  // "same shape" paths are kept (they decode any event that matches them
  // exactly; see ChunkPrefix).
  void reset();
  // The bytes its buffers hold on to (whether it is worth recycling).
  std::size_t retained_bytes() const noexcept;

 private:
  struct ToolAcc {
    int index = 0;
    ToolCall call;
  };
  // Text assembled from deltas; keeps its buffer when the assembler is
  // recycled (a recycled one does not grow the answer from nothing again).
  struct Text {
    std::string s;
    bool set = false;
    void add(const std::optional<std::string>& piece) {
      if (!piece) return;
      s += *piece;
      set = true;
    }
    void add(std::string_view piece) {
      s += piece;
      set = true;
    }
    std::optional<std::string> get() const { return set ? std::optional<std::string>(s) : std::nullopt; }
    void clear() noexcept {
      s.clear();
      set = false;
    }
  };
  struct ChoiceAcc {
    int index = 0;
    std::optional<std::string> role, finish_reason;
    Text content, refusal, reasoning;
    std::vector<ToolAcc> tools;
    std::vector<std::string> logprobs_content, logprobs_refusal;
    bool has_logprobs = false;
  };
  void apply(const ChatCompletionChunk& c);
  ChoiceAcc& choice(int index);

  std::unique_ptr<ChatCompletionChunk> chunk_ = std::make_unique<ChatCompletionChunk>();
  bool held_ = false;  // chunk_ is what the last decode left (decode_chunk_into's `held`)
  // The last event was a template hit whose slot field and raw_json are
  // still to be written into chunk_ (decode_chunk_into's `deferred`): left
  // to the first reader, as a consumer of hits may never need them.
  bool deferred_ = false;
  std::string_view event_;  // the last event's data
  void settle() {
    if (deferred_) {
      set_slot_field(*chunk_, prefix_.slots[prefix_.hit_slot], prefix_.hit_value);
      chunk_->raw_json.assign(event_);
      deferred_ = false;
    }
  }
  // Merges a deferred hit without the chunk, when the template is one
  // choice whose only text is the slot's (the chunks before it, of the
  // same template and slot, merged everything else already); false: not
  // such a template.
  bool apply_hit();
  std::uint64_t simple_generation_ = 0;  // the template generation `simple_` is about
  bool simple_ = false;
  ChunkPrefix prefix_;  // the last chunk's leading members, for the next
  std::string scratch_;
  std::vector<ChoiceAcc> choices_;  // the first n_choices_ are this stream's (the rest are kept for reuse)
  std::size_t n_choices_ = 0;
  std::string id_, object_ = "chat.completion", model_;
  std::int64_t created_ = 0;
  std::optional<std::string> fingerprint_, provider_;
  std::optional<Usage> usage_;
  std::optional<Error> error_;
  std::optional<Error> in_stream_, chunk_error_;  // decode_chunk_into's outputs, kept empty between events
  bool done_ = false;
  bool has_token_ = false;
  std::size_t ignored_ = 0;
};

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_STREAM_ASSEMBLER_H
