// Async calls on the client's event loop, through real libcurl against the
// simulator: callbacks and futures, thousands in flight, cancellation at
// every stage, shutdown with calls in flight, retries that wait on timers,
// the in-flight cap and the callback executor.

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "sim_fixture.h"
#include "taotoken/recorders.h"

using namespace taotoken;
using namespace std::chrono_literals;

namespace {

// Threads of this process named `name`, or all but the in-process
// simulator's ("taotoken-sim") when `name` is empty. Client loops are
// named "taotoken-loop".
int thread_count(const std::string& name = {}) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(entry.path() / "comm");
    std::string comm;
    if (!std::getline(in, comm)) continue;  // the thread just ended
    if (name.empty() ? comm != "taotoken-sim" : comm == name) ++n;
  }
  return n;
}

// Counts completions; wait() gives up after a generous bound so a bug
// fails the test instead of hanging it.
class Latch {
 public:
  explicit Latch(int n) : left_(n) {}
  void count_down() {
    std::lock_guard<std::mutex> g(mu_);
    if (--left_ <= 0) cv_.notify_all();
  }
  bool wait(std::chrono::seconds bound = 120s) {
    std::unique_lock<std::mutex> g(mu_);
    return cv_.wait_for(g, bound, [this] { return left_ <= 0; });
  }
  int left() {
    std::lock_guard<std::mutex> g(mu_);
    return left_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

template <typename Pred>
bool eventually(Pred pred, std::chrono::seconds bound = 30s) {
  const auto end = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

// taotoken-sim in a child process, so that its thread per connection does
// not count against this process's threads.
class SimProcess {
 public:
  explicit SimProcess(std::vector<std::string> args) {
    port_file_ = "/tmp/taotoken-async-sim-" + std::to_string(::getpid()) + ".port";
    std::remove(port_file_.c_str());
    std::vector<std::string> argv_s = {TAOTOKEN_SIM_PATH, "--port", "0", "--port-file", port_file_};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      if (!std::freopen("/dev/null", "w", stdout)) ::_exit(126);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    REQUIRE(pid_ > 0);
    REQUIRE(eventually([&] {
      std::ifstream in(port_file_);
      return static_cast<bool>(in >> port_);
    }));
  }
  ~SimProcess() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    std::remove(port_file_.c_str());
  }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string port_file_;
};

void raise_fd_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
}

}  // namespace

TEST_CASE("chat_async delivers the result to a callback or a future") {
  SimFixture f;
  auto client = f.client();
  std::promise<Result<ChatCompletion>> got;
  auto call = client.chat_async(SimFixture::ask("by callback"),
                                [&](Result<ChatCompletion> r) { got.set_value(std::move(r)); });
  auto r = got.get_future().get();
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: by callback");
  CHECK(r->request_id == call.request_id());

  auto fut = client.chat_async(SimFixture::ask("by future"));
  auto r2 = fut.get();
  REQUIRE(r2.ok());
  CHECK(r2->text() == "Echo: by future");
}

TEST_CASE("chat_stream_async, forward_async and forward_stream_async") {
  SimFixture f;
  auto client = f.client();
  std::string seen;
  std::promise<Result<ChatCompletion>> done;
  client.chat_stream_async(
      SimFixture::ask("stream me please"),
      [&](const ChatCompletionChunk& c) {
        for (const auto& ch : c.choices)
          if (ch.content) seen += *ch.content;
        return true;
      },
      [&](Result<ChatCompletion> r) { done.set_value(std::move(r)); });
  auto r = done.get_future().get();
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: stream me please");
  CHECK(seen == "Echo: stream me please");
  REQUIRE(r->usage);

  auto fwd = client.forward_async(R"({"messages":[{"role":"user","content":"raw"}]})").get();
  REQUIRE(fwd.ok());
  CHECK(fwd->status == 200);
  CHECK(fwd->body.find("Echo: raw") != std::string::npos);

  std::string bytes;
  int status = 0;
  std::promise<Result<RawResponse>> fdone;
  ForwardSink sink;
  sink.on_start = [&](int s, const std::vector<Header>&) { status = s; };
  sink.on_data = [&](std::string_view b) {
    bytes.append(b);
    return true;
  };
  client.forward_stream_async(R"({"stream":true,"messages":[{"role":"user","content":"raw stream"}]})", sink,
                              [&](Result<RawResponse> res) { fdone.set_value(std::move(res)); });
  auto fr = fdone.get_future().get();
  REQUIRE(fr.ok());
  CHECK(status == 200);
  CHECK(bytes.find("data: [DONE]") != std::string::npos);
  REQUIRE(fr->decoded);
  CHECK(fr->decoded->text() == "Echo: raw stream");
}

TEST_CASE("2000 async requests in flight at once: correct results, one record each, constant threads") {
  raise_fd_limit();
  constexpr int kCalls = 2000;
  // The simulator answers nobody until it holds all 2000 requests: the test
  // can only pass if the client really has 2000 in flight at once.
  SimProcess sim({"--hold-until", std::to_string(kCalls)});
  auto recorder = std::make_shared<MemoryRecorder>(kCalls);
  ClientOptions o;
  o.base_url = sim.base_url();
  o.api_key = "sk-test-secret-key-123";
  o.recorders.push_back(recorder);
  o.retry_policy = RetryPolicy::none();
  o.connect_timeout = 60s;
  TaotokenClient client(o);  // its loop thread exists from here on
  const int threads_before = thread_count();

  Latch latch(kCalls);
  std::mutex mu;
  std::vector<std::optional<Result<ChatCompletion>>> results(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    client.chat_async(SimFixture::ask("msg-" + std::to_string(i)), [&, i](Result<ChatCompletion> r) {
      {
        std::lock_guard<std::mutex> g(mu);
        results[static_cast<std::size_t>(i)].emplace(std::move(r));
      }
      latch.count_down();
    });
  }
  int peak = thread_count();
  while (!latch.wait(0s)) {
    peak = std::max(peak, thread_count());
    std::this_thread::sleep_for(2ms);
  }
  CHECK(peak == threads_before);

  std::set<std::string> ids;
  int ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto& r = results[static_cast<std::size_t>(i)];
    REQUIRE(r.has_value());
    if (!r->ok()) {
      FAIL_CHECK("call " << i << ": " << r->error().describe());
      continue;
    }
    ++ok;
    CHECK((*r)->text() == "Echo: msg-" + std::to_string(i));
    ids.insert((*r)->request_id);
  }
  CHECK(ok == kCalls);
  CHECK(recorder->count() == kCalls);
  std::set<std::string> recorded;
  for (const auto& rec : recorder->recent(kCalls)) recorded.insert(rec.request_id);
  CHECK(recorded == ids);
}

TEST_CASE("mixed sync and async calls from 8 threads share one client") {
  SimFixture f;
  auto recorder = std::make_shared<MemoryRecorder>(10000);
  auto o = f.options();
  o.recorders.push_back(recorder);
  TaotokenClient client(o);
  constexpr int kThreads = 8, kRounds = 25;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const std::string tag = std::to_string(t) + "-" + std::to_string(i);
        auto sync = client.chat(SimFixture::ask("sync " + tag));
        if (!sync || sync->text() != "Echo: sync " + tag) ++failures;
        auto fut = client.chat_async(SimFixture::ask("async " + tag));
        std::string chunks;
        auto streamed = client.chat_stream(SimFixture::ask("stream " + tag), [&](const ChatCompletionChunk& c) {
          for (const auto& ch : c.choices)
            if (ch.content) chunks += *ch.content;
          return true;
        });
        if (!streamed || streamed->text() != "Echo: stream " + tag || chunks != streamed->text()) ++failures;
        std::promise<Result<ChatCompletion>> p;
        client.chat_stream_async(
            SimFixture::ask("astream " + tag), nullptr, [&](Result<ChatCompletion> r) { p.set_value(std::move(r)); });
        auto as = p.get_future().get();
        if (!as || as->text() != "Echo: astream " + tag) ++failures;
        auto a = fut.get();
        if (!a || a->text() != "Echo: async " + tag) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(recorder->count() == kThreads * kRounds * 4);
  CHECK(recorder->summary().total.errors == 0);
}

TEST_CASE("cancellation before sending, while waiting for headers, and mid-stream") {
  SimFixture f;
  auto recorder = std::make_shared<MemoryRecorder>(100);
  auto o = f.options();
  o.recorders.push_back(recorder);
  TaotokenClient client(o);

  SECTION("before sending: nothing reaches the upstream") {
    RequestOptions ro;
    ro.cancel = std::make_shared<CancelToken>();
    ro.cancel->cancel();
    auto r = client.chat_async(SimFixture::ask("never"), ro).get();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(r.error().attempts == 0);
    CHECK(f.sim.request_count() == 0);
  }

  SECTION("while waiting for the response headers") {
    sim::Fault slow;
    slow.delay = 60s;
    f.sim.push_fault(slow);
    std::promise<Result<ChatCompletion>> p;
    auto call = client.chat_async(SimFixture::ask("slow"), [&](Result<ChatCompletion> r) { p.set_value(std::move(r)); });
    REQUIRE(eventually([&] { return f.sim.request_count() == 1; }));
    call.cancel();
    auto r = p.get_future().get();  // without the cancel this would wait 60 s and then succeed
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(r.error().request_id == call.request_id());
  }

  SECTION("mid-stream, from another thread: partial content kept") {
    sim::Fault stall;
    stall.stall_after_bytes = 1500;  // after a few content chunks
    stall.stall = 60s;
    f.sim.push_fault(stall);
    std::promise<void> first_chunk;  // the first one with text (the role chunk has none)
    std::atomic<bool> once{false};
    std::promise<Result<ChatCompletion>> p;
    std::string words;
    for (int i = 0; i < 200; ++i) words += "word ";
    auto call = client.chat_stream_async(
        SimFixture::ask(words),
        [&](const ChatCompletionChunk& c) {
          if (!c.choices.empty() && c.choices[0].content && !c.choices[0].content->empty() && !once.exchange(true)) first_chunk.set_value();
          return true;
        },
        [&](Result<ChatCompletion> r) { p.set_value(std::move(r)); });
    first_chunk.get_future().get();
    call.cancel();
    auto r = p.get_future().get();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    REQUIRE(r.error().partial);
    INFO(r.error().describe() << " choices=" << r.error().partial->choices.size());
    CHECK_FALSE(r.error().partial->text().empty());
  }

  SECTION("from the chunk callback itself") {
    std::promise<Result<ChatCompletion>> p;
    int chunks = 0;
    client.chat_stream_async(
        SimFixture::ask("stop after the first chunk please"),
        [&](const ChatCompletionChunk&) { return ++chunks < 1; },
        [&](Result<ChatCompletion> r) { p.set_value(std::move(r)); });
    auto r = p.get_future().get();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::cancelled);
    CHECK(chunks == 1);
  }

  // Exactly one record per call, and it says cancelled (flush: records are
  // written on the loop thread just before the callback).
  REQUIRE(eventually([&] { return recorder->count() == 1; }));
  CHECK(recorder->recent(1)[0].status == RequestStatus::cancelled);
}

TEST_CASE("destroying the client with 500 calls in flight cancels each one, with a record each") {
  SimFixture f;
  sim::Fault hold;
  hold.delay = 120s;
  f.sim.set_fault(hold);
  auto recorder = std::make_shared<MemoryRecorder>(1000);
  std::atomic<int> cancelled{0}, other{0};
  constexpr int kCalls = 500;
  {
    auto o = f.options();
    o.recorders.push_back(recorder);
    TaotokenClient client(o);
    for (int i = 0; i < kCalls; ++i)
      client.chat_async(SimFixture::ask("in flight"), [&](Result<ChatCompletion> r) {
        if (!r && r.error().kind() == ErrorKind::cancelled) ++cancelled;
        else ++other;
      });
    REQUIRE(eventually([&] { return f.sim.request_count() == kCalls; }));
  }  // the last handle goes: every call ends now, not in 120 s
  CHECK(cancelled == kCalls);
  CHECK(other == 0);
  CHECK(recorder->count() == kCalls);
  CHECK(recorder->summary().total.cancelled == kCalls);
  f.sim.set_fault(std::nullopt);
}

TEST_CASE("a completion callback may destroy the last client handle") {
  SimFixture f;
  sim::Fault slow;
  slow.delay = 120s;
  slow.session = "slow";
  f.sim.set_fault(slow);
  auto recorder = std::make_shared<MemoryRecorder>(100);
  auto o = f.options();
  o.recorders.push_back(recorder);
  auto holder = std::make_shared<std::optional<TaotokenClient>>(TaotokenClient(o));
  Latch slow_done(3);
  std::atomic<int> slow_cancelled{0};
  RequestOptions slow_ro;
  slow_ro.headers.emplace_back("X-Sim-Session", "slow");
  for (int i = 0; i < 3; ++i)
    (*holder)->chat_async(SimFixture::ask("slow"), [&](Result<ChatCompletion> r) {
      if (!r && r.error().kind() == ErrorKind::cancelled) ++slow_cancelled;
      slow_done.count_down();
    }, slow_ro);
  REQUIRE(eventually([&] { return f.sim.request_count() == 3; }));
  std::promise<bool> fast_ok;
  (*holder)->chat_async(SimFixture::ask("fast"), [holder, &fast_ok](Result<ChatCompletion> r) {
    holder->reset();  // the last handle, destroyed on the loop thread
    fast_ok.set_value(r.ok());
  });
  holder.reset();  // only the callback holds the client now
  CHECK(fast_ok.get_future().get());
  REQUIRE(slow_done.wait());
  CHECK(slow_cancelled == 3);
  CHECK(recorder->count() == 4);
  // The loop thread exits on its own.
  CHECK(eventually([&] { return thread_count("taotoken-loop") == 0; }));
  f.sim.set_fault(std::nullopt);
}

TEST_CASE("a call waiting 1 s on Retry-After does not hold up 100 others") {
  SimFixture f;
  sim::Fault limited;
  limited.status = 429;
  limited.session = "limited";
  limited.headers.emplace_back("Retry-After", "1");
  limited.replace_body = true;
  limited.body = R"({"error":{"message":"slow down","type":"rate_limit","param":null,"code":null}})";
  f.sim.push_fault(limited);
  auto o = f.options(/*retries=*/true);
  std::promise<void> retry_scheduled;
  o.on_retry = [&](const RetryEvent&) { retry_scheduled.set_value(); };
  TaotokenClient client(o);
  const int threads_before = thread_count();

  std::atomic<bool> limited_done{false};
  std::promise<Result<ChatCompletion>> limited_result;
  RequestOptions ro;
  ro.headers.emplace_back("X-Sim-Session", "limited");
  client.chat_async(SimFixture::ask("patient"), [&](Result<ChatCompletion> r) {
    limited_done = true;
    limited_result.set_value(std::move(r));
  }, ro);
  retry_scheduled.get_future().get();  // it is now waiting out its Retry-After

  Latch others(100);
  std::atomic<int> others_ok{0}, finished_while_waiting{0};
  for (int i = 0; i < 100; ++i)
    client.chat_async(SimFixture::ask("quick"), [&](Result<ChatCompletion> r) {
      if (r.ok()) ++others_ok;
      if (!limited_done) ++finished_while_waiting;
      others.count_down();
    });
  REQUIRE(others.wait());
  CHECK(others_ok == 100);
  CHECK(finished_while_waiting == 100);
  CHECK(thread_count() <= threads_before);  // nobody sleeps: no thread was added for the wait
  auto r = limited_result.get_future().get();
  REQUIRE(r.ok());
  CHECK(r->attempts == 2);
  CHECK(r->attempt_log.at(1).delay_before == 1000ms);
}

TEST_CASE("the in-flight cap queues calls, then fails fast with overloaded") {
  SimFixture f;
  sim::Fault hold;
  hold.hold_until_requests = 1000000;  // never answers: the calls stay in flight
  f.sim.set_fault(hold);
  auto o = f.options();
  o.max_in_flight = 4;
  o.max_queued = 4;
  TaotokenClient client(o);
  std::vector<AsyncCall> calls;
  std::mutex mu;
  std::vector<ErrorKind> kinds;
  Latch latch(10);
  for (int i = 0; i < 10; ++i)
    calls.push_back(client.chat_async(SimFixture::ask("capped"), [&](Result<ChatCompletion> r) {
      {
        std::lock_guard<std::mutex> g(mu);
        kinds.push_back(r ? ErrorKind::invalid_argument : r.error().kind());
      }
      latch.count_down();
    }));
  // 4 run, 4 wait, 2 are refused at once.
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> g(mu);
    return kinds.size() == 2;
  }));
  CHECK(kinds[0] == ErrorKind::overloaded);
  CHECK(kinds[1] == ErrorKind::overloaded);
  REQUIRE(eventually([&] { return f.sim.request_count() == 4; }));
  // Cancel the waiting ones first (they must never be sent), then the rest.
  for (int i = 4; i < 10; ++i) calls[static_cast<std::size_t>(i)].cancel();
  for (int i = 0; i < 4; ++i) calls[static_cast<std::size_t>(i)].cancel();
  REQUIRE(latch.wait());
  CHECK(f.sim.request_count() == 4);
  std::lock_guard<std::mutex> g(mu);
  CHECK(std::count(kinds.begin(), kinds.end(), ErrorKind::cancelled) == 8);
  f.sim.set_fault(std::nullopt);
}

TEST_CASE("max_queued = 0 makes the cap fail fast; a freed slot admits the next call") {
  SimFixture f;
  auto o = f.options();
  o.max_in_flight = 1;
  o.max_queued = 0;
  TaotokenClient client(o);
  sim::Fault slow;
  slow.delay = 300ms;
  f.sim.push_fault(slow);
  auto first = client.chat_async(SimFixture::ask("first"));
  REQUIRE(eventually([&] { return f.sim.request_count() == 1; }));
  auto refused = client.chat(SimFixture::ask("second"));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().kind() == ErrorKind::overloaded);
  CHECK_THAT(refused.error().message(), Catch::Contains("max_in_flight"));
  REQUIRE(first.get().ok());
  CHECK(client.chat(SimFixture::ask("third")).ok());
}

TEST_CASE("callback_executor runs completion callbacks on the host's thread") {
  SimFixture f;
  auto o = f.options();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::function<void()>> tasks;
  o.callback_executor = [&](std::function<void()> fn) {
    std::lock_guard<std::mutex> g(mu);
    tasks.push_back(std::move(fn));
    cv.notify_all();
  };
  TaotokenClient client(o);
  std::thread::id ran_on;
  bool ok = false;
  client.chat_async(SimFixture::ask("elsewhere"), [&](Result<ChatCompletion> r) {
    ran_on = std::this_thread::get_id();
    ok = r.ok();
  });
  std::function<void()> task;
  {
    std::unique_lock<std::mutex> g(mu);
    REQUIRE(cv.wait_for(g, 30s, [&] { return !tasks.empty(); }));
    task = std::move(tasks.front());
  }
  task();  // the host runs it here, on the test's thread
  CHECK(ran_on == std::this_thread::get_id());
  CHECK(ok);
}

TEST_CASE("a synchronous call from a loop callback fails fast instead of deadlocking") {
  SimFixture f;
  auto client = f.client();
  std::promise<Result<ChatCompletion>> inner;
  client.chat_async(SimFixture::ask("outer"), [&](Result<ChatCompletion>) {
    inner.set_value(client.chat(SimFixture::ask("inner")));
  });
  auto r = inner.get_future().get();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().kind() == ErrorKind::invalid_argument);
  CHECK_THAT(r.error().message(), Catch::Contains("_async"));
}

namespace {
std::string this_thread_name() {
  char name[32] = {0};
  ::pthread_getname_np(::pthread_self(), name, sizeof name);
  return name;
}
}  // namespace

TEST_CASE("a sync call driving the idle loop hands it over when async work arrives") {
  // A lone synchronous call runs the loop on its own thread (no hand-over);
  // an async call posted meanwhile must still complete on the loop thread,
  // and both get their results.
  SimFixture f;
  sim::Fault slow;
  slow.delay = 300ms;
  slow.session = "sync";
  f.sim.push_fault(slow);
  auto client = f.client();
  RequestOptions sync_ro;
  sync_ro.headers.emplace_back("X-Sim-Session", "sync");
  // (Catch assertions stay on this thread.)
  bool in_flight = false, async_ok = false;
  std::string async_thread;
  std::thread other([&] {
    in_flight = eventually([&] { return f.sim.request_count() == 1; });  // the sync call is in flight
    std::promise<std::pair<bool, std::string>> p;
    client.chat_async(SimFixture::ask("async meanwhile"), [&](Result<ChatCompletion> r) {
      p.set_value({r.ok() && r->text() == "Echo: async meanwhile", this_thread_name()});
    });
    std::tie(async_ok, async_thread) = p.get_future().get();
  });
  auto r = client.chat(SimFixture::ask("sync first"), sync_ro);
  other.join();
  CHECK(in_flight);
  CHECK(async_ok);
  CHECK(async_thread == "taotoken-loop");
  REQUIRE(r.ok());
  CHECK(r->text() == "Echo: sync first");
  // And the loop still serves both kinds afterwards.
  CHECK(client.chat(SimFixture::ask("again")).ok());
  CHECK(client.chat_async(SimFixture::ask("again async")).get().ok());
}

TEST_CASE("async completion callbacks run on the loop thread, sync stream callbacks on the caller's") {
  SimFixture f;
  auto client = f.client();
  const auto caller = std::this_thread::get_id();
  bool chunks_on_caller = true;
  int chunks = 0;
  auto r = client.chat_stream(SimFixture::ask("where am I"), [&](const ChatCompletionChunk&) {
    chunks_on_caller = chunks_on_caller && std::this_thread::get_id() == caller;
    ++chunks;
    return true;
  });
  REQUIRE(r.ok());
  CHECK(chunks > 0);
  CHECK(chunks_on_caller);
  std::promise<std::string> where;
  client.chat_async(SimFixture::ask("and now"), [&](Result<ChatCompletion>) { where.set_value(this_thread_name()); });
  CHECK(where.get_future().get() == "taotoken-loop");
}

TEST_CASE("sync and async calls share one connection pool") {
  SimFixture f;
  auto client = f.client();
  REQUIRE(client.chat(SimFixture::ask("sync")).ok());
  REQUIRE(client.chat_async(SimFixture::ask("async")).get().ok());
  REQUIRE(client.chat(SimFixture::ask("sync again")).ok());
  std::promise<bool> streamed;
  client.chat_stream_async(SimFixture::ask("async stream"), nullptr,
                           [&](Result<ChatCompletion> r) { streamed.set_value(r.ok()); });
  REQUIRE(streamed.get_future().get());
  const auto reqs = f.sim.requests();
  REQUIRE(reqs.size() == 4);
  for (const auto& q : reqs) CHECK(q.connection_id == reqs.front().connection_id);  // one kept-alive connection
}

TEST_CASE("max_connections_per_host caps the connections to the upstream") {
  SimFixture f;
  auto o = f.options();
  o.max_connections_per_host = 2;
  TaotokenClient client(o);
  std::vector<std::future<Result<ChatCompletion>>> calls;
  for (int i = 0; i < 20; ++i) calls.push_back(client.chat_async(SimFixture::ask("capped " + std::to_string(i))));
  for (int i = 0; i < 20; ++i) {
    auto r = calls[static_cast<std::size_t>(i)].get();
    REQUIRE(r.ok());
    CHECK(r->text() == "Echo: capped " + std::to_string(i));
  }
  std::set<std::uint64_t> connections;
  for (const auto& q : f.sim.requests()) connections.insert(q.connection_id);
  CHECK(connections.size() <= 2);

  // Without the cap the same burst opens more than two.
  SimFixture g;
  auto client2 = g.client();
  sim::Fault slow;
  slow.delay = 100ms;  // so the burst overlaps
  g.sim.set_fault(slow);
  std::vector<std::future<Result<ChatCompletion>>> more;
  for (int i = 0; i < 20; ++i) more.push_back(client2.chat_async(SimFixture::ask("free")));
  for (auto& m : more) REQUIRE(m.get().ok());
  std::set<std::uint64_t> free_connections;
  for (const auto& q : g.sim.requests()) free_connections.insert(q.connection_id);
  CHECK(free_connections.size() > 2);
}

// ---- found in review: callbacks, queues and deadlines

TEST_CASE("a sync stream's callback may make other calls of the same client") {
  SimFixture f;
  auto client = f.client();
  std::string words;
  for (int i = 0; i < 30; ++i) words += "w" + std::to_string(i) + " ";
  int nested_ok = 0, chunks = 0;
  auto r = client.chat_stream(SimFixture::ask(words), [&](const ChatCompletionChunk&) {
    if (chunks++ == 2) {
      // A sync call and a future wait, from inside the callback: the loop
      // is not held by this thread while callbacks run.
      if (client.chat(SimFixture::ask("nested sync")).ok()) ++nested_ok;
      if (client.chat_async(SimFixture::ask("nested future")).get().ok()) ++nested_ok;
    }
    return true;
  });
  REQUIRE(r.ok());
  CHECK(nested_ok == 2);
}

TEST_CASE("a pull stream whose consumer makes another call mid-stream does not hang") {
  SimFixture f;
  auto client = f.client();
  std::string words;
  for (int i = 0; i < 400; ++i) words += "w" + std::to_string(i) + " ";  // more chunks than the queue holds
  auto stream = client.stream(SimFixture::ask(words));
  auto first = stream.next();
  REQUIRE(first);
  REQUIRE(first->ok());
  std::this_thread::sleep_for(100ms);  // let the producer fill its queue
  auto other = client.chat(SimFixture::ask("meanwhile"));
  REQUIRE(other.ok());
  int rest = 0;
  while (auto c = stream.next()) {
    REQUIRE(c->ok());
    ++rest;
  }
  CHECK(rest > 256);
  CHECK(stream.result().ok());
}

TEST_CASE("a slow sync-stream consumer pauses the transfer without tripping the idle timeout") {
  sim::SimulatorOptions so;
  so.max_fragment = 4096;  // the stream arrives at once: the queue fills and the transfer pauses
  so.max_fragment_delay = std::chrono::microseconds(0);
  SimFixture f(so);
  auto o = f.options();
  o.idle_timeout = 300ms;
  TaotokenClient client(o);
  std::string words;
  for (int i = 0; i < 600; ++i) words += "w" + std::to_string(i) + " ";
  bool slept = false;
  auto r = client.chat_stream(SimFixture::ask(words), [&](const ChatCompletionChunk&) {
    if (!slept) {
      slept = true;
      std::this_thread::sleep_for(1500ms);  // the queue fills up and the transfer pauses meanwhile
    }
    return true;
  });
  INFO((r ? std::string() : r.error().describe()));
  REQUIRE(r.ok());
  CHECK(r->text().size() > 2000);
}

TEST_CASE("queued calls end at their deadline while the slot stays busy, thousands of them") {
  SimFixture f;
  auto o = f.options();
  o.max_in_flight = 1;
  TaotokenClient client(o);
  sim::Fault slow;
  slow.delay = 4s;
  f.sim.push_fault(slow);
  auto first = client.chat_async(SimFixture::ask("holds the slot"));
  REQUIRE(eventually([&] { return f.sim.request_count() == 1; }));
  constexpr int kQueued = 2000;
  Latch latch(kQueued);
  std::atomic<int> timeouts{0};
  std::atomic<bool> first_done_before{false};
  RequestOptions ro;
  ro.timeout = 300ms;
  for (int i = 0; i < kQueued; ++i)
    client.chat_async(
        SimFixture::ask("queued"),
        [&](Result<ChatCompletion> r) {
          if (!r && r.error().kind() == ErrorKind::timeout) ++timeouts;
          latch.count_down();
        },
        ro);
  REQUIRE(latch.wait());
  // Their deadlines ended them while the first call still held the slot.
  CHECK(first.wait_for(0s) == std::future_status::timeout);
  CHECK(timeouts == kQueued);
  REQUIRE(first.get().ok());
  CHECK(f.sim.request_count() == 1);  // none of them was sent
}

TEST_CASE("calls cancelled while queued free their place in max_queued") {
  SimFixture f;
  sim::Fault hold;
  hold.hold_until_requests = 1000000;
  f.sim.set_fault(hold);
  auto o = f.options();
  o.max_in_flight = 1;
  o.max_queued = 1;
  TaotokenClient client(o);
  std::promise<Result<ChatCompletion>> a_done, b_done, c_done;
  auto a = client.chat_async(SimFixture::ask("a"), [&](Result<ChatCompletion> r) { a_done.set_value(std::move(r)); });
  REQUIRE(eventually([&] { return f.sim.request_count() == 1; }));
  auto b = client.chat_async(SimFixture::ask("b"), [&](Result<ChatCompletion> r) { b_done.set_value(std::move(r)); });
  b.cancel();
  auto rb = b_done.get_future().get();
  REQUIRE_FALSE(rb.ok());
  CHECK(rb.error().kind() == ErrorKind::cancelled);
  // b's place is free again: c waits in the queue instead of being refused.
  auto c = client.chat_async(SimFixture::ask("c"), [&](Result<ChatCompletion> r) { c_done.set_value(std::move(r)); });
  auto cf = c_done.get_future();
  CHECK(cf.wait_for(200ms) == std::future_status::timeout);  // queued, not refused (refusal is immediate)
  c.cancel();
  auto rc = cf.get();
  REQUIRE_FALSE(rc.ok());
  CHECK(rc.error().kind() == ErrorKind::cancelled);
  a.cancel();
  CHECK(a_done.get_future().get().error().kind() == ErrorKind::cancelled);
  f.sim.set_fault(std::nullopt);
}

TEST_CASE("an async call started from a hook of a caller-driven sync call runs on the loop thread") {
  // The sync stream's caller drives the idle loop; its on_retry hook starts
  // an async call; its chunk callback then waits for that call. The async
  // call must be driven (and completed) by the loop thread.
  SimFixture f;
  sim::Fault unavailable;
  unavailable.status = 503;
  unavailable.session = "stream";
  unavailable.replace_body = true;
  unavailable.body = R"({"error":{"message":"busy","type":"server_error","param":null,"code":null}})";
  f.sim.push_fault(unavailable);
  sim::Fault slow;
  slow.delay = 300ms;
  slow.session = "side";
  f.sim.push_fault(slow);
  auto o = f.options(/*retries=*/true);
  o.sleep_for = [](std::chrono::milliseconds) {};
  std::optional<TaotokenClient> client_slot;
  std::future<Result<ChatCompletion>> side;
  std::string side_thread;
  o.on_retry = [&](const RetryEvent&) {
    RequestOptions side_ro;
    side_ro.headers.emplace_back("X-Sim-Session", "side");
    std::promise<Result<ChatCompletion>> p;
    side = p.get_future();
    client_slot->chat_async(
        SimFixture::ask("side call"),
        [&side_thread, p = std::make_shared<std::promise<Result<ChatCompletion>>>(std::move(p))](
            Result<ChatCompletion> r) mutable {
          side_thread = this_thread_name();
          p->set_value(std::move(r));
        },
        side_ro);
  };
  client_slot.emplace(o);
  RequestOptions ro;
  ro.headers.emplace_back("X-Sim-Session", "stream");
  bool side_ok = false;
  auto r = client_slot->chat_stream(SimFixture::ask("main stream"), [&](const ChatCompletionChunk&) {
    if (side.valid()) side_ok = side.get().ok();  // waits for the side call
    return true;
  }, ro);
  REQUIRE(r.ok());
  CHECK(r->attempts == 2);
  CHECK(side_ok);
  CHECK(side_thread == "taotoken-loop");
}

TEST_CASE("pull streams run on the loop: no thread each, one record each, a loop callback may not block on one") {
  SimFixture f;
  auto recorder = std::make_shared<MemoryRecorder>(100);
  auto o = f.options();
  o.recorders = {recorder};
  TaotokenClient client(o);
  CHECK(client.chat(SimFixture::ask("warm up")).ok());  // the loop thread exists from here on
  const int threads_before = thread_count();
  {
    // Eight pull streams open at once, read in turns: still the same threads.
    std::vector<ChatStream> streams;
    for (int i = 0; i < 8; ++i) streams.push_back(client.stream(SimFixture::ask("one two three four five six")));
    int peak = thread_count();
    std::vector<std::string> texts(streams.size());
    for (bool more = true; more;) {
      more = false;
      for (std::size_t i = 0; i < streams.size(); ++i)
        if (auto c = streams[i].next()) {
          REQUIRE(c->ok());
          for (const auto& d : (*c)->choices)
            if (d.content) texts[i] += *d.content;
          more = true;
        }
      peak = std::max(peak, thread_count());
    }
    CHECK(peak == threads_before);
    for (std::size_t i = 0; i < streams.size(); ++i) {
      auto r = streams[i].result();
      REQUIRE(r.ok());
      CHECK(r->text() == texts[i]);
      CHECK(r->text() == "Echo: one two three four five six");
    }
  }
  CHECK(recorder->count() == 9);  // the warm-up and the eight streams, once each
  {
    // Left early: by the time the stream is destroyed its call has ended and is recorded as cancelled.
    f.stall_next_stream();
    ChatStream s = client.stream(SimFixture::ask("one two three four five six seven"));
    auto first = s.next();
    REQUIRE(first);
    REQUIRE(first->ok());
  }
  REQUIRE(recorder->count() == 10);
  CHECK(recorder->recent(1).at(0).status == RequestStatus::cancelled);
  // Read from a loop callback while its call is still going (stalled), a
  // pull stream says so instead of waiting for itself.
  f.stall_next_stream();
  ChatStream outer = client.stream(SimFixture::ask("one two three four five six seven"));
  std::promise<std::optional<Result<ChatCompletionChunk>>> from_loop;
  client.chat_async(SimFixture::ask("x"), [&](Result<ChatCompletion>) { from_loop.set_value(outer.next()); });
  auto got = from_loop.get_future().get();
  REQUIRE(got);
  REQUIRE_FALSE(got->ok());
  CHECK(got->error().kind() == ErrorKind::invalid_argument);
  auto first = outer.next();  // and from here it works
  REQUIRE(first);
  CHECK(first->ok());
}

TEST_CASE("a range-for over an open pull stream on the loop thread ends after one error element") {
  SimFixture f;
  auto client = f.client();
  f.stall_next_stream();
  ChatStream s = client.stream(SimFixture::ask("one two three four five six seven"));
  std::promise<std::pair<int, int>> seen;  // elements, errors
  client.chat_async(SimFixture::ask("x"), [&](Result<ChatCompletion>) {
    int elements = 0, errors = 0;
    for (auto& c : s) {
      ++elements;
      if (!c.ok()) ++errors;
      if (elements > 100) break;  // (a hang detector, not a limit)
    }
    seen.set_value({elements, errors});
  });
  const auto [elements, errors] = seen.get_future().get();
  CHECK(elements == 1);
  CHECK(errors == 1);
}
