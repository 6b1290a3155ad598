#ifndef TAOTOKEN_SRC_CODEC_H
#define TAOTOKEN_SRC_CODEC_H

// Request encoding (JsonWriter) and response decoding (simdjson DOM).
// Pure functions: no I/O, no globals besides per-thread parser buffers.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/chat.h"
#include "taotoken/error.h"
#include "taotoken/result.h"
#include "taotoken/stream.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

// Encodes a request body. `default_model` fills an empty `request.model`;
// `stream` adds `"stream":true` (and stream_options). Fails with
// invalid_argument for invalid raw JSON fragments, duplicate extra fields,
// or text that is not valid UTF-8.
// In stream mode, an unset request.stream_options becomes
// {"include_usage": include_usage} so streamed calls are costed too.
Result<std::string> encode_chat_request(const ChatRequest& request, std::string_view default_model,
                                        bool stream, bool include_usage = true);

// Checks that `json` is exactly one valid JSON value.
std::optional<std::string> validate_json(std::string_view json);

// Decodes a 2xx chat-completion body. `body` must have SIMDJSON_PADDING
// bytes of spare capacity (see ensure_padding). An `error` object at the
// top level makes it a failure (aggregators report upstream errors in 200s).
Result<ChatCompletion> decode_chat_completion(std::string& body);

// Decodes one stream event's data (padded like above). A top-level `error`
// object is returned in `in_stream_error` (the chunk is still decoded: its
// choices may carry a finish_reason). Logprobs content/refusal elements are
// appended raw to the given vectors (per choice index) when non-null.
Result<ChatCompletionChunk> decode_chunk(std::string& data, std::optional<Error>& in_stream_error);

// What decode_chunk keeps of a stream's chunk for the next: the bytes of
// its leading members up to the top-level comma in front of the first
// `choices`, `usage` or `error` member (id, object, created, model,
// system_fingerprint... which the chunks of a stream repeat byte for
// byte), and the envelope fields those members decoded to. An event that
// starts with the same bytes followed by a key is decoded from '{' + the
// rest alone. `bytes` is empty when there is nothing to reuse (a first
// chunk, one that failed, one that starts with choices).
//
// It also keeps the template of the "same shape, new string" path: the
// last event with such strings (below) decoded the full way
// (chunk.raw_json) right after another one decoded the full way, with
// what it decoded to, and the string values in it that each set exactly
// one chunk field (a delta's content, refusal or reasoning, a tool call's
// arguments). An
// event that differs from it only inside one of those strings, and whose
// new string is one simdjson accepts, decodes to that chunk with the field
// replaced: no parse at all (see decode_chunk in codec.cc).
struct ChunkPrefix {
  std::string bytes;
  std::string id, object, model;
  std::int64_t created = 0;
  std::optional<std::string> system_fingerprint, provider;
  std::string scratch;  // '{' + the rest of the event, padded

  // A string value of the template event that sets one field.
  struct StringSlot {
    enum Field : std::uint8_t { content, refusal, reasoning, arguments };
    std::size_t open = 0, close = 0;  // its bytes between the quotes: [open, close)
    std::uint32_t choice = 0;         // chunk.choices[choice]
    std::uint32_t tool = 0;           // .tool_calls[tool] (arguments only)
    Field field = content;
  };
  ChatCompletionChunk chunk;  // the template event (raw_json) and its decoding
  std::vector<StringSlot> slots;  // empty: no template
  std::vector<StringSlot> found;  // (find_slots' output, swapped in when it is a template)
  bool last_full = false;         // the last event was decoded the full way (a template is made only then)
  std::string unescaped;  // the new string, when it has escapes

  // The "same event again" path: the last event without slots that ended
  // a choice (a finish chunk: the same bytes in every stream of a model
  // but for the prefix) and its decoding. An event equal to it decodes to
  // its chunk. Empty raw_json: none.
  ChatCompletionChunk repeat;

  // The "same shape, new counts" path: the last event decoded the full way
  // after the prefix that carried usage and no string slots (a stream's
  // usage chunk), and its integer literals that each set one count of the
  // usage or nothing (found by decoding the event with each changed: see
  // make_counts() in codec.cc). An event equal to it but for the digits of
  // those literals decodes to its chunk with the counts set from them.
  struct NumberSlot {
    enum Field : std::uint8_t { prompt, completion, total, cached, reasoning, none };
    std::size_t open = 0, close = 0;  // the literal's bytes in counts.raw_json
    Field field = none;
  };
  ChatCompletionChunk counts;  // empty raw_json: none
  std::vector<NumberSlot> number_slots;
  std::size_t counts_prefix = 0;

  // When the counts and first-event templates are made again: one that
  // matched before is kept through one odd event and replaced at the
  // second in a row; after a few made (or tried) without a match, a shape
  // that keeps changing is let go.
  struct Keeping {
    int misses = 0;          // events of its kind it did not match since the last hit (or since it was made)
    int made = 0;            // templates made (or tried) since the last hit
    std::uint64_t hits = 0;  // events decoded from it (for tests)
    // An event of the template's kind was decoded the full way: whether to
    // make the template from it (`none`: there is none yet).
    bool make_from(bool none, int max_made) noexcept {
      if (!none) ++misses;
      if ((!none && misses < 2) || made >= max_made) return false;
      ++made;
      misses = 0;
      return true;
    }
    void hit() noexcept {
      misses = made = 0;
      ++hits;
    }
  };
  Keeping counts_keeping;

  // The "first event" path: a stream's first event (the one that makes the
  // prefix) decoded the full way, with the scalar values of its prefix's
  // members that each set one envelope field, or nothing (probed like the
  // counts': see make_first() in codec.cc). A first event equal to it but
  // for those values (strings simdjson accepts, integers of at most 18
  // digits) decodes to its chunk with those fields, and makes the prefix
  // from its own bytes.
  struct ScalarSlot {
    enum class Field : std::uint8_t { id, object, model, fingerprint, provider, created, none };
    std::size_t open = 0, close = 0;  // the string's bytes between its quotes, or the integer's digits
    Field field = Field::none;
    bool string = false;
  };
  ChatCompletionChunk first;  // empty raw_json: none
  std::vector<ScalarSlot> first_slots;
  std::size_t first_prefix = 0;  // the length of its prefix
  Keeping first_keeping;
  std::vector<std::string> first_values;  // (new strings with escapes, unescaped)

  // All these templates outlive a stream (reset() keeps them). When one was
  // decoded after a prefix whose members set every envelope field it has
  // (its later members set none), `*_prefix` is that prefix's length in
  // its raw_json (else 0), and a new prefix replaces it: its bytes go in
  // front of the rest, its envelope into the chunk (rebase() in codec.cc).
  // So a stream's first content and finish chunks come from the templates
  // of the stream before, as the chunks after them do.
  std::size_t chunk_prefix = 0, repeat_prefix = 0;

  // Which decode came from the slot template: `hit` is the template's
  // generation (it changes with the template: made or moved) when the last
  // event decoded here did, else 0, and `hit_slot` the slot it filled.
  // A consumer that keeps a copy of such a chunk knows the next one with
  // the same generation and slot differs from it only in that slot's field
  // and raw_json.
  std::uint64_t generation = 0, hit = 0;
  std::size_t hit_slot = 0;
  // After a hit: the slot's new string (a view into the event, or into
  // `unescaped`), valid until the next decode.
  std::string_view hit_value;

  int rebases = 0;  // prefixes of this stream the templates were moved onto

  // For the next stream: forgets the prefix, keeps the templates.
  void reset() noexcept {
    bytes.clear();
    last_full = false;
    hit = 0;
    rebases = 0;
  }
};

// The same into an existing chunk (its string buffers are reused), parsing
// in place: `padded` must be followed by SIMDJSON_PADDING readable bytes.
// `prefix` (may be null) is the stream's ChunkPrefix: the result is the
// same with or without it, only faster.
std::optional<Error> decode_chunk(std::string_view padded, ChatCompletionChunk& out,
                                  std::optional<Error>& in_stream_error, ChunkPrefix* prefix);
// The same, with the failure put in `error` (then false): the streaming
// hot path makes no std::optional<Error> per event (each one was a
// 416-byte zeroing).
// `held`: `out` is what the last call with this prefix left in it (the
// same object, or an equal one), but for the hit slot's field and raw_json
// when that call was a template hit (ChunkPrefix::hit). A template hit on
// the same slot then writes only those two - or neither, when `deferred`
// is given: then *deferred is set, and the caller writes them when it
// needs them (set_slot_field with ChunkPrefix::hit_value, and `padded`).
bool decode_chunk_into(std::string_view padded, ChatCompletionChunk& out, std::optional<Error>& in_stream_error,
                       ChunkPrefix* prefix, std::optional<Error>& error, bool held = false, bool* deferred = nullptr);

// The field a slot of the template decides (it is set in `c`), and the
// same set to `value`.
std::string& slot_text(ChatCompletionChunk& c, const ChunkPrefix::StringSlot& slot);
void set_slot_field(ChatCompletionChunk& c, const ChunkPrefix::StringSlot& slot, std::string_view value);

// Decodes the data of an `event: error` (an error object, bare or wrapped).
Error decode_stream_error(std::string& data);

// Decodes `GET /models`.
Result<std::vector<Model>> decode_models(std::string& body);

// Builds the Error for a non-2xx response: kind from the status, details
// from a JSON error body, or an excerpt of an HTML/text body.
Error decode_error_response(int status, std::string_view content_type, std::string& body);

// Parses the server's wait request: `retry-after-ms` (milliseconds), else
// `Retry-After` as seconds (fractions allowed) or an HTTP date.
std::optional<std::chrono::milliseconds> parse_retry_after(const std::string* retry_after_ms,
                                                           const std::string* retry_after);

// Adds `"model":<default_model>` to a JSON object body that has no top-level
// "model" key; validates the body. Returns the body to send.
// `model_out`, when given, receives the model the body names (or the default).
Result<std::string> fill_default_model(std::string_view body, std::string_view default_model,
                                       std::string* model_out = nullptr);

// The ErrorKind for an HTTP status >= 400.
ErrorKind kind_for_status(int status) noexcept;

// `e` with another kind and message and every other field kept (an
// Error's message is fixed when it is made). Must name every field of
// Error.
Error reworded(Error e, ErrorKind kind, std::string message);

// Grows capacity so simdjson may read SIMDJSON_PADDING bytes past the end.
void ensure_padding(std::string& s);

// A short, printable excerpt of a text body, cut on a UTF-8 boundary.
std::string excerpt(std::string_view body, std::size_t max_bytes = 200);

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_SRC_CODEC_H
