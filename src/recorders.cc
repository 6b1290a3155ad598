#include "taotoken/recorders.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>

TAOTOKEN_BEGIN_NAMESPACE

// ---- memory

// A long-running process must not grow: percentiles from a 10 000-sample
// reservoir per group, at most 1 000 groups per breakdown.
MemoryRecorder::MemoryRecorder(std::size_t capacity)
    : capacity_(capacity == 0 ? 1 : capacity), summary_(10000, 1000) {}

void MemoryRecorder::record(const RequestRecord& record) {
  std::lock_guard<std::mutex> lock(mu_);
  // Once full, the oldest record is overwritten in place: its strings keep
  // their buffers, so recording does not allocate.
  if (ring_.size() < capacity_) ring_.push_back(record);
  else ring_[next_] = record;
  next_ = (next_ + 1) % capacity_;
  summary_.add(record);
  ++count_;
}

std::vector<RequestRecord> MemoryRecorder::recent(std::size_t n) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RequestRecord> out;
  out.reserve(std::min(n, ring_.size()));
  // Newest first: backwards from the slot before next_, wrapping around.
  for (std::size_t i = 0; i < ring_.size() && out.size() < n; ++i)
    out.push_back(ring_[(next_ + ring_.size() - 1 - i) % ring_.size()]);
  return out;
}

UsageSummary MemoryRecorder::summary() const {
  std::lock_guard<std::mutex> lock(mu_);
  return summary_.build();
}

std::size_t MemoryRecorder::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

// ---- JSONL

namespace {

std::string utc_day(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

}  // namespace

JsonlRecorder::JsonlRecorder(std::string path, JsonlOptions options, RecorderErrorHook on_error)
    : path_(std::move(path)), opts_(std::move(options)), on_error_(std::move(on_error)) {
  file_ = std::fopen(path_.c_str(), "ab");
  if (!file_)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("cannot open usage log '{}': {}", path_, std::strerror(errno)));
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 16);
  struct stat st {};
  // Rotating renames the path: never a device or a FIFO (as root that
  // would replace /dev/null with a regular file).
  if (::fstat(::fileno(file_), &st) == 0 && !S_ISREG(st.st_mode)) rotates_ = false;
  if (rotates_ && ::stat(path_.c_str(), &st) == 0) {
    size_ = static_cast<std::size_t>(st.st_size);
    // A file left from an earlier day rotates at the first record.
    day_ = utc_day(std::chrono::system_clock::from_time_t(st.st_mtime));
  }
  if (size_ == 0) day_ = utc_day(opts_.now());
}

JsonlRecorder::~JsonlRecorder() {
  if (file_) std::fclose(file_);
}

void JsonlRecorder::rotate_locked() {
  if (file_) std::fclose(file_);
  file_ = nullptr;
  if (opts_.keep <= 0) {
    std::remove(path_.c_str());
  } else {
    std::remove(fmt::format("{}.{}", path_, opts_.keep).c_str());
    for (int i = opts_.keep - 1; i >= 1; --i)
      std::rename(fmt::format("{}.{}", path_, i).c_str(), fmt::format("{}.{}", path_, i + 1).c_str());
    std::rename(path_.c_str(), (path_ + ".1").c_str());
  }
  file_ = std::fopen(path_.c_str(), "ab");
  size_ = 0;
  if (file_) std::setvbuf(file_, nullptr, _IOFBF, 1 << 16);
  if (!file_ && on_error_) on_error_("jsonl", fmt::format("cannot reopen '{}': {}", path_, std::strerror(errno)));
}

void JsonlRecorder::record(const RequestRecord& record) {
  // Formatted outside the lock, into a buffer each thread keeps between
  // records. Taken out of the thread's slot while in use (an error hook
  // may record to another JSONL file on this thread) and put back after,
  // unless a giant record grew it.
  thread_local std::string kept;
  std::string line;
  line.swap(kept);
  struct PutBack {
    std::string& line;
    ~PutBack() {
      if (line.capacity() <= (std::size_t{1} << 20) && kept.capacity() < line.capacity()) kept.swap(line);
    }
  } put_back{line};
  line.clear();
  record.append_json(line);
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(mu_);
  // The UTC day is formatted only when the clock leaves the one known
  // (gmtime_r and strftime per record cost a measurable share of it).
  bool new_day = false;
  if (opts_.daily) {
    const auto now = opts_.now();
    if (now < day_start_ || now >= day_start_ + std::chrono::hours(24)) {
      const std::string today = utc_day(now);
      new_day = today != day_;
      day_ = today;
      const auto secs = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
      const auto day_index = secs / 86400 - (secs % 86400 < 0 ? 1 : 0);
      day_start_ = std::chrono::system_clock::time_point(std::chrono::seconds(day_index * 86400));
    }
  }
  if (rotates_ &&
      ((new_day && size_ > 0) || (opts_.max_bytes > 0 && size_ > 0 && size_ + line.size() > opts_.max_bytes)))
    rotate_locked();
  if (!file_) {
    file_ = std::fopen(path_.c_str(), "ab");
    if (file_) std::setvbuf(file_, nullptr, _IOFBF, 1 << 16);
    if (!file_) {
      if (on_error_) on_error_("jsonl", fmt::format("cannot open '{}': {}", path_, std::strerror(errno)));
      return;
    }
  }
  // Buffered: a write(2) per record would cost more than the record. The
  // buffer goes to the OS every 200 ms, on flush() and on destruction.
  const auto now = std::chrono::steady_clock::now();
  bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size();
  if (ok && now - last_flush_ >= std::chrono::milliseconds(200)) {
    ok = std::fflush(file_) == 0;
    last_flush_ = now;
  }
  if (!ok) {
    if (on_error_) on_error_("jsonl", fmt::format("write to '{}' failed: {}", path_, std::strerror(errno)));
    return;
  }
  size_ += line.size();
}

void JsonlRecorder::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  if (file_) std::fflush(file_);
}

TAOTOKEN_END_NAMESPACE
