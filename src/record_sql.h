#ifndef TAOTOKEN_SRC_RECORD_SQL_H
#define TAOTOKEN_SRC_RECORD_SQL_H

// What the SQLite and PostgreSQL recorders share: the columns of the
// `requests` table, a record's values for them (as text, NULL as nullopt)
// and the way back from a row to a RequestRecord.

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "taotoken/usage.h"

namespace simdjson {
namespace dom {
class parser;
}  // namespace dom
}  // namespace simdjson

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

// The schema both recorders create and migrate to (taotoken_schema.version).
inline constexpr int kSchemaVersion = 2;

// The error for a database whose schema is newer than this library's
// (empty when `version` is one it knows).
std::string newer_schema_error(int version);

// Column order of inserts and selects.
inline constexpr std::array<const char*, 25> kRecordColumns = {
    "request_id",    "upstream_request_id", "started_at",      "started_ms",     "endpoint",
    "requested_model", "model",             "provider",        "streamed",       "status",
    "http_status",   "error_kind",          "error_message",   "attempts",       "attempts_json",
    "latency_ms",    "ttft_ms",             "prompt_tokens",   "completion_tokens", "total_tokens",
    "cached_tokens", "reasoning_tokens",    "estimated_cost",  "upstream_cost",  "tags_json"};
// request_summary is stored too (column 26) but not read back into summaries.

// One column's value, typed, as a prepared statement binds it. Text points
// into the record or the scratch buffers it was built with.
struct SqlValue {
  enum Type { null, integer, real, text } type = null;
  std::int64_t i = 0;
  double d = 0;
  std::string_view s;
  SqlValue() = default;
  explicit SqlValue(std::int64_t v) : type(integer), i(v) {}
  explicit SqlValue(double v) : type(real), d(v) {}
  explicit SqlValue(std::string_view v) : type(text), s(v) {}
};
// kRecordColumns followed by request_summary.
using RecordColumns = std::array<SqlValue, kRecordColumns.size() + 1>;
// The text a record's columns are built into (kept between records, so a
// writer reuses the buffers).
struct RecordScratch {
  std::string attempts_json, tags_json, started_at;
};

// The record's values for kRecordColumns followed by request_summary; valid
// while `r` and `scratch` are unchanged.
void record_columns(const RequestRecord& r, RecordScratch& scratch, RecordColumns& out);

// A row as text (NULL as nullopt), as read back.
using SqlValues = std::vector<std::optional<std::string>>;

// Sets `slot` to `text` (NULL: nullptr) reusing its buffer.
inline void set_value(std::optional<std::string>& slot, const char* text) {
  if (!text) slot.reset();
  else if (slot) slot->assign(text);
  else slot.emplace(text);
}

// Reads rows (kRecordColumns, in that order) back into records, keeping
// its JSON parser between rows. Every field of `out` is set, so one record
// can be reused for every row.
class RowReader {
 public:
  RowReader();
  ~RowReader();
  RowReader(const RowReader&) = delete;
  RowReader& operator=(const RowReader&) = delete;
  void read(const SqlValues& row, RequestRecord& out);

 private:
  std::unique_ptr<simdjson::dom::parser> parser_;
};


// WHERE clause (possibly empty) for a time window over started_ms, and its
// arguments; `marker(n)` spells the n-th parameter ("?" or "$n").
struct WindowClause {
  std::string where;
  std::vector<std::int64_t> args;
};
WindowClause window_clause(const UsageQuery& query, std::string (*marker)(int));


// `hook`, or one that prints "taotoken: <recorder> recorder: <message>" on stderr.
RecorderErrorHook error_hook_or_stderr(RecorderErrorHook hook);

// "a, b, c" of kRecordColumns plus request_summary.
std::string insert_column_list();

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif
