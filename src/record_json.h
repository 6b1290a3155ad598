#ifndef TAOTOKEN_SRC_RECORD_JSON_H
#define TAOTOKEN_SRC_RECORD_JSON_H

// Pieces of a record's JSON (usage.cc), shared by the JSONL line
// (RequestRecord::append_json) and the database columns (record_columns):
// one writer, so the attempts and tags read the same everywhere.

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "taotoken/usage.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

// `[{"http_status":…,"error":…,"latency_ms":…,"delay_before_ms":…},…]`
void append_attempts_json(std::string& out, const std::vector<AttemptRecord>& attempts);
// `{"key":"value",…}`, keys and values escaped.
void append_tags_json(std::string& out, const std::vector<std::pair<std::string, std::string>>& tags);
// The 24 characters of "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC) into `buf`.
void format_iso8601(std::chrono::system_clock::time_point t, char* buf);

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif
