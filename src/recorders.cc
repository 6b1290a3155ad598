#include "taotoken/recorders.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

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

// Shared by the recorder and its writer thread: a writer stuck in a write
// (a hung network file system) is left behind at destruction, after
// `drain_timeout`, and frees the state when it finally returns.
class JsonlRecorder::Impl : public std::enable_shared_from_this<JsonlRecorder::Impl> {
 public:
  Impl(std::string path, JsonlOptions options, RecorderErrorHook on_error)
      : path_(std::move(path)), opts_(std::move(options)), on_error_(std::move(on_error)) {
    fd_ = open_file();
    if (fd_ < 0)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("cannot open usage log '{}': {}", path_, std::strerror(errno)));
    struct stat st {};
    // Rotating renames the path: only a regular file's. Never a device, a
    // FIFO (as root that would replace /dev/null with a regular file) or a
    // symbolic link (/dev/stdout is one; the link itself would be renamed).
    if (::fstat(fd_, &st) == 0 && !S_ISREG(st.st_mode)) rotates_ = false;
    if (::lstat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) rotates_ = false;
    if (rotates_ && ::stat(path_.c_str(), &st) == 0) {
      size_ = static_cast<std::size_t>(st.st_size);
      // A file left from an earlier day rotates at the first record.
      day_ = utc_day(std::chrono::system_clock::from_time_t(st.st_mtime));
    }
    if (size_ == 0) day_ = utc_day(opts_.now());
    // A write's worth: 64 KiB, or less when the pending limit is small (the
    // writer must not wait for more than may be pending).
    write_bytes_ = std::max<std::size_t>(1, std::min(kWriteBytes, opts_.max_pending_bytes / 2));
  }

  void start() {
    writer_ = std::thread([self = shared_from_this()] { self->run(); });
  }

  // Drains (bounded by drain_timeout) and stops the writer.
  void stop() {
    flush();
    bool drained;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      drained = done_ >= appended_;
    }
    cv_.notify_all();
    if (drained) {
      writer_.join();
      return;
    }
    // Stuck in a write: it exits when that returns, but the hook (and what
    // it captured) may be gone by then, so it is not called again. Waits
    // for a hook call in progress.
    {
      std::lock_guard<std::mutex> lock(hook_mu_);
      hook_off_ = true;
    }
    writer_.detach();
  }

  ~Impl() {
    if (fd_ >= 0) ::close(fd_);
  }

  void record(const RequestRecord& record) {
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

    std::unique_lock<std::mutex> lock(mu_);
    if (pending_bytes_ + line.size() > opts_.max_pending_bytes && pending_bytes_ > 0) cv_.notify_one();
    if (pending_bytes_ + line.size() > opts_.max_pending_bytes && pending_bytes_ > 0 &&
        !space_cv_.wait_for(lock, opts_.full_queue_wait, [&] {
          return pending_bytes_ == 0 || pending_bytes_ + line.size() <= opts_.max_pending_bytes;
        })) {
      ++dropped_;
      lock.unlock();
      report("the writer is too far behind: a usage record was dropped (a slow or stuck disk?)");
      return;
    }
    // The UTC day is formatted only when the clock leaves the one known
    // (gmtime_r and strftime per record cost a measurable share of it).
    bool new_day = false;
    if (opts_.daily && rotates_) {
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
    const bool rotate = rotates_ && size_ > 0 &&
                        (new_day || (opts_.max_bytes > 0 && size_ + line.size() > opts_.max_bytes));
    if (rotate) size_ = 0;
    // A rotation starts a new segment: the writer renames the file between
    // the segments, in order.
    if (pend_n_ == 0 || rotate) {
      if (pend_n_ == pend_.size()) pend_.emplace_back();
      Segment& seg = pend_[pend_n_++];
      seg.bytes.clear();
      seg.lines = 0;
      seg.rotate_before = rotate;
    }
    Segment& seg = pend_[pend_n_ - 1];
    seg.bytes.append(line);
    ++seg.lines;
    size_ += line.size();
    const bool was_empty = pending_bytes_ == 0;
    pending_bytes_ += line.size();
    appended_ += line.size();
    // Wake the writer to start its 200 ms clock, and when a write's worth
    // is there; in between it is waiting for one of the two anyway.
    if (was_empty || (pending_bytes_ >= write_bytes_ && pending_bytes_ - line.size() < write_bytes_))
      cv_.notify_one();
  }

  void flush() {
    std::unique_lock<std::mutex> lock(mu_);
    // From the error hook on the writer thread: waiting for the writer
    // would wait for itself.
    if (std::this_thread::get_id() == writer_id_) return;
    const std::uint64_t target = appended_;
    ++flushing_;
    cv_.notify_one();
    done_cv_.wait_for(lock, opts_.drain_timeout, [&] { return done_ >= target; });
    --flushing_;
  }

  std::size_t dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_;
  }

 private:
  struct Segment {
    std::string bytes;
    std::size_t lines = 0;
    bool rotate_before = false;
  };
  static constexpr std::size_t kWriteBytes = std::size_t{64} << 10;

  int open_file() const { return ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644); }

  // The hook, unless it is off (after a destruction that left a stuck
  // writer behind) or this thread is already inside it (a hook that
  // records or flushes must not recurse).
  void report(const std::string& message) {
    if (!on_error_) return;
    thread_local bool in_hook = false;
    if (in_hook) return;
    std::lock_guard<std::mutex> lock(hook_mu_);
    if (hook_off_) return;
    in_hook = true;
    try {
      on_error_("jsonl", message);
    } catch (...) {
    }
    in_hook = false;
  }

  // The writer thread: takes every pending segment at once and writes it.
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    writer_id_ = std::this_thread::get_id();
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || pending_bytes_ > 0; });
      if (pending_bytes_ == 0) return;  // stopping, and everything is written
      // Lines are handed to the OS at least every 200 ms, or as soon as a
      // write's worth is there, or for flush() and shutdown.
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return stopping_ || flushing_ > 0 || pending_bytes_ >= write_bytes_; });
      std::swap(pend_, work_);
      const std::size_t n = pend_n_;
      const std::uint64_t taken = pending_bytes_;
      pend_n_ = 0;
      pending_bytes_ = 0;
      space_cv_.notify_all();
      lock.unlock();
      std::size_t lost = 0;
      for (std::size_t i = 0; i < n; ++i) {
        Segment& seg = work_[i];
        if (seg.rotate_before) rotate();
        const std::size_t written = write_all(seg.bytes);
        if (written < seg.bytes.size()) lost += seg.lines - complete_lines(seg.bytes, written);
        // Keep the buffer for the next round, but not a huge one.
        if (seg.bytes.capacity() > (std::size_t{1} << 20)) std::string().swap(seg.bytes);
      }
      lock.lock();
      dropped_ += lost;
      done_ += taken;
      done_cv_.notify_all();
    }
  }

  // Lines wholly in the first `n` bytes of `bytes`.
  static std::size_t complete_lines(const std::string& bytes, std::size_t n) {
    return static_cast<std::size_t>(std::count(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n), '\n'));
  }

  // Writes everything (retrying short writes); on an error, reports it and
  // returns how much was written. A line cut by the error does not stay
  // cut: a regular file is truncated back to its last whole line, anything
  // else gets the line ended before the next write.
  std::size_t write_all(const std::string& bytes) {
    if (fd_ < 0) {
      fd_ = open_file();
      if (fd_ < 0) {
        report(fmt::format("cannot open '{}': {}", path_, std::strerror(errno)));
        return 0;
      }
    }
    if (cut_line_) {
      if (::write(fd_, "\n", 1) != 1) {
        report(fmt::format("write to '{}' failed: {}", path_, std::strerror(errno)));
        return 0;
      }
      cut_line_ = false;
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t w = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : 0;
        const std::size_t cut = done - (done == 0 ? 0 : bytes.rfind('\n', done - 1) + 1);
        if (cut > 0) {
          const off_t end = rotates_ ? ::lseek(fd_, 0, SEEK_END) : -1;
          if (end < 0 || ::ftruncate(fd_, end - static_cast<off_t>(cut)) != 0) cut_line_ = true;
        }
        report(fmt::format("write to '{}' failed: {}", path_, err ? std::strerror(err) : "no progress"));
        return done;
      }
      done += static_cast<std::size_t>(w);
    }
    return done;
  }

  // Writer thread only.
  void rotate() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (opts_.keep <= 0) {
      std::remove(path_.c_str());
    } else {
      std::remove(fmt::format("{}.{}", path_, opts_.keep).c_str());
      for (int i = opts_.keep - 1; i >= 1; --i)
        std::rename(fmt::format("{}.{}", path_, i).c_str(), fmt::format("{}.{}", path_, i + 1).c_str());
      // The older files may not exist; this one does: its failure is news.
      if (std::rename(path_.c_str(), (path_ + ".1").c_str()) != 0)
        report(fmt::format("cannot rotate '{}': {} (it keeps growing)", path_, std::strerror(errno)));
    }
    fd_ = open_file();
    if (fd_ < 0) report(fmt::format("cannot reopen '{}': {}", path_, std::strerror(errno)));
  }

  const std::string path_;
  const JsonlOptions opts_;
  const RecorderErrorHook on_error_;
  bool rotates_ = true;  // false for a path that is not a regular file
  int fd_ = -1;          // the writer's (the constructor opens it before the writer starts)
  bool cut_line_ = false;  // the writer's: a failed write left a line without its end
  std::size_t write_bytes_ = kWriteBytes;
  std::mutex hook_mu_;
  bool hook_off_ = false;  // guarded by hook_mu_

  mutable std::mutex mu_;
  std::condition_variable cv_, space_cv_, done_cv_;
  // Guarded by mu_: the callers' side.
  std::size_t size_ = 0;  // the current file's size, as the lines queued so far will make it
  std::string day_;       // the UTC day of the current file
  std::chrono::system_clock::time_point day_start_{std::chrono::system_clock::time_point::max()};
  std::vector<Segment> pend_;  // pend_[0, pend_n_) waits for the writer
  std::size_t pend_n_ = 0;
  std::size_t pending_bytes_ = 0;
  std::uint64_t appended_ = 0, done_ = 0;  // bytes queued / written (or lost) in all
  std::size_t dropped_ = 0;
  int flushing_ = 0;
  bool stopping_ = false;
  std::thread::id writer_id_;
  std::vector<Segment> work_;  // the writer's (swapped with pend_ under mu_)
  std::thread writer_;
};

JsonlRecorder::JsonlRecorder(std::string path, JsonlOptions options, RecorderErrorHook on_error)
    : impl_(std::make_shared<Impl>(std::move(path), std::move(options), std::move(on_error))) {
  impl_->start();
}
JsonlRecorder::~JsonlRecorder() { impl_->stop(); }
void JsonlRecorder::record(const RequestRecord& record) { impl_->record(record); }
void JsonlRecorder::flush() { impl_->flush(); }
std::size_t JsonlRecorder::dropped() const { return impl_->dropped(); }

TAOTOKEN_END_NAMESPACE
