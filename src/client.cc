#include "taotoken/client.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "codec.h"
#include "json_writer.h"
#include "record_sql.h"
#include "sse.h"
#include "stream_assembler.h"
#include "transport.h"

TAOTOKEN_BEGIN_NAMESPACE

using detail::HttpRequest;
using detail::HttpResponse;
using Clock = std::chrono::steady_clock;

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool starts_with_icase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

// True for http(s)://localhost, 127.0.0.0/8 and [::1] base URLs: the only
// ones that may be used without an API key (the simulator, local proxies).
// The host comes from libcurl's own URL parser, so what we judge is what it
// will connect to ("127.0.0.1.example.com" is not loopback).
bool is_loopback_url(const std::string& url) {
  const auto host = detail::url_host(url);
  if (!host) return false;
  if (*host == "localhost" || *host == "::1") return true;
  in_addr addr{};
  if (::inet_pton(AF_INET, host->c_str(), &addr) != 1) return false;
  return (ntohl(addr.s_addr) >> 24) == 127;
}

bool is_token_char(char c) {
  // RFC 9110 tchar.
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// Headers that frame the message or belong to one connection: set by
// libcurl, never by callers (a wrong Content-Length on a kept-alive
// connection would smuggle the rest of the body as a second request).
bool is_reserved_header(std::string_view name) {
  static constexpr std::string_view kReserved[] = {"content-length", "transfer-encoding", "host", "connection",
                                                   "expect", "te", "trailer", "upgrade", "keep-alive",
                                                   "proxy-connection", "proxy-authorization"};
  for (auto r : kReserved)
    if (detail::iequals(name, r)) return true;
  return false;
}

std::optional<Error> check_header(const std::string& name, const std::string& value) {
  if (name.empty()) return Error(ErrorKind::invalid_argument, "a header has an empty name");
  if (is_reserved_header(name))
    return Error(ErrorKind::invalid_argument,
                 fmt::format("header '{}' is managed by the HTTP layer and cannot be set", name));
  for (char c : name)
    if (!is_token_char(c))
      return Error(ErrorKind::invalid_argument, fmt::format("header name '{}' contains an invalid character", name));
  for (char c : value)
    if (c == '\r' || c == '\n' || c == '\0')
      return Error(ErrorKind::invalid_argument,
                   fmt::format("header '{}' has a value containing CR, LF or NUL (header injection)", name));
  return std::nullopt;
}

// Adds a header, replacing any earlier one of the same name: a caller's
// Authorization or Accept wins over the client's instead of being doubled.
void put_header(std::vector<Header>& headers, const Header& h) {
  headers.erase(std::remove_if(headers.begin(), headers.end(), [&](const Header& x) {
                  return detail::iequals(x.first, h.first);
                }),
                headers.end());
  headers.push_back(h);
}

std::optional<Error> check_request_id(const std::string& id) {
  if (id.empty() || id.size() > 128)
    return Error(ErrorKind::invalid_argument, "request_id must have 1 to 128 characters");
  for (char c : id)
    if (c <= 0x20 || c >= 0x7f)
      return Error(ErrorKind::invalid_argument, "request_id must be printable ASCII without spaces");
  return std::nullopt;
}

std::string replace_all(std::string s, std::string_view what, std::string_view with) {
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + with.size())) s.replace(p, what.size(), with);
  return s;
}

}  // namespace

std::string make_request_id() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(),
                      static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id()))};
    return std::mt19937_64(seq);
  }());
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  char suffix[9];
  std::uint64_t r = rng();
  for (char& c : suffix) {
    c = kDigits[r % 36];
    r /= 36;
  }
  return fmt::format("req_{}_{}", ms, std::string_view(suffix, sizeof suffix));
}

// A stream's decoding state: SSE framing, chunk assembly (with its chunk
// and prefix caches), and the body of an upstream that answered with JSON
// instead. Recycled across the streams of one client with its buffers, so a
// stream allocates little of it once the client is warm.
struct StreamDecodeState {
  detail::SseDecoder decoder;
  detail::StreamAssembler assembler;
  std::string json_body;
  void reset() {
    decoder.reset();
    assembler.reset();
    json_body.clear();
  }
  std::size_t retained_bytes() const noexcept {
    return decoder.retained_bytes() + assembler.retained_bytes() + json_body.capacity();
  }
};

// A bounded free list, thread-safe: what one call gives back, a later one
// takes (with the buffers it grew). Streams start and end on the loop
// thread, but what holds a recycled object may be destroyed on any thread.
template <typename T>
class Recycler {
 public:
  // Room for every kept object up front: giving back never allocates, so
  // destructors may give back.
  explicit Recycler(std::size_t max_kept) : max_kept_(max_kept) { kept_.reserve(max_kept); }
  // Moves up to `n` kept objects to the end of `out` (one lock); returns
  // how many.
  std::size_t take(std::vector<T>& out, std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t got = 0;
    for (; got < n && !kept_.empty(); ++got) {
      out.push_back(std::move(kept_.back()));
      kept_.pop_back();
    }
    return got;
  }
  std::optional<T> take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (kept_.empty()) return std::nullopt;
    std::optional<T> t(std::move(kept_.back()));
    kept_.pop_back();
    return t;
  }
  // Keeps the elements of `from` that `worth` accepts while there is room
  // (one lock); clears `from`.
  template <typename Worth>
  void give(std::vector<T>& from, Worth worth) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (T& t : from)
        if (kept_.size() < max_kept_ && worth(t)) kept_.push_back(std::move(t));
    }
    from.clear();
  }
  void give(T t) {
    std::lock_guard<std::mutex> lock(mu_);
    if (kept_.size() < max_kept_) kept_.push_back(std::move(t));
  }

 private:
  std::mutex mu_;
  std::vector<T> kept_;
  const std::size_t max_kept_;
};

class StreamStatePool {
 public:
  using Ptr = std::unique_ptr<StreamDecodeState>;
  Ptr get() {
    if (auto p = kept_.take()) return std::move(*p);
    return std::make_unique<StreamDecodeState>();
  }
  void put(Ptr p) {
    // One that held a giant event or body is not kept. (A kept one is reset
    // when its next stream begins: begin_attempt.)
    if (p && p->retained_bytes() <= kMaxBytes) kept_.give(std::move(p));
  }

 private:
  static constexpr std::size_t kMaxBytes = 256 * 1024;
  Recycler<Ptr> kept_{16};
};

// Per-attempt streaming state plugged into the attempt loop. Runs on the
// loop thread.
struct StreamHooks {
  virtual ~StreamHooks() = default;
  // Resets per-attempt state and installs the body sink on the request.
  virtual void begin_attempt(HttpRequest& req) = 0;
  // True once anything reached the caller: the attempt may not be retried.
  virtual bool delivered() const = 0;
  // A transport failure after delivery (reset, idle timeout, stop) becomes
  // the stream's final error.
  // (After a complete stream, e.g. [DONE] then a reset, it is a success.)
  virtual Result<HttpResponse> after_delivery(Error transport_error) = 0;
};

// An item a synchronous stream hands to its caller: a chunk for its
// callback, or any other call.
struct MailboxEntry {
  enum Kind : std::uint8_t {
    whole,     // `chunk` for `cb`
    snapshot,  // the same, then `chunk` becomes the caller's working chunk
    delta,     // the working chunk with a new slot string and raw_json (in the arena), for `cb`
    call,      // fn()
  };
  MailboxEntry(Kind k, std::unique_ptr<ChatCompletionChunk> c, const ChunkCallback* callback) noexcept
      : chunk(std::move(c)), cb(callback), kind(k) {}
  explicit MailboxEntry(std::function<bool()> f) noexcept : fn(std::move(f)), kind(call) {}
  std::unique_ptr<ChatCompletionChunk> chunk;
  const ChunkCallback* cb = nullptr;
  std::function<bool()> fn;  // false: the caller's callback wants to stop
  // delta: the template's slot, its new string and the new bytes between
  // its quotes in the event, as offsets into the batch's arena, and the
  // event's bytes after those (`tail`; slot.open are in front).
  detail::ChunkPrefix::StringSlot slot;
  std::size_t value_at = 0, value_size = 0, body_at = 0, body_size = 0, tail = 0;
  Kind kind;
};

// Bytes appended and read back by offset (a delta entry's strings): a
// plain buffer, so that an append is a memcpy (a std::string's append is
// a library call that checks more than that).
class ByteArena {
 public:
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return cap_; }
  const char* data() const noexcept { return p_.get(); }
  void clear() noexcept { size_ = 0; }
  void release() noexcept {
    p_.reset();
    size_ = cap_ = 0;
  }
  void append(std::string_view s) {
    if (s.empty()) return;
    if (s.size() > cap_ - size_) grow(size_ + s.size());
    std::memcpy(p_.get() + size_, s.data(), s.size());
    size_ += s.size();
  }
  void swap(ByteArena& o) noexcept {
    p_.swap(o.p_);
    std::swap(size_, o.size_);
    std::swap(cap_, o.cap_);
  }

 private:
  void grow(std::size_t need) {
    const std::size_t cap = std::max({need, cap_ * 2, std::size_t{4096}});
    std::unique_ptr<char[]> p(new char[cap]);
    if (size_ != 0) std::memcpy(p.get(), p_.get(), size_);
    p_ = std::move(p);
    cap_ = cap;
  }
  std::unique_ptr<char[]> p_;
  std::size_t size_ = 0, cap_ = 0;
};

// What the synchronous streams of one client recycle, so that a stream
// allocates nothing for its hand-over once the client is warm:
// - chunk objects: a chunk goes from the loop to the caller by swapping it
//   with a pooled object (no copy), and the pooled objects keep their
//   string buffers from one chunk, and one call, to the next;
// - a mailbox's queues, with their capacity, and the chunk objects its
//   stream used (they go round within the mailbox, under the lock it takes
//   anyway once per batch: no pool lock per batch of chunks).
// Thread-safe.
class ChunkPool {
 public:
  using Ptr = std::unique_ptr<ChatCompletionChunk>;
  static constexpr std::size_t kMaxKept = 256;
  static constexpr std::size_t kMaxKeptBytes = 8 * 1024;  // an object that held a bigger chunk is freed
  static constexpr std::size_t kMaxKeptArena = 256 * 1024;
  struct Queues {
    std::vector<MailboxEntry> items, pending, batch;
    // Chunk objects: the loop side's spares, the caller side's spent ones,
    // and those on their way back (under the mailbox's lock).
    std::vector<Ptr> spares, spent, back;
    // The bytes of delta entries, one per entry queue (they travel together).
    ByteArena pending_arena, items_arena, batch_arena;
  };

  // Adds `n` new objects to `out` (a mailbox whose queues hold too few).
  static void get(std::vector<Ptr>& out, std::size_t n) {
    for (; n > 0; --n) out.push_back(std::make_unique<ChatCompletionChunk>());
  }

  Queues take_queues() {
    if (auto q = queues_.take()) return std::move(*q);
    Queues q;
    for (auto* v : {&q.items, &q.pending, &q.batch}) v->reserve(64);
    for (auto* v : {&q.spares, &q.spent, &q.back}) v->reserve(64);
    return q;
  }
  // The entries must hold no chunk any more. The chunk objects are kept
  // with the queues (as spares), up to kMaxKept that held small chunks.
  void give_back(Queues q) {
    for (auto* v : {&q.items, &q.pending, &q.batch}) v->clear();
    for (auto* a : {&q.pending_arena, &q.items_arena, &q.batch_arena}) {
      a->clear();
      if (a->capacity() > kMaxKeptArena) a->release();
    }
    for (auto* v : {&q.spent, &q.back}) {
      for (Ptr& p : *v)
        if (q.spares.size() < kMaxKept && worth_keeping(*p)) q.spares.push_back(std::move(p));
      v->clear();
    }
    if (q.spares.size() > kMaxKept) q.spares.resize(kMaxKept);
    queues_.give(std::move(q));
  }
  // Whether a spent chunk object is kept (one that held a big chunk is
  // freed: its buffers would stay with the queues).
  static bool worth_keeping(const ChatCompletionChunk& c) noexcept { return c.raw_json.capacity() <= kMaxKeptBytes; }

 private:
  Recycler<Queues> queues_{16};  // concurrent synchronous streams worth keeping for
};

// Hands the callbacks of a synchronous stream from the loop to the calling
// thread, in order. Bounded: when it holds kHigh items, the transfer is
// paused (DataAction::pause) until the caller has run them.
class Mailbox {
 public:
  using Item = std::function<bool()>;  // false: the caller's callback wants to stop
  static constexpr std::size_t kHigh = 256;

  // `stop_reason` (a literal) is what a callback returning false means.
  Mailbox(const char* stop_reason, std::shared_ptr<ChunkPool> pool)
      : pool_(std::move(pool)), q_(pool_->take_queues()), stop_reason_(stop_reason) {}
  ~Mailbox() {
    // Chunks never run (the caller stopped) are kept with the queues.
    for (auto* v : {&pending_, &items_})
      for (Entry& e : *v)
        if (e.chunk) back_.push_back(std::move(e.chunk));
    if (work_) back_.push_back(std::move(work_));
    for (Entry& e : batch_) e.chunk.reset();  // (only a pull stream left early leaves any)
    pool_->give_back(std::move(q_));
  }

  // Loop side (the thread that drives the loop). Items are gathered here
  // without a lock and handed over by kick(), once per batch of bytes.
  bool should_pause() {
    if (n_items_.load(std::memory_order_relaxed) < kHigh) return false;  // (checked again under the lock)
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (items_.size() < kHigh) return false;
      paused_ = true;
    }
    kick();
    return true;
  }
  // The caller's callback asked to stop (or threw).
  bool stopped() const noexcept { return stopped_.load(); }
  // Queues the assembler's chunk for `cb` (null: for next_chunk()).
  // With a callback, most chunks of a stream (those from the assembler's
  // slot template, which differ from the one before only in the slot's
  // string and raw_json) are handed over as the slot's new string and the
  // event's new bytes between its quotes, copied into an arena that
  // travels with the entries: the caller puts them into its working chunk,
  // a copy of the first chunk of that template and slot (handed over whole,
  // as a snapshot). Other chunks, and every chunk of a pull stream, are
  // handed over whole, swapped with a pooled object (whose old contents
  // the decoder overwrites). Nothing is copied but those bytes and, once
  // the pools are warm, nothing allocated.
  void push_chunk(detail::StreamAssembler& a, const ChunkCallback* cb) {
    const auto hit = a.template_hit();
    Entry::Kind kind = Entry::whole;
    if (cb && hit.first != 0) {
      if (hit.first == work_generation_ && hit.second == work_slot_) {
        const std::string_view event = a.hit_event(), value = a.hit_value();
        Entry& e = pending_.emplace_back(Entry::delta, nullptr, cb);
        e.slot = a.hit_slot();
        e.tail = a.hit_tail();
        const std::string_view body = event.substr(e.slot.open, event.size() - e.tail - e.slot.open);
        e.body_at = pending_arena_.size();
        e.body_size = body.size();
        pending_arena_.append(body);
        e.value_size = value.size();
        if (value.data() == body.data()) {
          e.value_at = e.body_at;  // (no escapes: the same bytes)
        } else {
          e.value_at = pending_arena_.size();
          pending_arena_.append(value);
        }
        return;
      }
      kind = Entry::snapshot;
      work_generation_ = hit.first;
      work_slot_ = hit.second;
    }
    if (spares_.empty()) pool_->get(spares_, kSpareBatch);
    ChunkPool::Ptr p = std::move(spares_.back());
    spares_.pop_back();
    a.swap_chunk(p);
    pending_.emplace_back(kind, std::move(p), cb);
  }

  // Queues an item; kick() hands it to the caller.
  void push(Item item) { pending_.emplace_back(std::move(item)); }
  // Hands the queued items to the caller and wakes it (a wake-up per chunk
  // would bounce between the two threads on every chunk).
  void kick() {
    // Nothing new: a caller waiting for items was woken when they came.
    if (pending_.empty()) return;
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      hand_over();
      wake = !items_.empty() && waiting_;
    }
    if (wake) cv_.notify_one();
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      hand_over();
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
  }

  // Caller side: runs the items until close(); `stop(reason)` is called once
  // when an item returns false or throws; `resume()` when a paused transfer
  // may go on. Returns the exception an item threw, if any.
  template <typename Stop, typename Resume>
  std::exception_ptr pump(Stop stop, Resume resume) {
    while (run_batch(/*wait=*/true, stop, resume)) {
    }
    return std::move(thrown_);  // the mailbox may die on another thread: keep no copy
  }

  // Caller side, between rounds it drove itself: runs what is there now.
  template <typename Stop, typename Resume>
  void run_ready(Stop stop, Resume resume) {
    run_batch(/*wait=*/false, stop, resume);
  }

  // The call's result is in (close() ran).
  bool closed() const noexcept { return closed_flag_.load(std::memory_order_acquire); }

  // Driver side: callbacks are waiting to run. (A flag kept with items_,
  // so that the driver's check after every round takes no lock.)
  bool has_items() const noexcept { return has_items_.load(std::memory_order_acquire); }

  // Why the caller stopped the stream (when it did).
  const std::string& last_reason() const noexcept { return last_reason_; }

  // Caller side, pull mode (ChatStream): the next queued chunk, waiting for
  // one; null once the call is over and every chunk was taken. `resume()`
  // as in pump(). Give the object back with spend() when done with it.
  template <typename Resume>
  ChunkPool::Ptr next_chunk(Resume resume) {
    for (;;) {
      while (pull_pos_ < batch_.size()) {
        Entry& e = batch_[pull_pos_++];
        if (e.chunk) return std::move(e.chunk);
      }
      batch_.clear();
      pull_pos_ = 0;
      const bool was_paused = take_batch(/*wait=*/true);
      if (batch_.empty()) return nullptr;  // closed, and nothing left
      if (was_paused) resume_or_stay_paused(resume);
    }
  }
  void spend(ChunkPool::Ptr p) {
    if (p && ChunkPool::worth_keeping(*p)) spent_.push_back(std::move(p));
  }

 private:
  using Entry = MailboxEntry;

  static constexpr std::size_t kSpareBatch = 16;

  // Under mu_: moves the loop side's items to the caller's queue.
  void hand_over() {
    // The chunk objects the caller spent become spares again.
    for (ChunkPool::Ptr& p : back_) spares_.push_back(std::move(p));
    back_.clear();
    if (pending_.empty()) return;
    if (items_.empty()) {
      items_.swap(pending_);
      items_arena_.swap(pending_arena_);
      pending_arena_.clear();
    } else {
      const std::size_t base = items_arena_.size();
      items_arena_.append(std::string_view(pending_arena_.data(), pending_arena_.size()));
      pending_arena_.clear();
      for (Entry& e : pending_) {
        e.body_at += base;
        e.value_at += base;
        items_.push_back(std::move(e));
      }
      pending_.clear();
    }
    n_items_.store(items_.size(), std::memory_order_relaxed);
    has_items_.store(true, std::memory_order_release);
  }

  // Caller side: moves what the loop handed over into batch_ (first
  // waiting for something, or for close(), when `wait`); true when the
  // transfer was paused meanwhile.
  bool take_batch(bool wait) {
    std::unique_lock<std::mutex> lock(mu_);
    if (wait) {
      waiting_ = true;
      cv_.wait(lock, [this] { return !items_.empty() || closed_; });
      waiting_ = false;
    }
    batch_.swap(items_);  // both keep their capacity: no allocation per batch
    batch_arena_.swap(items_arena_);
    items_arena_.clear();
    has_items_.store(false, std::memory_order_release);
    n_items_.store(0, std::memory_order_relaxed);
    // The chunk objects spent since the last batch go back to the loop side.
    for (ChunkPool::Ptr& p : spent_) back_.push_back(std::move(p));
    spent_.clear();
    const bool was_paused = paused_;
    paused_ = false;
    return was_paused;
  }
  // Resumes the paused transfer; if that fails (bad_alloc posting it), it
  // stays marked paused, so the next batch tries again.
  template <typename Resume>
  void resume_or_stay_paused(Resume& resume) {
    try {
      resume();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      paused_ = true;
      throw;
    }
  }

  // Takes the queued items (waiting for some, or for close(), when `wait`)
  // and runs them; false when there was nothing to run.
  template <typename Stop, typename Resume>
  bool run_batch(bool wait, Stop& stop, Resume& resume) {
    if (closed() && !has_items()) return false;  // the end, all run (no lock to learn it)
    const bool was_paused = take_batch(wait);
    if (batch_.empty()) return false;
    // However this ends (a stop or resume relay can throw bad_alloc), the
    // batch is emptied and its chunks freed or pooled: nothing runs twice.
    struct Spend {
      Mailbox& m;
      ~Spend() {
        try {
          for (Entry& e : m.batch_)
            if (e.chunk && ChunkPool::worth_keeping(*e.chunk)) m.spent_.push_back(std::move(e.chunk));
          // (they go back to the loop side with the next batch)
        } catch (...) {
          m.spent_.clear();
        }
        m.batch_.clear();
      }
    } spend{*this};
    for (auto& item : batch_) {
      if (stopped_.load()) break;
      try {
        if (!run(item)) {
          stopped_.store(true);
          last_reason_ = stop_reason_;
          stop(last_reason_);
        }
      } catch (const std::exception& e) {
        thrown_ = std::current_exception();
        stopped_.store(true);
        last_reason_ = fmt::format("stopped by an exception from a callback: {}", e.what());
        stop(last_reason_);
      } catch (...) {
        thrown_ = std::current_exception();
        stopped_.store(true);
        last_reason_ = "stopped by an exception from a callback: a non-standard exception";
        stop(last_reason_);
      }
    }
    if (was_paused) resume_or_stay_paused(resume);
    return true;
  }

  // Caller side: runs one item.
  bool run(Entry& e) {
    switch (e.kind) {
      case Entry::whole:
        return (*e.cb)(*e.chunk);
      case Entry::snapshot: {
        const bool go_on = (*e.cb)(*e.chunk);
        work_.swap(e.chunk);  // (the old working chunk is spent with the entry)
        return go_on;
      }
      case Entry::delta: {
        // The working chunk is this template and slot's first chunk: it
        // differs from this one in the slot's string and raw_json alone.
        ChatCompletionChunk& w = *work_;
        std::string& field = detail::slot_text(w, e.slot);
        // (clear() and append() take about half the steps of assign(),
        // which must allow for overlapping bytes; these never overlap.)
        field.clear();
        field.append(batch_arena_.data() + e.value_at, e.value_size);
        // The event is the template's bytes around the slot's new ones (the
        // working chunk's raw_json is an event of this template and slot).
        w.raw_json.replace(e.slot.open, w.raw_json.size() - e.slot.open - e.tail, batch_arena_.data() + e.body_at,
                           e.body_size);
        return (*e.cb)(w);
      }
      case Entry::call:
        break;
    }
    return e.fn();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<ChunkPool> pool_;
  ChunkPool::Queues q_;  // recycled with their capacity; the names below are its parts
  std::vector<Entry>& items_ = q_.items;
  bool paused_ = false;
  bool closed_ = false;
  std::atomic<bool> closed_flag_{false};  // closed_, read without the lock
  std::atomic<bool> has_items_{false};    // !items_.empty(), read without the lock
  std::atomic<std::size_t> n_items_{0};   // items_.size(), read without the lock
  bool waiting_ = false;  // the caller sleeps on cv_
  std::atomic<bool> stopped_{false};
  const char* stop_reason_;
  std::vector<Entry>& pending_ = q_.pending;             // loop side only
  std::vector<ChunkPool::Ptr>& spares_ = q_.spares;     // loop side only
  std::vector<Entry>& batch_ = q_.batch;                // caller side only
  std::vector<ChunkPool::Ptr>& spent_ = q_.spent;       // caller side only
  std::vector<ChunkPool::Ptr>& back_ = q_.back;         // under mu_
  ByteArena& pending_arena_ = q_.pending_arena;         // loop side only
  ByteArena& items_arena_ = q_.items_arena;             // under mu_
  ByteArena& batch_arena_ = q_.batch_arena;             // caller side only
  std::uint64_t work_generation_ = 0;  // loop side: the template and slot of the caller's working chunk
  std::size_t work_slot_ = 0;
  ChunkPool::Ptr work_;  // caller side: the working chunk of delta entries
  std::size_t pull_pos_ = 0;                             // caller side only (pull mode)
  std::exception_ptr thrown_;  // caller side only
  std::string last_reason_;    // caller side only
};

// The pull-style stream (ChatStream): the call runs on the client's loop
// like an async one; its chunks wait in a mailbox (bounded: a consumer that
// falls behind pauses the transfer) until next() takes them. No thread of
// its own.
class ChatStream::Impl {
 public:
  struct Links {
    std::shared_ptr<const void> client;  // keeps the client (and its loop) alive; first: released last
    std::shared_ptr<Mailbox> mailbox;
    std::shared_ptr<std::optional<Result<ChatCompletion>>> result;  // set before the mailbox closes
    std::function<void(const std::string&)> stop;                  // cancels the call (posted to the loop)
    std::function<void()> resume;                                   // resumes a paused transfer
    std::function<bool()> on_loop_thread;
  };
  explicit Impl(Links links) : l_(std::move(links)) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Destroying the stream cancels the call and waits for it to end (its
  // record is written by then), except on the loop thread, which must not
  // wait for itself: there the call ends after this returns.
  ~Impl() {
    try {
      if (!l_.mailbox->closed()) l_.stop("the pull stream was closed before its end");
      if (!l_.on_loop_thread()) drain();
    } catch (...) {  // (a failed post): the call still ends, at its deadline at the latest
    }
  }

  std::optional<Result<ChatCompletionChunk>> next() {
    if (auto e = loop_thread_error()) {
      // Once, then the end: a range-for on the loop thread must stop.
      if (loop_error_reported_) return std::nullopt;
      loop_error_reported_ = true;
      return Result<ChatCompletionChunk>(std::move(*e));
    }
    if (auto p = l_.mailbox->next_chunk(l_.resume)) {
      Result<ChatCompletionChunk> out(std::move(*p));
      l_.mailbox->spend(std::move(p));
      return out;
    }
    const Result<ChatCompletion>& r = **l_.result;
    if (!r.ok() && !error_reported_) {
      error_reported_ = true;
      return Result<ChatCompletionChunk>(r.error());
    }
    return std::nullopt;
  }

  Result<ChatCompletion> result() {
    if (auto e = loop_thread_error()) return std::move(*e);
    drain();  // the caller wants the end, not the chunks
    return **l_.result;
  }

 private:
  // Takes (and drops) every chunk until the call is over.
  void drain() {
    while (auto p = l_.mailbox->next_chunk(l_.resume)) l_.mailbox->spend(std::move(p));
  }
  // Waiting on the loop thread would wait for itself.
  std::optional<Error> loop_thread_error() const {
    if (!l_.on_loop_thread() || l_.mailbox->closed()) return std::nullopt;
    return Error(ErrorKind::invalid_argument,
                 "a ChatStream was read on its client's event-loop thread (from an async callback); it would wait "
                 "for itself");
  }

  Links l_;
  bool error_reported_ = false;
  bool loop_error_reported_ = false;
};

// Where a synchronous call waits for its result.
template <typename T>
class SyncWait {
 public:
  void set(Result<T> r) {
    // Notified under the lock: the waiter destroys this object as soon as
    // it sees the result.
    std::lock_guard<std::mutex> lock(mu_);
    result_.emplace(std::move(r));
    cv_.notify_one();
  }
  Result<T> get() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return result_.has_value(); });
    return std::move(*result_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Result<T>> result_;
};

// One call in progress, as seen by the client's registry on the loop.
class ExchangeBase {
 public:
  virtual ~ExchangeBase() = default;
  // Loop thread: follows RequestOptions::cancel from now on.
  virtual void watch_cancel() = 0;
  // Loop thread: starts the first attempt (the call got a slot).
  virtual void run() = 0;
  // Loop thread: ends the call now with a cancelled result.
  virtual void cancel_now(std::string reason) = 0;
  // Loop thread: fails the call at once (never started).
  virtual void reject(Error e) = 0;
  // Loop thread: a transfer paused by a full mailbox may go on.
  virtual void resume() = 0;
  // Loop thread: the call now waits for a slot (its deadline keeps running).
  virtual void on_queued() = 0;
  bool finished = false;
  bool holds_slot = false;
  bool queued = false;
  // The client's list of live calls (loop thread only): the list owns them.
  std::shared_ptr<ExchangeBase> owner;
  ExchangeBase* prev = nullptr;
  ExchangeBase* next = nullptr;
};

class TaotokenClient::Impl {
 public:
  // Per-call bookkeeping.
  struct Call {
    explicit Call(const RequestOptions& ro) : id(ro.request_id ? *ro.request_id : make_request_id()) {
      // A per-call Authorization (a proxy passing a tenant's key) is a
      // secret too: errors are scrubbed of it like of the client's key.
      for (const auto& [name, value] : ro.headers)
        if (name.size() == 13 && starts_with_icase(name, "authorization"))
          key = starts_with_icase(value, "bearer ") ? value.substr(7) : value;
    }
    std::chrono::milliseconds elapsed() const {
      return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    }
    Clock::time_point start = Clock::now();
    std::chrono::system_clock::time_point started_at = std::chrono::system_clock::now();
    std::string id;
    std::string key;  // per-call secret to scrub, if any
  };

  static Result<std::shared_ptr<const Impl>> create(ClientOptions o) {
    if (o.base_url.empty()) o.base_url = env_or_empty("TAOTOKEN_BASE_URL");
    if (o.base_url.empty()) o.base_url = kDefaultBaseUrl;
    if (o.api_key.empty()) o.api_key = env_or_empty("TAOTOKEN_API_KEY");
    if (o.default_model.empty()) o.default_model = kDefaultModel;
    if (o.user_agent.empty()) o.user_agent = "taotoken-cpp/" TAOTOKEN_VERSION_STRING;
    while (!o.base_url.empty() && o.base_url.back() == '/') o.base_url.pop_back();
    if (!starts_with_icase(o.base_url, "http://") && !starts_with_icase(o.base_url, "https://"))
      return Error(ErrorKind::invalid_argument,
                   fmt::format("base URL '{}' must start with http:// or https://", o.base_url));
    for (char c : o.base_url)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
        return Error(ErrorKind::invalid_argument, "base URL contains a space or control character");
    for (const auto& [name, value] : o.default_headers)
      if (auto e = check_header(name, value)) return std::move(*e);
    for (char c : o.api_key)
      if (c == '\r' || c == '\n' || c == '\0')
        return Error(ErrorKind::invalid_argument, "the API key contains CR, LF or NUL");
    for (char c : o.user_agent)
      if (c == '\r' || c == '\n' || c == '\0')
        return Error(ErrorKind::invalid_argument, "the user agent contains CR, LF or NUL");
    if (o.connect_timeout.count() <= 0 || o.timeout.count() <= 0)
      return Error(ErrorKind::invalid_argument, "timeouts must be positive");
    if (o.max_response_bytes == 0) return Error(ErrorKind::invalid_argument, "max_response_bytes must be positive");
    if (o.max_connections_per_host < 0)
      return Error(ErrorKind::invalid_argument, "max_connections_per_host must not be negative");
    return std::shared_ptr<const Impl>(new Impl(std::move(o)), &Impl::destroy);
  }

  // The last handle is gone. Every call still in progress is cancelled (it
  // gets its result and record), the loop stops, the recorders are drained
  // so a clean shutdown loses no record, and the Impl is deleted. On the
  // loop thread (a callback dropped the last handle) all of this happens
  // after the callback returns, and the thread exits on its own.
  static void destroy(const Impl* cimpl) {
    auto* impl = const_cast<Impl*>(cimpl);
    impl->shutting_down_.store(true);
    impl->loop_->post([impl] { impl->cancel_all(); });
    if (impl->loop_->on_loop_thread()) {
      impl->loop_->set_exit_hook([impl] {
        impl->flush_recorders();
        delete impl;
      });
      impl->loop_->stop();
      return;
    }
    impl->loop_->stop();
    impl->loop_->join();
    impl->flush_recorders();
    delete impl;
  }

  ~Impl() = default;

  const ClientOptions& options() const noexcept { return opts_; }

  // ---- one call: the attempt loop as a state machine on the loop thread

  // `interpret` turns a response into the result (an error makes the
  // attempt a failure the policy may retry); `give_up` may still turn the
  // last response into a result; `record` writes the usage record; then
  // `finish` gets the result, exactly once.
  // Runs `op` on the exchange, on the loop thread, if the loop and the
  // exchange still exist: how other threads stop or resume a call.
  template <typename Op>
  static void on_loop(const std::weak_ptr<detail::Loop>& loop, std::weak_ptr<ExchangeBase> ex, Op op) {
    if (auto l = loop.lock())
      l->post([ex = std::move(ex), op = std::move(op)] {
        if (auto e = ex.lock()) op(*e);
      });
  }

  template <typename T>
  class Exchange final : public ExchangeBase, public std::enable_shared_from_this<Exchange<T>> {
   public:
    using Interpret = std::function<Result<T>(HttpResponse&)>;
    using GiveUp = std::function<std::optional<T>(HttpResponse&)>;
    using Record = std::function<void(const Call&, const RequestOptions&, const Result<T>&)>;
    using Finish = std::function<void(Result<T>&&, std::exception_ptr)>;

    Exchange(const Impl& impl, RequestOptions options) : call(options), ro(std::move(options)), impl_(impl) {}

    // Set up before submit().
    std::string body;
    HttpRequest req;
    StreamHooks* hooks = nullptr;
    std::shared_ptr<void> keep;  // endpoint state the callbacks point into
    // A synchronous stream's mailbox, which the callbacks above and finish
    // point into (raw pointers: a std::function holding a shared_ptr
    // allocates). Held as long as the exchange, so a callback never outlives it.
    std::shared_ptr<void> mailbox;
    Interpret interpret;
    GiveUp give_up;
    Record record;
    Finish finish;
    std::function<void(Result<T>)> on_done;  // async calls: instead of finish
    std::optional<Error> pre_error;  // the call cannot be sent: fail at admission
    Call call;
    RequestOptions ro;

    void watch_cancel() override {
      if (ro.cancel) {
        std::weak_ptr<Exchange> weak = this->weak_from_this();
        std::weak_ptr<detail::Loop> loop = impl_.loop_;
        cancel_hook_ = ro.cancel->add_hook([weak, loop] {
          on_loop(loop, weak, [](ExchangeBase& e) { e.cancel_now("the caller cancelled the request"); });
        });
      }
    }

    void on_queued() override {
      auto self = this->shared_from_this();
      timer_ = impl_.loop_->add_timer(deadline(), [self] {
        self->timer_ = 0;
        Error e(ErrorKind::timeout,
                fmt::format("total deadline of {} ms exceeded while waiting for a free slot (max_in_flight {})",
                            self->ro.timeout.value_or(self->impl_.opts_.timeout).count(),
                            self->impl_.opts_.max_in_flight));
        self->complete(self->impl_.finish_error(std::move(e), self->call, 0));
      });
    }

    void run() override {
      if (finished) return;
      if (timer_) {  // the queue's deadline timer
        impl_.loop_->cancel_timer(timer_);
        timer_ = 0;
      }
      const auto attempt_limit = ro.attempt_timeout ? ro.attempt_timeout : impl_.opts_.attempt_timeout;
      attempt_limit_ = attempt_limit;
      attempt();
    }

    Clock::time_point deadline() const { return call.start + ro.timeout.value_or(impl_.opts_.timeout); }

    void cancel_now(std::string reason) override {
      if (finished) return;
      cancelled_ = true;
      if (transfer_) {
        const auto id = transfer_;
        impl_.loop_->abort(id, Error(ErrorKind::cancelled, reason));
        if (finished) return;
        transfer_ = 0;  // it had ended already; its result will be ignored
      }
      if (timer_) {
        impl_.loop_->cancel_timer(timer_);
        timer_ = 0;
      }
      Error e(ErrorKind::cancelled, std::move(reason));
      e.attempt_log = std::move(log_);
      complete(impl_.finish_error(std::move(e), call, attempt_));
    }

    void reject(Error e) override { complete(impl_.finish_error(std::move(e), call, 0)); }

    void resume() override {
      if (transfer_) impl_.loop_->resume(transfer_);
    }

    // Any thread; runs record and finish there.
    void complete(Result<T> r) {
      if (finished) return;
      finished = true;
      auto self = this->shared_from_this();  // the registry may hold the last reference
      if (cancel_hook_) ro.cancel->remove_hook(cancel_hook_);
      cancel_hook_ = 0;
      if (impl_.loop_->is_driver()) impl_.on_finished(this);
      if (record && !impl_.opts_.recorders.empty()) record(call, ro, r);
      if (on_done) {
        const std::function<void(Result<T>)> cb = std::move(on_done);
        impl_.deliver_async(cb, std::move(r));
        return;
      }
      Finish f = std::move(finish);
      f(std::move(r), std::move(user_exception_));  // no copy left here: this object may die on another thread
    }

   private:
    void attempt() {
      ++attempt_;
      if (cancelled_ || (ro.cancel && ro.cancel->cancelled()) || impl_.shutting_down_.load()) {
        Error e(ErrorKind::cancelled, impl_.shutting_down_.load() && !cancelled_
                                          ? "the client was destroyed with the call in progress"
                                          : "the caller cancelled the request");
        e.attempt_log = std::move(log_);
        complete(impl_.finish_error(std::move(e), call, attempt_ - 1));
        return;
      }
      const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline() - Clock::now());
      if (remaining.count() <= 0) {
        Error e(ErrorKind::timeout, fmt::format("total deadline of {} ms exceeded before attempt {}",
                                                ro.timeout.value_or(impl_.opts_.timeout).count(), attempt_));
        e.attempt_log = std::move(log_);
        complete(impl_.finish_error(std::move(e), call, attempt_ - 1));
        return;
      }
      req.timeout = attempt_limit_ ? std::min(*attempt_limit_, remaining) : remaining;
      if (hooks) hooks->begin_attempt(req);
      sent_ = Clock::now();
      auto self = this->shared_from_this();
      transfer_ = impl_.loop_->start(req, [self](Result<HttpResponse> r) {
        self->transfer_ = 0;
        self->on_response(std::move(r));
      });
    }

    void fail_by_exception(std::exception_ptr ex) {
      std::string what = "a non-standard exception";
      try {
        std::rethrow_exception(ex);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      user_exception_ = ex;
      Error e(ErrorKind::cancelled, fmt::format("stopped by an exception from a callback: {}", what));
      e.attempt_log = std::move(log_);
      complete(impl_.finish_error(std::move(e), call, attempt_));
    }

    void on_response(Result<HttpResponse> resp) {
      if (finished) return;
      if (!resp && hooks && hooks->delivered()) resp = hooks->after_delivery(std::move(resp.error()));
      AttemptRecord rec;
      rec.delay_before = delay_before_;
      rec.latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - sent_);
      std::string upstream_id;
      std::optional<Result<T>> outcome;
      try {
        if (resp) {
          rec.http_status = resp->status;
          upstream_id = upstream_request_id(resp->headers);
          outcome.emplace(interpret(*resp));
        } else {
          outcome.emplace(std::move(resp.error()));
        }
      } catch (...) {
        log_.push_back(rec);
        fail_by_exception(std::current_exception());
        return;
      }
      if (outcome->ok()) {
        log_.push_back(rec);
        if (impl_.opts_.retry_budget) impl_.opts_.retry_budget->on_success();
        stamp(**outcome, call, attempt_, log_, upstream_id);
        complete(std::move(*outcome));
        return;
      }
      Error& err = outcome->error();
      rec.error = err.kind();
      if (!resp) rec.http_status = err.http_status;
      log_.push_back(rec);

      // (Plain variables rather than an optional: GCC's -O2 flow analysis
      // reports a false "maybe uninitialized" on the optional.)
      bool retry = false;
      std::chrono::milliseconds delay{0};
      try {
        if (!policy_) policy_ = impl_.make_policy(ro);  // made at the first failure only
        if (const auto w = policy_->on_failure(err, attempt_)) {
          retry = true;
          delay = *w;
        }
        if (cancelled_ || impl_.shutting_down_.load()) retry = false;
        if (hooks && hooks->delivered()) retry = false;  // data reached the caller: never retried
        if (retry && Clock::now() + delay >= deadline()) retry = false;  // would cross the deadline
        if (retry && impl_.opts_.retry_budget && !impl_.opts_.retry_budget->try_acquire(err)) retry = false;
        if (!retry) {
          if (resp) {
            if (std::optional<T> passed = give_up(*resp)) {
              stamp(*passed, call, attempt_, log_, upstream_id);
              complete(std::move(*passed));
              return;
            }
          }
          err.attempt_log = std::move(log_);
          complete(impl_.finish_error(std::move(err), call, attempt_, upstream_id));
          return;
        }
        if (impl_.opts_.on_retry) impl_.opts_.on_retry(RetryEvent{call.id, attempt_, &err, delay});
        if (impl_.opts_.sleep_for) impl_.opts_.sleep_for(delay);
      } catch (...) {
        fail_by_exception(std::current_exception());
        return;
      }
      delay_before_ = delay;
      const auto at = impl_.opts_.sleep_for ? Clock::now() : Clock::now() + delay;
      auto self = this->shared_from_this();
      timer_ = impl_.loop_->add_timer(at, [self] {
        self->timer_ = 0;
        self->attempt();
      });
    }

    const Impl& impl_;
    std::optional<std::chrono::milliseconds> attempt_limit_;
    Clock::time_point sent_;
    int attempt_ = 0;
    std::vector<AttemptRecord> log_;
    std::chrono::milliseconds delay_before_{0};
    std::unique_ptr<RetryPolicy> policy_;
    detail::Loop::Id transfer_ = 0;
    detail::Loop::Id timer_ = 0;
    std::uint64_t cancel_hook_ = 0;
    bool cancelled_ = false;
    std::exception_ptr user_exception_;
  };

  // Prepares the HTTP request of an exchange (headers, limits, body).
  template <typename T>
  void prepare(Exchange<T>& ex, HttpRequest::Method method, const std::string& url, bool passthrough,
               bool streaming) const {
    const auto& ro = ex.ro;
    HttpRequest& req = ex.req;
    const auto first_byte = ro.first_byte_timeout ? ro.first_byte_timeout : opts_.first_byte_timeout;
    req.method = method;
    req.url = url;
    req.body = ex.body;
    req.connect_timeout = opts_.connect_timeout;
    req.first_byte_timeout = first_byte.value_or(std::chrono::milliseconds(0));
    req.max_response_bytes = opts_.max_response_bytes;
    // Pass-through (forward): no compression asked for, so the bytes stay as
    // sent, and every response header kept for the caller.
    req.accept_compressed = !passthrough;
    req.all_headers = passthrough;
    if (streaming)
      req.idle_timeout = (ro.idle_timeout ? ro.idle_timeout : opts_.idle_timeout).value_or(std::chrono::milliseconds(0));
    // The client's fixed headers go by reference (the transport caches
    // them) unless this call overrides one of them.
    bool overrides = false;
    for (const auto& h : ro.headers)
      for (const auto& b : base_headers_)
        if (detail::iequals(h.first, b.first)) overrides = true;
    if (overrides) {
      req.headers = base_headers_;
    } else {
      req.base_headers = &base_headers_;
      if (!ro.headers.empty() || opts_.send_request_id) req.headers.reserve(ro.headers.size() + 1);
    }
    if (opts_.send_request_id) put_header(req.headers, {"X-Client-Request-Id", ex.call.id});
    for (const auto& h : ro.headers) put_header(req.headers, h);
  }

  // Hands an exchange to the loop. A call that cannot be posted (the client
  // is going away) fails here, on the calling thread.
  template <typename T>
  void submit(const std::shared_ptr<Exchange<T>>& ex) const {
    std::shared_ptr<ExchangeBase> base = ex;
    if (!shutting_down_.load() && loop_->can_start_now()) {  // a callback starting the next call
      admit(base);
      return;
    }
    if (shutting_down_.load() || !loop_->post([this, base] { admit(base); })) {
      ex->complete(finish_error(Error(ErrorKind::cancelled, "the client is shutting down"), ex->call, 0));
    }
  }

  // Loop thread: a call arrives; it runs now, waits for a slot, or is refused.
  void admit(const std::shared_ptr<ExchangeBase>& op) const {
    if (op->finished) return;
    link_live(op);
    op->watch_cancel();
    if (shutting_down_.load()) {
      op->cancel_now("the client was destroyed with the call in progress");
      return;
    }
    if (opts_.max_in_flight == 0 || in_flight_ < opts_.max_in_flight) {
      ++in_flight_;
      op->holds_slot = true;
      op->run();
    } else if (queued_ < opts_.max_queued) {
      // Calls that ended while queued leave expired entries behind; drop
      // them before they outnumber the live ones.
      if (waiting_.size() > 2 * queued_ + 64)
        waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                      [](const std::weak_ptr<ExchangeBase>& w) {
                                        auto p = w.lock();
                                        return !p || p->finished;
                                      }),
                       waiting_.end());
      waiting_.push_back(op);
      op->queued = true;
      ++queued_;
      op->on_queued();
    } else {
      op->reject(Error(ErrorKind::overloaded,
                       fmt::format("too many calls in progress: {} running (max_in_flight) and {} waiting (max_queued)",
                                   in_flight_, queued_)));
    }
  }

  void link_live(const std::shared_ptr<ExchangeBase>& op) const {
    if (op->owner) return;
    op->owner = op;
    op->prev = nullptr;
    op->next = live_head_;
    if (live_head_) live_head_->prev = op.get();
    live_head_ = op.get();
  }

  std::shared_ptr<ExchangeBase> unlink_live(ExchangeBase* op) const {
    if (!op->owner) return nullptr;
    if (op->prev) op->prev->next = op->next;
    else live_head_ = op->next;
    if (op->next) op->next->prev = op->prev;
    op->prev = op->next = nullptr;
    return std::move(op->owner);
  }

  // Loop thread: a call ended; its slot goes to the next waiting call.
  void on_finished(ExchangeBase* op) const {
    const bool freed = op->holds_slot;
    op->holds_slot = false;
    if (op->queued) {  // ended while waiting for a slot (cancelled, deadline)
      op->queued = false;
      --queued_;
    }
    std::shared_ptr<ExchangeBase> keep = unlink_live(op);  // released on return
    if (!freed) return;
    --in_flight_;
    // One loop hands out the freed slots. A call that ends at once when it
    // gets its slot (deadline passed, already cancelled) comes back here:
    // that inner call only gives its slot back, so thousands of such calls
    // do not nest thousands of frames deep.
    if (handing_out_) return;
    handing_out_ = true;
    struct Reset {
      bool& flag;
      ~Reset() { flag = false; }
    } reset{handing_out_};  // also if run() throws (bad_alloc)
    while (!waiting_.empty() && (opts_.max_in_flight == 0 || in_flight_ < opts_.max_in_flight)) {
      std::shared_ptr<ExchangeBase> next = waiting_.front().lock();
      waiting_.pop_front();
      if (!next || next->finished) continue;
      next->queued = false;
      --queued_;
      ++in_flight_;
      next->holds_slot = true;
      next->run();
    }
  }

  // Loop thread, at shutdown.
  void cancel_all() const {
    std::vector<std::shared_ptr<ExchangeBase>> all;
    for (ExchangeBase* op = live_head_; op; op = op->next) all.push_back(op->owner);
    waiting_.clear();
    for (const auto& op : all) op->cancel_now("the client was destroyed with the call in progress");
  }

  void flush_recorders() const {
    for (const auto& recorder : opts_.recorders) {
      try {
        recorder->flush();
      } catch (const std::exception& e) {
        report_recorder_error("recorder", e.what());
      } catch (...) {
      }
    }
  }

  // A synchronous call made on the loop thread would wait for itself.
  std::optional<Error> reentry_error() const {
    if (!loop_->is_driver()) return std::nullopt;
    return Error(ErrorKind::invalid_argument,
                 "a synchronous call was made on this client's event-loop thread (from an async callback); it "
                 "would wait for itself. Use the *_async form there");
  }

  // Runs a completion callback of an async call where the options say.
  template <typename T>
  void deliver_async(const std::function<void(Result<T>)>& cb, Result<T>&& r) const {
    if (!cb) return;
    if (opts_.callback_executor) {
      try {
        opts_.callback_executor([cb, r = std::move(r)]() mutable { cb(std::move(r)); });
        return;
      } catch (...) {
        std::fputs("taotoken: callback_executor threw; the completion callback was not run\n", stderr);
        return;
      }
    }
    try {
      cb(std::move(r));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "taotoken: an exception escaped a completion callback and was ignored: %s\n", e.what());
    } catch (...) {
      std::fputs("taotoken: an exception escaped a completion callback and was ignored\n", stderr);
    }
  }


  // ---- endpoints: each builds an exchange; the public calls submit it.

  using ChatExchange = Exchange<ChatCompletion>;
  using RawExchange = Exchange<RawResponse>;

  // What chat() and chat_stream() share: checks, the encoded body, the
  // request, no pass-through on giving up, the usage record.
  std::shared_ptr<ChatExchange> new_chat_exchange(const ChatRequest& request, RequestOptions ro, bool stream) const {
    auto ex = std::make_shared<ChatExchange>(*this, std::move(ro));
    if (auto e = precheck(ex->ro, ex->call)) ex->pre_error = std::move(*e);
    auto body = stream ? detail::encode_chat_request(request, opts_.default_model, true, opts_.stream_include_usage)
                       : detail::encode_chat_request(request, opts_.default_model, false);
    if (!body) ex->pre_error = std::move(body.error());
    else ex->body = std::move(*body);
    prepare(*ex, HttpRequest::Method::post, chat_url_, /*passthrough=*/false, /*streaming=*/stream);
    ex->give_up = [](HttpResponse&) -> std::optional<ChatCompletion> { return std::nullopt; };
    if (!opts_.recorders.empty())
      ex->record = [this, stream, model = requested_model(request), summary = summary_of(request)](
                       const Call& call, const RequestOptions& o, const Result<ChatCompletion>& r) {
        emit(call, stream ? "chat_stream" : "chat", model, stream, o, r.ok() ? &*r : nullptr,
             r.ok() ? nullptr : &r.error(), summary);
      };
    return ex;
  }

  std::shared_ptr<ChatExchange> make_chat(const ChatRequest& request, RequestOptions ro) const {
    auto ex = new_chat_exchange(request, std::move(ro), /*stream=*/false);
    ex->interpret = [](HttpResponse& r) -> Result<ChatCompletion> {
      if (r.status < 200 || r.status >= 300) return status_error(r);
      auto decoded = detail::decode_chat_completion(r.body);
      if (!decoded) return success_status_error(std::move(decoded.error()), r);
      decoded->http_status = r.status;
      return decoded;
    };
    return ex;
  }

  // Streaming state of chat_stream, on the loop thread.
  struct ChatStreamHooks final : StreamHooks {
    // The chunk sink reads the chunk (assembler.chunk()) or takes it
    // (swap_chunk, or what a template hit changed): the assembler has merged
    // it already and decodes the next one over whatever is there.
    using ChunkSink = std::function<bool(detail::StreamAssembler&)>;
    ChatStreamHooks(ChunkSink cb, Clock::time_point started, std::size_t max_json_bytes,
                    std::shared_ptr<StreamStatePool> states)
        : on_chunk(std::move(cb)), start(started), max_json(max_json_bytes), pool(std::move(states)),
          state(pool->get()), decoder(state->decoder), assembler(state->assembler), json_body(state->json_body) {}
    ~ChatStreamHooks() override { pool->put(std::move(state)); }
    void begin_attempt(HttpRequest& req) override {
      state->reset();
      json_mode = false;
      req.on_start = [this](int, const std::vector<Header>& headers) {
        const std::string* ct = detail::find_header(headers, "content-type");
        json_mode = ct && ct->find("event-stream") == std::string::npos && ct->find("json") != std::string::npos;
      };
      req.on_data = [this](std::string_view bytes) {
        if (should_pause && should_pause()) return detail::DataAction::pause;
        const bool go_on = json_mode ? collect(bytes) : feed(bytes);
        if (after_data) after_data();
        return go_on ? detail::DataAction::proceed : detail::DataAction::stop;
      };
      complete.store(false);
      req.complete = &complete;
    }
    bool delivered() const override { return delivered_; }
    Result<HttpResponse> after_delivery(Error e) override {
      if (assembler.done() && !user_stopped) {
        HttpResponse ok;  // everything arrived; how the connection ended does not matter
        ok.status = e.http_status ? e.http_status : 200;
        return ok;
      }
      if (user_stopped || e.kind() == ErrorKind::cancelled) {
        Error out(ErrorKind::cancelled, user_stopped ? stop_text() : e.message());
        return with_partial(std::move(out));
      }
      if (e.kind() == ErrorKind::timeout) return with_partial(std::move(e));
      Error cut(ErrorKind::stream_truncated, "the stream was cut before [DONE]: " + e.message());
      cut.http_status = e.http_status;
      return with_partial(std::move(cut));
    }
    bool collect(std::string_view bytes) {
      if (json_body.size() + bytes.size() > max_json) return false;
      json_body.append(bytes);
      return true;
    }
    bool feed(std::string_view bytes) {
      return decoder.feed(bytes, [this](const detail::SseEvent& ev) {
        const auto step = assembler.on_event(ev);
        if (step == detail::StreamAssembler::Step::done || step == detail::StreamAssembler::Step::failed)
          complete.store(true);
        if (step != detail::StreamAssembler::Step::chunk) return true;
        if (!ttft && assembler.has_token())
          ttft = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
        delivered_ = true;
        try {
          if (on_chunk && !on_chunk(assembler)) {
            user_stopped = true;
            return false;
          }
        } catch (const std::exception& e) {
          user_exception = std::current_exception();
          stop_reason = fmt::format("stopped by an exception from a callback: {}", e.what());
          user_stopped = true;
          return false;
        } catch (...) {
          user_exception = std::current_exception();
          stop_reason = "stopped by an exception from a callback: a non-standard exception";
          user_stopped = true;
          return false;
        }
        return true;
      });
    }
    Error with_partial(Error e) const {
      auto partial = std::make_shared<ChatCompletion>(assembler.assemble());
      partial->time_to_first_token = ttft;
      e.partial = std::move(partial);
      return e;
    }
    // The end of a 2xx attempt.
    Result<ChatCompletion> finish(HttpResponse& r) {
      if (json_mode) {
        auto c = detail::decode_chat_completion(json_body);
        if (c) c->http_status = r.status;
        return c;
      }
      assembler.on_end(decoder);
      if (assembler.error()) {
        Error e = *assembler.error();
        if (!delivered_) e.should_retry = false;  // an upstream's verdict, not a transport fault
        return with_partial(std::move(e));
      }
      if (!assembler.done()) {
        Error e(ErrorKind::stream_truncated, decoder.has_unterminated_tail()
                                                 ? "the stream ended in the middle of an event, before [DONE]"
                                                 : "the stream ended before [DONE]");
        if (!delivered_) e.should_retry = true;  // nothing reached the caller: safe to try again
        return with_partial(std::move(e));
      }
      ChatCompletion c = assembler.assemble();
      c.http_status = r.status;
      c.time_to_first_token = ttft;
      return c;
    }

    ChunkSink on_chunk;
    std::function<bool()> should_pause;
    std::function<void()> after_data;  // after each piece of body bytes was handled
    std::atomic<bool> complete{false};
    Clock::time_point start;
    std::size_t max_json;
    std::shared_ptr<StreamStatePool> pool;
    StreamStatePool::Ptr state;
    detail::SseDecoder& decoder;
    detail::StreamAssembler& assembler;
    bool json_mode = false;
    std::string& json_body;
    bool delivered_ = false;
    bool user_stopped = false;
    std::string stop_reason;  // set when a callback threw (empty: it returned false)
    std::string stop_text() const { return stop_reason.empty() ? "the chunk callback cancelled the stream" : stop_reason; }
    std::exception_ptr user_exception;
    std::optional<std::chrono::milliseconds> ttft;
  };

  std::shared_ptr<ChatExchange> make_chat_stream(const ChatRequest& request, ChatStreamHooks::ChunkSink on_chunk,
                                                 std::function<bool()> should_pause, std::function<void()> after_data,
                                                 RequestOptions ro) const {
    auto ex = new_chat_exchange(request, std::move(ro), /*stream=*/true);
    auto hooks = std::make_shared<ChatStreamHooks>(std::move(on_chunk), ex->call.start, opts_.max_response_bytes,
                                                   stream_states_);
    hooks->should_pause = std::move(should_pause);
    hooks->after_data = std::move(after_data);
    ex->hooks = hooks.get();
    ChatStreamHooks* h = hooks.get();
    ex->keep = std::move(hooks);
    ex->interpret = [h](HttpResponse& r) -> Result<ChatCompletion> {
      if (r.status < 200 || r.status >= 300) return status_error(r);
      auto c = h->finish(r);
      if (!c) return success_status_error(std::move(c.error()), r);
      return c;
    };
    return ex;
  }

  // What forward() and forward_stream() share: checks, the body with the
  // default model filled in, the request, the usage record.
  std::shared_ptr<RawExchange> new_forward_exchange(std::string_view json_body, RequestOptions ro, bool stream) const {
    auto ex = std::make_shared<RawExchange>(*this, std::move(ro));
    std::string model;
    if (auto e = precheck(ex->ro, ex->call)) ex->pre_error = std::move(*e);
    auto body = detail::fill_default_model(json_body, opts_.default_model, &model);
    if (!body) ex->pre_error = std::move(body.error());
    else ex->body = std::move(*body);
    prepare(*ex, HttpRequest::Method::post, chat_url_, /*passthrough=*/true, /*streaming=*/stream);
    if (!opts_.recorders.empty())
      ex->record = [this, stream, model, size = json_body.size()](const Call& call, const RequestOptions& o,
                                                                  const Result<RawResponse>& r) {
        emit_forward(call, stream ? "forward_stream" : "forward", model, stream, o, r, size);
      };
    return ex;
  }

  std::shared_ptr<RawExchange> make_forward(std::string_view json_body, RequestOptions ro) const {
    auto ex = new_forward_exchange(json_body, std::move(ro), /*stream=*/false);
    auto to_raw = [](HttpResponse& r) {
      RawResponse out;
      out.status = r.status;
      out.headers = std::move(r.headers);
      out.body = std::move(r.body);
      return out;
    };
    // Retryable HTTP errors go through the policy like any failure; when it
    // gives up, the upstream's response is passed through as it came.
    ex->interpret = [to_raw](HttpResponse& r) { return retry_or_pass(r, to_raw); };
    ex->give_up = [to_raw](HttpResponse& r) -> std::optional<RawResponse> { return to_raw(r); };
    return ex;
  }

  // Streaming state of forward_stream, on the loop thread.
  struct ForwardStreamHooks final : StreamHooks {
    ForwardStreamHooks(ForwardSink s, std::shared_ptr<StreamStatePool> states)
        : sink(std::move(s)), pool(std::move(states)), state(pool->get()), decoder(state->decoder),
          assembler(state->assembler) {}
    ~ForwardStreamHooks() override { pool->put(std::move(state)); }
    void begin_attempt(HttpRequest& req) override {
      state->reset();
      event_stream = false;
      complete.store(false);
      req.complete = &complete;
      req.on_start = [this](int s, const std::vector<Header>& hs) {
        const std::string* ct = detail::find_header(hs, "content-type");
        event_stream = ct && ct->find("event-stream") != std::string::npos;
        started = true;
        status = s;
        headers = hs;
        if (sink.on_start) call_user([&] { sink.on_start(s, hs); });
      };
      req.on_data = [this](std::string_view bytes) {
        if (user_stopped) return detail::DataAction::stop;
        if (should_pause && should_pause()) return detail::DataAction::pause;
        delivered_ = true;
        if (event_stream) decoder.feed(bytes, [this](const detail::SseEvent& ev) {
          const auto step = assembler.on_event(ev);
          if (step == detail::StreamAssembler::Step::done) complete.store(true);
          return true;
        });
        bool go_on = true;
        if (sink.on_data) call_user([&] { go_on = sink.on_data(bytes); });
        if (after_data) after_data();
        if (!go_on) user_stopped = true;
        return go_on && !user_stopped ? detail::DataAction::proceed : detail::DataAction::stop;
      };
    }
    template <typename F>
    void call_user(F f) {
      try {
        f();
      } catch (const std::exception& e) {
        user_exception = std::current_exception();
        stop_reason = fmt::format("stopped by an exception from a callback: {}", e.what());
        user_stopped = true;
      } catch (...) {
        user_exception = std::current_exception();
        stop_reason = "stopped by an exception from a callback: a non-standard exception";
        user_stopped = true;
      }
    }
    bool delivered() const override { return delivered_; }
    Result<HttpResponse> after_delivery(Error e) override {
      if (event_stream && assembler.done() && !user_stopped) {
        HttpResponse ok;  // [DONE] was passed on: a complete stream
        ok.status = status;
        ok.headers = headers;
        return ok;
      }
      Error out = user_stopped ? Error(ErrorKind::cancelled, stop_text())
                  : e.kind() == ErrorKind::cancelled || e.kind() == ErrorKind::timeout
                      ? e
                      : Error(ErrorKind::stream_truncated, "the stream was cut: " + e.message());
      out.http_status = e.http_status;
      if (event_stream) out.partial = std::make_shared<ChatCompletion>(assembler.assemble());
      return out;
    }
    // The response went to the sink (or goes now, when it was not streamed:
    // an error status, or an empty body).
    RawResponse pass_through(HttpResponse& r) {
      if (!started && sink.on_start) call_user([&] { sink.on_start(r.status, r.headers); });
      if (!r.body.empty() && sink.on_data) call_user([&] { sink.on_data(r.body); });
      RawResponse out;
      out.status = r.status;
      out.headers = std::move(r.headers);
      if (event_stream) {
        assembler.on_end(decoder);
        out.decoded = std::make_shared<ChatCompletion>(assembler.assemble());
        if (assembler.error())
          out.stream_error = std::make_shared<Error>(*assembler.error());
        else if (!assembler.done())
          out.stream_error = std::make_shared<Error>(ErrorKind::stream_truncated, "the stream ended before [DONE]");
      }
      return out;
    }
    ForwardSink sink;
    std::function<bool()> should_pause;
    std::function<void()> after_data;
    std::atomic<bool> complete{false};
    int status = 0;
    std::vector<Header> headers;
    std::shared_ptr<StreamStatePool> pool;
    StreamStatePool::Ptr state;
    detail::SseDecoder& decoder;
    detail::StreamAssembler& assembler;
    bool event_stream = false, started = false, delivered_ = false, user_stopped = false;
    std::string stop_reason;  // set when a callback threw (empty: the sink returned false)
    std::string stop_text() const { return stop_reason.empty() ? "the sink stopped the stream" : stop_reason; }
    std::exception_ptr user_exception;
  };

  std::shared_ptr<RawExchange> make_forward_stream(std::string_view json_body, ForwardSink sink,
                                                   std::function<bool()> should_pause,
                                                   std::function<void()> after_data,
                                                   RequestOptions ro) const {
    auto ex = new_forward_exchange(json_body, std::move(ro), /*stream=*/true);
    auto hooks = std::make_shared<ForwardStreamHooks>(std::move(sink), stream_states_);
    hooks->should_pause = std::move(should_pause);
    hooks->after_data = std::move(after_data);
    ex->hooks = hooks.get();
    ForwardStreamHooks* h = hooks.get();
    ex->keep = std::move(hooks);
    ex->interpret = [h](HttpResponse& r) -> Result<RawResponse> {
      auto pass = [h](HttpResponse& x) { return h->pass_through(x); };
      auto out = retry_or_pass(r, pass);
      if (out && h->user_stopped) return Error(ErrorKind::cancelled, h->stop_text());
      return out;
    };
    ex->give_up = [h](HttpResponse& r) -> std::optional<RawResponse> { return h->pass_through(r); };
    return ex;
  }

  std::shared_ptr<Exchange<std::vector<Model>>> make_list_models(RequestOptions ro) const {
    auto ex = std::make_shared<Exchange<std::vector<Model>>>(*this, std::move(ro));
    if (auto e = precheck(ex->ro, ex->call)) ex->pre_error = std::move(*e);
    prepare(*ex, HttpRequest::Method::get, models_url_, /*passthrough=*/false, /*streaming=*/false);
    ex->interpret = [](HttpResponse& r) -> Result<std::vector<Model>> {
      if (r.status < 200 || r.status >= 300) return status_error(r);
      auto models = detail::decode_models(r.body);
      if (!models) return success_status_error(std::move(models.error()), r);
      return models;
    };
    ex->give_up = [](HttpResponse&) -> std::optional<std::vector<Model>> { return std::nullopt; };
    return ex;
  }

  // Starts an exchange: a call that cannot be sent fails on the loop too, so
  // async callbacks always run there.
  template <typename T>
  void launch(const std::shared_ptr<Exchange<T>>& ex) const {
    if (ex->pre_error) {
      std::shared_ptr<ExchangeBase> base = ex;
      Error e = std::move(*ex->pre_error);
      ex->pre_error.reset();
      if (!loop_->post([base, e = std::move(e)]() mutable { base->reject(std::move(e)); }))
        ex->complete(finish_error(Error(ErrorKind::cancelled, "the client is shutting down"), ex->call, 0));
      return;
    }
    submit(ex);
  }

  // ---- synchronous calls: hand the exchange to the loop and wait.

  template <typename T>
  Result<T> run_sync(const std::shared_ptr<Exchange<T>>& ex) const {
    SyncWait<T> wait;
    std::exception_ptr thrown;
    ex->finish = [&wait, &thrown](Result<T>&& r, std::exception_ptr e) {
      thrown = std::move(e);
      wait.set(std::move(r));
    };
    if (auto e = reentry_error()) {
      ex->complete(finish_error(std::move(*e), ex->call, 0));
    } else if (!ex->pre_error && loop_->try_drive()) {
      // The loop is idle: run it on this thread until the call ends (no
      // hand-over to the loop thread and back).
      admit(ex);
      Exchange<T>* raw = ex.get();
      loop_->drive_until([raw] { return raw->finished; }, nullptr);
    } else {
      launch(ex);
    }
    Result<T> r = wait.get();
    if (thrown) std::rethrow_exception(thrown);
    return r;
  }

  Result<ChatCompletion> chat(const ChatRequest& request, const RequestOptions& ro) const {
    return run_sync(make_chat(request, ro));
  }

  Result<RawResponse> forward(std::string_view json_body, const RequestOptions& ro) const {
    return run_sync(make_forward(json_body, ro));
  }

  Result<std::vector<Model>> list_models(const RequestOptions& ro) const { return run_sync(make_list_models(ro)); }

  // A synchronous stream: the exchange runs on the loop; the caller's
  // callbacks run here, fed through a mailbox. The record is written here
  // too, once the callbacks have run, so it says what the caller saw.
  template <typename T, typename Make, typename Stopped>
  Result<T> run_sync_stream(const char* stop_reason_text, Make make, Stopped when_stopped) const {
    auto mb = std::make_shared<Mailbox>(stop_reason_text, chunk_pool_);
    auto ex = make(mb.get());
    ex->mailbox = mb;
    typename Exchange<T>::Record record = std::move(ex->record);
    struct Outcome {
      std::optional<Result<T>> result;
      std::exception_ptr hook_thrown;
    } outcome;
    std::optional<Result<T>>& out = outcome.result;
    std::exception_ptr& hook_thrown = outcome.hook_thrown;
    // (The exchange holds the mailbox: close() may still be running when
    // this thread sees it closed and returns.)
    ex->finish = [m = mb.get(), o = &outcome](Result<T>&& r, std::exception_ptr e) {
      o->result.emplace(std::move(r));
      o->hook_thrown = std::move(e);
      m->close();
    };
    // The caller's stop and resume reach the call through the loop (this
    // thread does not hold it when callbacks run).
    auto post_stop = [&](const std::string& reason) {
      on_loop(loop_, ex, [reason](ExchangeBase& e) { e.cancel_now(reason); });
    };
    auto post_resume = [&] { on_loop(loop_, ex, [](ExchangeBase& e) { e.resume(); }); };
    std::exception_ptr thrown;
    if (auto e = reentry_error()) {
      ex->complete(finish_error(std::move(*e), ex->call, 0));
    } else {
      if (!ex->pre_error && loop_->try_drive()) {
        // The loop is idle: this thread runs it until the call ends or
        // callbacks are due. User callbacks never run while this thread
        // holds the loop (they may block, or wait for another call of this
        // client): it lets go of the loop, runs them, and takes it back if
        // nobody else did meanwhile (anything posted meanwhile wakes the
        // loop thread, which then carries on with this call too).
        admit(ex);
        Exchange<T>* raw = ex.get();
        for (bool driving = true; driving;) {
          loop_->drive_until([raw] { return raw->finished; }, [&mb] { return mb->has_items(); });
          mb->run_ready(post_stop, post_resume);
          driving = !mb->closed() && loop_->try_drive(/*resume=*/true);
        }
      } else {
        launch(ex);
      }
      // What is left (all of it, when the loop thread took over).
      thrown = mb->pump(post_stop, post_resume);
    }
    Result<T> r = std::move(*out);
    if (mb->stopped() && r.ok()) r = when_stopped(std::move(*r), mb->last_reason());
    if (record && !opts_.recorders.empty()) record(ex->call, ex->ro, r);
    if (thrown) std::rethrow_exception(thrown);
    if (hook_thrown) std::rethrow_exception(hook_thrown);
    return r;
  }

  // The caller stopped a stream that had in fact completed: it still gets
  // `cancelled`, with everything as the partial result.
  static Error stopped_error(std::string reason, const std::string& id, const std::string& upstream_id, int attempts,
                             std::vector<AttemptRecord> log, int http_status) {
    Error e(ErrorKind::cancelled, std::move(reason));
    e.request_id = id;
    e.upstream_request_id = upstream_id;
    e.attempts = attempts;
    e.attempt_log = std::move(log);
    e.http_status = http_status;
    return e;
  }

  // A pull-style stream: started like an async call; see ChatStream::Impl.
  std::unique_ptr<ChatStream::Impl> open_stream(const ChatRequest& request, const RequestOptions& ro,
                                                std::shared_ptr<const void> keep_client) const {
    auto mb = std::make_shared<Mailbox>("the pull stream was closed before its end", chunk_pool_);
    // Pull mode takes the chunks out (next_chunk): no callback is run.
    ChatStreamHooks::ChunkSink relay = [mb](detail::StreamAssembler& a) {
      mb->push_chunk(a, nullptr);
      return true;
    };
    auto ex = make_chat_stream(
        request, std::move(relay), [mb] { return mb->should_pause(); }, [mb] { mb->kick(); }, ro);
    auto result = std::make_shared<std::optional<Result<ChatCompletion>>>();
    ex->finish = [mb, result](Result<ChatCompletion>&& r, std::exception_ptr) {
      result->emplace(std::move(r));
      mb->close();
    };
    std::weak_ptr<detail::Loop> weak_loop = loop_;
    std::weak_ptr<ExchangeBase> base = std::static_pointer_cast<ExchangeBase>(ex);  // a finished call is freed
    ChatStream::Impl::Links links;
    links.mailbox = mb;
    links.result = result;
    links.stop = [weak_loop, base](const std::string& reason) {
      on_loop(weak_loop, base, [reason](ExchangeBase& e) { e.cancel_now(reason); });
    };
    links.resume = [weak_loop, base] { on_loop(weak_loop, base, [](ExchangeBase& e) { e.resume(); }); };
    links.on_loop_thread = [weak_loop] {
      auto l = weak_loop.lock();
      return l && l->is_driver();
    };
    links.client = std::move(keep_client);
    launch(ex);
    return std::make_unique<ChatStream::Impl>(std::move(links));
  }

  Result<ChatCompletion> chat_stream(const ChatRequest& request, const ChunkCallback& on_chunk,
                                     const RequestOptions& ro) const {
    return run_sync_stream<ChatCompletion>(
        "the chunk callback cancelled the stream", [&](Mailbox* mb) {
          ChatStreamHooks::ChunkSink relay;
          if (on_chunk)
            relay = [mb, &on_chunk](detail::StreamAssembler& a) {
              if (mb->stopped()) return false;
              mb->push_chunk(a, &on_chunk);
              return true;
            };
          return make_chat_stream(
              request, std::move(relay), [mb] { return mb->should_pause(); }, [mb] { mb->kick(); }, ro);
        },
        [](ChatCompletion c, const std::string& reason) -> Result<ChatCompletion> {
          Error e = stopped_error(reason, c.request_id, c.upstream_request_id, c.attempts, c.attempt_log,
                                  c.http_status);
          e.partial = std::make_shared<ChatCompletion>(std::move(c));
          return e;
        });
  }

  Result<RawResponse> forward_stream(std::string_view json_body, const ForwardSink& sink,
                                     const RequestOptions& ro) const {
    return run_sync_stream<RawResponse>(
        "the sink stopped the stream", [&](Mailbox* mb) {
          ForwardSink relay;
          if (sink.on_start)
            relay.on_start = [mb, &sink](int status, const std::vector<Header>& headers) {
              mb->push([&sink, status, headers] {
                sink.on_start(status, headers);
                return true;
              });
            };
          relay.on_data = [mb, &sink](std::string_view bytes) {
            if (mb->stopped()) return false;
            if (sink.on_data) mb->push([&sink, data = std::string(bytes)] { return sink.on_data(data); });
            return true;
          };
          return make_forward_stream(
              json_body, std::move(relay), [mb] { return mb->should_pause(); }, [mb] { mb->kick(); }, ro);
        },
        [](RawResponse r, const std::string& reason) -> Result<RawResponse> {
          Error e = stopped_error(reason, r.request_id, r.upstream_request_id, r.attempts, r.attempt_log, r.status);
          if (r.decoded) e.partial = r.decoded;
          return e;
        });
  }

  // ---- asynchronous calls

  // What an AsyncCall holds: a way to cancel the call, and its id.
  using Started = std::pair<std::function<void()>, std::string>;

  template <typename T>
  Started start_async(std::shared_ptr<Exchange<T>> ex, std::function<void(Result<T>)> on_done) const {
    std::weak_ptr<ExchangeBase> weak = std::static_pointer_cast<ExchangeBase>(ex);
    std::weak_ptr<detail::Loop> loop = loop_;
    Started handle(
        [weak, loop] {
          on_loop(loop, weak, [](ExchangeBase& e) { e.cancel_now("the caller cancelled the request"); });
        },
        ex->call.id);
    ex->on_done = std::move(on_done);
    launch(ex);
    return handle;
  }

  Started chat_async(const ChatRequest& request, ChatCallback on_done, const RequestOptions& ro) const {
    return start_async(make_chat(request, ro), std::move(on_done));
  }

  Started chat_stream_async(const ChatRequest& request, ChunkCallback on_chunk, ChatCallback on_done,
                            const RequestOptions& ro) const {
    ChatStreamHooks::ChunkSink sink;
    if (on_chunk) sink = [cb = std::move(on_chunk)](detail::StreamAssembler& a) { return cb(a.chunk()); };
    return start_async(make_chat_stream(request, std::move(sink), nullptr, nullptr, ro), std::move(on_done));
  }

  Started forward_async(std::string json_body, RawCallback on_done, const RequestOptions& ro) const {
    return start_async(make_forward(json_body, ro), std::move(on_done));
  }

  Started forward_stream_async(std::string json_body, ForwardSink sink, RawCallback on_done,
                               const RequestOptions& ro) const {
    return start_async(make_forward_stream(json_body, std::move(sink), nullptr, nullptr, ro), std::move(on_done));
  }

 private:
  explicit Impl(ClientOptions o)
      : opts_(std::move(o)),
        chat_url_(opts_.base_url + "/chat/completions"),
        models_url_(opts_.base_url + "/models"),
        loopback_(is_loopback_url(opts_.base_url)),
        loop_(std::make_shared<detail::Loop>(
            detail::TransportConfig{opts_.proxy, opts_.ca_bundle, opts_.ca_path, opts_.max_connections_per_host})) {
    base_headers_.reserve(opts_.default_headers.size() + 3);
    if (!opts_.api_key.empty()) base_headers_.emplace_back("Authorization", "Bearer " + opts_.api_key);
    base_headers_.emplace_back("Content-Type", "application/json");
    base_headers_.emplace_back("Accept", "application/json");
    // As a header line rather than CURLOPT_USERAGENT: cheaper per request.
    base_headers_.emplace_back("User-Agent", opts_.user_agent);
    for (const auto& h : opts_.default_headers) put_header(base_headers_, h);
  }


  // ---- usage records

  std::string requested_model(const ChatRequest& r) const { return r.model.empty() ? opts_.default_model : r.model; }

  std::optional<std::string> summary_of(const ChatRequest& r) const {
    if (!opts_.record_request_summary) return std::nullopt;
    std::string out;
    detail::JsonWriter w(out);
    w.begin_object().key("model").string(requested_model(r));
    w.key("message_count").number(static_cast<std::int64_t>(r.messages.size()));
    w.key("messages").begin_array();
    for (const auto& m : r.messages) {
      std::size_t chars = m.content ? m.content->size() : 0;
      for (const auto& p : m.parts) chars += p.text.size();
      w.begin_object().key("role").string(m.role).key("chars").number(static_cast<std::int64_t>(chars));
      if (opts_.record_message_text && m.content) w.key("text").string(*m.content);
      w.end_object();
    }
    w.end_array();
    if (r.temperature) w.key("temperature").number(*r.temperature);
    if (r.max_tokens) w.key("max_tokens").number(*r.max_tokens);
    if (r.max_completion_tokens) w.key("max_completion_tokens").number(*r.max_completion_tokens);
    if (!r.tools.empty()) w.key("tools").number(static_cast<std::int64_t>(r.tools.size()));
    if (r.response_format) w.key("response_format").string(r.response_format->type);
    w.end_object();
    return out;
  }

  static void fill_usage(RequestRecord& rec, const ChatCompletion& c) {
    rec.model = c.model;
    rec.provider = c.provider;
    rec.time_to_first_token = c.time_to_first_token;
    if (c.usage) {
      rec.prompt_tokens = c.usage->prompt_tokens;
      rec.completion_tokens = c.usage->completion_tokens;
      rec.total_tokens = c.usage->total_tokens;
      rec.cached_tokens = c.usage->cached_tokens;
      rec.reasoning_tokens = c.usage->reasoning_tokens;
      rec.upstream_cost = c.usage->cost;
    }
  }

  static void fill_error(RequestRecord& rec, const Error& e) {
    rec.status = e.kind() == ErrorKind::cancelled ? RequestStatus::cancelled : RequestStatus::error;
    rec.error_kind = e.kind();
    rec.error_message = e.message();
    rec.http_status = e.http_status;
    rec.request_id = e.request_id;
    rec.upstream_request_id = e.upstream_request_id;
    rec.attempts = e.attempt_log;
    if (e.partial) fill_usage(rec, *e.partial);
  }

  RequestRecord base_record(const Call& call, std::string_view endpoint, std::string model, bool streamed,
                            const RequestOptions& ro) const {
    RequestRecord rec;
    rec.started_at = call.started_at;
    rec.endpoint = std::string(endpoint);
    rec.requested_model = std::move(model);
    rec.streamed = streamed;
    rec.tags = ro.tags;
    rec.latency = call.elapsed();
    return rec;
  }

  void emit(const Call& call, std::string_view endpoint, std::string model, bool streamed, const RequestOptions& ro,
            const ChatCompletion* ok, const Error* err, std::optional<std::string> summary) const {
    RequestRecord rec = base_record(call, endpoint, std::move(model), streamed, ro);
    rec.request_summary = std::move(summary);
    if (ok) {
      rec.request_id = ok->request_id;
      rec.upstream_request_id = ok->upstream_request_id;
      rec.http_status = ok->http_status;
      rec.attempts = ok->attempt_log;
      fill_usage(rec, *ok);
    } else if (err) {
      fill_error(rec, *err);
    }
    deliver(rec);
  }

  void emit_forward(const Call& call, std::string_view endpoint, std::string model, bool streamed,
                    const RequestOptions& ro, const Result<RawResponse>& r, std::size_t body_bytes) const {
    RequestRecord rec = base_record(call, endpoint, std::move(model), streamed, ro);
    if (opts_.record_request_summary) {
      std::string summary;
      detail::JsonWriter w(summary);
      w.begin_object().key("model").string(rec.requested_model);
      w.key("body_bytes").number(static_cast<std::int64_t>(body_bytes)).end_object();
      rec.request_summary = std::move(summary);
    }
    if (!r) {
      fill_error(rec, r.error());
      deliver(rec);
      return;
    }
    rec.request_id = r->request_id;
    rec.upstream_request_id = r->upstream_request_id;
    rec.http_status = r->status;
    rec.attempts = r->attempt_log;
    if (r->status >= 400) {
      rec.status = RequestStatus::error;
      rec.error_kind = detail::kind_for_status(r->status);
      rec.error_message = fmt::format("upstream returned HTTP {}", r->status);
    } else if (r->stream_error) {
      rec.status = RequestStatus::error;
      rec.error_kind = r->stream_error->kind();
      rec.error_message = r->stream_error->message();
    }
    if (r->decoded) {
      fill_usage(rec, *r->decoded);
    } else if (r->status >= 200 && r->status < 300 && !r->body.empty()) {
      // The bytes went to the caller unchanged; a copy is decoded for the record.
      std::string copy = r->body;
      if (auto c = detail::decode_chat_completion(copy)) fill_usage(rec, *c);
    }
    deliver(rec);
  }

  void deliver(RequestRecord& rec) const {
    // Text from callers and upstreams goes to databases and JSON files: make
    // it valid UTF-8 first (one bad byte must not poison a batch insert).
    for (std::string* t : {&rec.request_id, &rec.upstream_request_id, &rec.requested_model, &rec.model,
                           &rec.error_message, &rec.endpoint})
      detail::sanitize_utf8(*t);
    if (rec.provider) detail::sanitize_utf8(*rec.provider);
    if (rec.request_summary) detail::sanitize_utf8(*rec.request_summary);
    for (auto& [k, v] : rec.tags) {
      detail::sanitize_utf8(k);
      detail::sanitize_utf8(v);
    }
    if (opts_.prices) {
      Usage u;
      u.prompt_tokens = rec.prompt_tokens;
      u.completion_tokens = rec.completion_tokens;
      u.cached_tokens = rec.cached_tokens;
      rec.estimated_cost = opts_.prices->cost(rec.model.empty() ? rec.requested_model : rec.model, u);
    }
    for (const auto& recorder : opts_.recorders) {
      try {
        recorder->record(rec);
      } catch (const std::exception& e) {
        report_recorder_error("recorder", e.what());
      } catch (...) {
        report_recorder_error("recorder", "unknown exception");
      }
    }
  }

  void report_recorder_error(std::string_view recorder, std::string_view message) const {
    try {
      detail::error_hook_or_stderr(opts_.on_recorder_error)(recorder, message);
    } catch (...) {  // a hook must not fail the request
    }
  }

  std::optional<Error> precheck(const RequestOptions& ro, const Call& call) const {
    if (ro.request_id)
      if (auto e = check_request_id(call.id)) return e;
    if (opts_.api_key.empty() && !loopback_)
      return Error(ErrorKind::invalid_argument,
                   fmt::format("no API key: set TAOTOKEN_API_KEY or ClientOptions::api_key (only loopback base "
                               "URLs may be used without a key; base URL is {})",
                               opts_.base_url));
    for (const auto& [name, value] : ro.headers)
      if (auto e = check_header(name, value)) return e;
    if (ro.timeout && ro.timeout->count() <= 0) return Error(ErrorKind::invalid_argument, "timeout must be positive");
    return std::nullopt;
  }

  std::unique_ptr<RetryPolicy> make_policy(const RequestOptions& ro) const {
    if (ro.retry_policy) return ro.retry_policy->clone();
    if (ro.max_retries) return RetryPolicy::standard(*ro.max_retries);
    if (opts_.retry_policy) return opts_.retry_policy->clone();
    return RetryPolicy::standard();
  }

  static void stamp(ChatCompletion& c, Call& call, int attempts, std::vector<AttemptRecord>& log,
                    const std::string& upstream_id) {
    c.request_id = std::move(call.id);
    c.upstream_request_id = upstream_id;
    c.attempts = attempts;
    c.attempt_log = std::move(log);
    c.latency = call.elapsed();
  }
  static void stamp(RawResponse& r, Call& call, int attempts, std::vector<AttemptRecord>& log,
                    const std::string& upstream_id) {
    r.request_id = std::move(call.id);
    r.upstream_request_id = upstream_id;
    r.attempts = attempts;
    r.attempt_log = std::move(log);
    r.latency = call.elapsed();
  }
  static void stamp(std::vector<Model>&, Call&, int, std::vector<AttemptRecord>&, const std::string&) {}

  static std::string upstream_request_id(const std::vector<Header>& headers) {
    for (const char* name : {"x-request-id", "request-id", "apim-request-id"})
      if (const auto* v = detail::find_header(headers, name)) return *v;
    return {};
  }

  // forward(): a retryable error status is a failure the policy may retry;
  // anything else is passed through as it came.
  template <typename Pass>
  static Result<RawResponse> retry_or_pass(HttpResponse& r, Pass& pass) {
    if (r.status >= 400) {
      Error e = status_error(r);
      if (RetryPolicy::is_retryable(e)) return e;
    }
    return pass(r);
  }

  static void read_retry_headers(Error& e, const HttpResponse& r) {
    e.retry_after = detail::parse_retry_after(detail::find_header(r.headers, "retry-after-ms"),
                                              detail::find_header(r.headers, "retry-after"));
    if (const auto* sr = detail::find_header(r.headers, "x-should-retry")) {
      if (*sr == "true") e.should_retry = true;
      else if (*sr == "false") e.should_retry = false;
    }
  }

  // A 2xx whose body could not be used: an error object inside it, or a body
  // that is not the JSON it should be (a captive portal's HTML page, say).
  static Error success_status_error(Error e, HttpResponse& r) {
    if (e.kind() == ErrorKind::bad_response) {
      const std::string* ctype = detail::find_header(r.headers, "content-type");
      std::string message =
          fmt::format("{} (HTTP {}, content type {})", e.message(), r.status, ctype ? *ctype : "unknown");
      e = detail::reworded(std::move(e), ErrorKind::bad_response, std::move(message));  // a stream's partial stays
      e.body_excerpt = detail::excerpt(r.body);
    }
    e.http_status = r.status;
    read_retry_headers(e, r);
    return e;
  }

  static Error status_error(HttpResponse& r) {
    const std::string* ctype = detail::find_header(r.headers, "content-type");
    Error e = detail::decode_error_response(r.status, ctype ? std::string_view(*ctype) : std::string_view(), r.body);
    read_retry_headers(e, r);
    return e;
  }

  // Removes the API key from text an upstream sent back (some echo the
  // Authorization header): every occurrence, and a prefix of it left at the
  // end of a cut excerpt.
  std::string redact(std::string text, const std::string& call_key) const {
    text = redact_key(std::move(text), opts_.api_key);
    return call_key.empty() ? text : redact_key(std::move(text), call_key);
  }

  static std::string redact_key(std::string text, const std::string& key) {
    if (key.size() < 4) return text;
    text = replace_all(std::move(text), key, "[REDACTED]");
    std::string_view body(text);
    const bool cut = body.size() >= 3 && body.substr(body.size() - 3) == "...";
    if (cut) body.remove_suffix(3);
    for (std::size_t n = std::min(key.size() - 1, body.size()); n >= 4; --n) {
      if (body.substr(body.size() - n) == std::string_view(key).substr(0, n)) {
        text = std::string(body.substr(0, body.size() - n)) + "[REDACTED]" + (cut ? "..." : "");
        break;
      }
    }
    return text;
  }

  // Fills the request context and scrubs the API key from every text field.
  Error finish_error(Error e, const Call& call, int attempts, const std::string& upstream_id = {}) const {
    Error clean(e.kind(), redact(e.message(), call.key));
    clean.http_status = e.http_status;
    auto scrub = [&](std::optional<std::string>& v) {
      if (v) v = redact(std::move(*v), call.key);
    };
    clean.type = std::move(e.type);
    clean.code = std::move(e.code);
    clean.param = std::move(e.param);
    clean.body_excerpt = std::move(e.body_excerpt);
    scrub(clean.type);
    scrub(clean.code);
    scrub(clean.param);
    scrub(clean.body_excerpt);
    clean.retry_after = e.retry_after;
    clean.should_retry = e.should_retry;
    clean.attempt_log = std::move(e.attempt_log);
    clean.partial = std::move(e.partial);
    clean.request_id = call.id;
    clean.upstream_request_id = redact(upstream_id, call.key);
    clean.attempts = attempts;
    return clean;
  }

  ClientOptions opts_;
  std::string chat_url_;
  std::string models_url_;
  bool loopback_;
  std::vector<Header> base_headers_;
  std::shared_ptr<detail::Loop> loop_;
  std::shared_ptr<ChunkPool> chunk_pool_ = std::make_shared<ChunkPool>();  // synchronous streams' chunks
  std::shared_ptr<StreamStatePool> stream_states_ = std::make_shared<StreamStatePool>();
  // Loop thread only: every call admitted and not finished, the calls
  // waiting for a slot, the slots taken.
  mutable ExchangeBase* live_head_ = nullptr;
  mutable std::deque<std::weak_ptr<ExchangeBase>> waiting_;
  mutable std::size_t in_flight_ = 0;
  mutable std::size_t queued_ = 0;       // live calls in waiting_
  mutable bool handing_out_ = false;     // on_finished is handing out slots
  mutable std::atomic<bool> shutting_down_{false};
};

TaotokenClient::TaotokenClient() : TaotokenClient(ClientOptions{}) {}

TaotokenClient::TaotokenClient(ClientOptions options) {
  auto impl = Impl::create(std::move(options));
  if (!impl) throw impl.error();
  impl_ = std::move(*impl);
}

TaotokenClient::TaotokenClient(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Result<TaotokenClient> TaotokenClient::create(ClientOptions options) {
  auto impl = Impl::create(std::move(options));
  if (!impl) return std::move(impl.error());
  return TaotokenClient(std::move(*impl));
}

Result<ChatCompletion> TaotokenClient::chat(const ChatRequest& request, const RequestOptions& options) const {
  return impl_->chat(request, options);
}

Result<RawResponse> TaotokenClient::forward(std::string_view json_body, const RequestOptions& options) const {
  return impl_->forward(json_body, options);
}

Result<ChatCompletion> TaotokenClient::chat_stream(const ChatRequest& request, const ChunkCallback& on_chunk,
                                                   const RequestOptions& options) const {
  return impl_->chat_stream(request, on_chunk, options);
}

ChatStream TaotokenClient::stream(const ChatRequest& request, const RequestOptions& options) const {
  return ChatStream(impl_->open_stream(request, options, impl_));
}

ChatStream::ChatStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatStream::ChatStream(ChatStream&&) noexcept = default;
ChatStream& ChatStream::operator=(ChatStream&&) noexcept = default;
ChatStream::~ChatStream() = default;

std::optional<Result<ChatCompletionChunk>> ChatStream::next() {
  if (!impl_) return std::nullopt;
  return impl_->next();
}

Result<ChatCompletion> ChatStream::result() {
  if (!impl_) return Error(ErrorKind::invalid_argument, "the stream was moved from");
  return impl_->result();
}

Result<RawResponse> TaotokenClient::forward_stream(std::string_view json_body, const ForwardSink& sink,
                                                   const RequestOptions& options) const {
  return impl_->forward_stream(json_body, sink, options);
}

Result<std::vector<Model>> TaotokenClient::list_models(const RequestOptions& options) const {
  return impl_->list_models(options);
}

AsyncCall TaotokenClient::chat_async(const ChatRequest& request, ChatCallback on_done,
                                     const RequestOptions& options) const {
  auto [cancel, id] = impl_->chat_async(request, std::move(on_done), options);
  return AsyncCall(std::move(cancel), std::move(id));
}

std::future<Result<ChatCompletion>> TaotokenClient::chat_async(const ChatRequest& request,
                                                               const RequestOptions& options) const {
  auto promise = std::make_shared<std::promise<Result<ChatCompletion>>>();
  auto future = promise->get_future();
  impl_->chat_async(
      request, [promise](Result<ChatCompletion> r) { promise->set_value(std::move(r)); }, options);
  return future;
}

AsyncCall TaotokenClient::chat_stream_async(const ChatRequest& request, ChunkCallback on_chunk, ChatCallback on_done,
                                            const RequestOptions& options) const {
  auto [cancel, id] = impl_->chat_stream_async(request, std::move(on_chunk), std::move(on_done), options);
  return AsyncCall(std::move(cancel), std::move(id));
}

AsyncCall TaotokenClient::forward_async(std::string json_body, RawCallback on_done,
                                        const RequestOptions& options) const {
  auto [cancel, id] = impl_->forward_async(std::move(json_body), std::move(on_done), options);
  return AsyncCall(std::move(cancel), std::move(id));
}

std::future<Result<RawResponse>> TaotokenClient::forward_async(std::string json_body,
                                                               const RequestOptions& options) const {
  auto promise = std::make_shared<std::promise<Result<RawResponse>>>();
  auto future = promise->get_future();
  impl_->forward_async(
      std::move(json_body), [promise](Result<RawResponse> r) { promise->set_value(std::move(r)); }, options);
  return future;
}

AsyncCall TaotokenClient::forward_stream_async(std::string json_body, ForwardSink sink, RawCallback on_done,
                                               const RequestOptions& options) const {
  auto [cancel, id] =
      impl_->forward_stream_async(std::move(json_body), std::move(sink), std::move(on_done), options);
  return AsyncCall(std::move(cancel), std::move(id));
}

const std::string& TaotokenClient::base_url() const noexcept { return impl_->options().base_url; }
const std::string& TaotokenClient::default_model() const noexcept { return impl_->options().default_model; }

TAOTOKEN_END_NAMESPACE
