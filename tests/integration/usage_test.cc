// Usage recording through real requests: exactly one record per request,
// whatever happened, with the right fields; JSONL files; prices; summaries.
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <thread>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <iterator>
#include <mutex>

#include "fixtures.h"
#include "sim_fixture.h"
#include "taotoken/recorders.h"

using namespace taotoken;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct Recorded {
  std::shared_ptr<MemoryRecorder> memory = std::make_shared<MemoryRecorder>(10000);
  ClientOptions options(const SimFixture& f, bool retries = false) const {
    auto o = f.options(retries);
    o.recorders = {memory};
    o.sleep_for = [](std::chrono::milliseconds) {};
    return o;
  }
  RequestRecord only() const {
    REQUIRE(memory->count() == 1);
    return memory->recent(1).at(0);
  }
};

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("taotoken-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A FIFO whose reader opens it and reads nothing until release(): the pipe
// fills and the recorder's write(2) blocks, like a hung disk. Everything
// read (up to EOF, after release()) is in lines_read().
class StuckFifo {
 public:
  explicit StuckFifo(const fs::path& dir) : path_((dir / "u.fifo").string()) {
    REQUIRE(::mkfifo(path_.c_str(), 0600) == 0);
    reader_ = std::thread([this, ready = go_.get_future()]() mutable {
      std::ifstream in(path_, std::ios::binary);
      ready.wait();
      got_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    });
  }
  ~StuckFifo() {
    if (!released_) go_.set_value();
    if (reader_.joinable()) reader_.join();
  }
  const std::string& path() const { return path_; }
  void release() {
    released_ = true;
    go_.set_value();
  }
  // Waits for EOF (the writer closed the file): the lines read.
  std::size_t lines_read() {
    reader_.join();
    return static_cast<std::size_t>(std::count(got_.begin(), got_.end(), '\n'));
  }

 private:
  std::string path_;
  std::promise<void> go_;
  bool released_ = false;
  std::string got_;
  std::thread reader_;
};

}  // namespace

TEST_CASE("a successful chat is recorded once with its usage, cost and tags") {
  SimFixture f;
  Recorded rec;
  auto o = rec.options(f);
  auto prices = std::make_shared<PriceTable>();
  prices->set("claude-sonnet-4-6", {3.0, 15.0, 0.3});
  o.prices = prices;
  o.record_request_summary = true;
  RequestOptions ro;
  ro.tags = {{"user", "alice"}, {"feature", "search"}};
  auto r = TaotokenClient(o).chat(SimFixture::ask("hello there"), ro);
  REQUIRE(r.ok());
  RequestRecord x = rec.only();
  CHECK(x.request_id == r->request_id);
  CHECK(x.upstream_request_id == "sim-1");
  CHECK(x.endpoint == "chat");
  CHECK(x.requested_model == "claude-sonnet-4-6");
  CHECK(x.model == "claude-sonnet-4-6");
  CHECK(x.status == RequestStatus::success);
  CHECK(x.http_status == 200);
  CHECK_FALSE(x.error_kind);
  CHECK(x.attempts.size() == 1);
  CHECK(x.prompt_tokens == 6);
  CHECK(x.completion_tokens == 3);
  CHECK(x.total_tokens == 9);
  CHECK(x.cached_tokens == 0);
  REQUIRE(x.estimated_cost);
  CHECK(*x.estimated_cost == Approx((6 * 3.0 + 3 * 15.0) / 1e6));
  CHECK(x.tags == ro.tags);
  REQUIRE(x.request_summary);
  CHECK_THAT(*x.request_summary, Catch::Contains(R"("message_count":1)"));
  CHECK(x.request_summary->find("hello there") == std::string::npos);  // no text unless enabled
  CHECK_FALSE(x.streamed);
  CHECK_THAT(x.started_at_iso(), Catch::Matches(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"));
}

TEST_CASE("every kind of ending gives exactly one record") {
  SimFixture f;
  Recorded rec;
  TaotokenClient client(rec.options(f, true));
  auto last = [&] { return rec.memory->recent(1).at(0); };
  std::size_t expected = 0;

  SECTION("each error kind") {
    for (int status : {400, 401, 403, 404, 409, 422, 429, 500}) {
      sim::Fault fault;
      fault.status = status;
      fault.replace_body = true;
      fault.body = R"({"error":{"message":"no"}})";
      f.sim.push_fault(fault, 3);
      auto r = client.chat(SimFixture::ask("x"));
      REQUIRE_FALSE(r.ok());
      CHECK(rec.memory->count() == ++expected);
      CHECK(last().status == RequestStatus::error);
      CHECK(last().error_kind == r.error().kind());
      CHECK(last().http_status == status);
      CHECK(last().attempts.size() == static_cast<std::size_t>(r.error().attempts));
      f.sim.clear_faults();
    }
    ClientOptions bad = rec.options(f);
    bad.base_url = "https://api.example.invalid/v1";
    bad.api_key.clear();
    ::unsetenv("TAOTOKEN_API_KEY");
    auto r = TaotokenClient(bad).chat(SimFixture::ask("x"));
    CHECK(rec.memory->count() == ++expected);
    CHECK(last().error_kind == ErrorKind::invalid_argument);
    CHECK(last().attempts.empty());
  }
  SECTION("retried, then succeeded: the attempts are listed") {
    sim::Fault busy;
    busy.status = 503;
    f.sim.push_fault(busy, 2);
    REQUIRE(client.chat(SimFixture::ask("x")).ok());
    RequestRecord x = rec.only();
    CHECK(x.status == RequestStatus::success);
    REQUIRE(x.attempts.size() == 3);
    CHECK(x.attempts[0].http_status == 503);
    CHECK(x.attempts[0].error == ErrorKind::server_error);
    CHECK_FALSE(x.attempts[2].error);
  }
  SECTION("a timeout") {
    auto o = rec.options(f);
    o.timeout = 200ms;
    sim::Fault slow;
    slow.delay = 3s;
    f.sim.push_fault(slow);
    REQUIRE_FALSE(TaotokenClient(o).chat(SimFixture::ask("x")).ok());
    CHECK(rec.only().error_kind == ErrorKind::timeout);
  }
  SECTION("a stream cancelled by its callback") {
    auto r = client.chat_stream(SimFixture::ask("a b c d"), [](const ChatCompletionChunk&) { return false; });
    REQUIRE_FALSE(r.ok());
    RequestRecord x = rec.only();
    CHECK(x.status == RequestStatus::cancelled);
    CHECK(x.streamed);
    CHECK(x.endpoint == "chat_stream");
  }
  SECTION("a truncated stream keeps the usage that arrived") {
    sim::Fault no_done;
    no_done.stream_no_done = true;
    f.sim.push_fault(no_done);
    REQUIRE_FALSE(client.chat_stream(SimFixture::ask("a b"), nullptr).ok());
    RequestRecord x = rec.only();
    CHECK(x.status == RequestStatus::error);
    CHECK(x.error_kind == ErrorKind::stream_truncated);
    CHECK(x.completion_tokens == 3);
  }
  SECTION("a stream that throws from its callback") {
    CHECK_THROWS(client.chat_stream(SimFixture::ask("a"), [](const ChatCompletionChunk&) -> bool { throw 1; }));
    CHECK(rec.only().status == RequestStatus::cancelled);
  }
  SECTION("a successful stream has usage and time to first token") {
    REQUIRE(client.chat_stream(SimFixture::ask("a b c"), nullptr).ok());
    RequestRecord x = rec.only();
    CHECK(x.status == RequestStatus::success);
    CHECK(x.time_to_first_token);
    CHECK(x.completion_tokens == 4);
  }
  SECTION("forward and forward_stream") {
    auto fw = client.forward(R"({"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]})");
    REQUIRE(fw.ok());
    CHECK(rec.memory->count() == 1);
    CHECK(last().endpoint == "forward");
    CHECK(last().requested_model == "gpt-4o-mini");
    CHECK(last().completion_tokens == 2);
    ForwardSink sink;
    REQUIRE(client.forward_stream(R"({"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]})", sink).ok());
    CHECK(rec.memory->count() == 2);
    CHECK(last().endpoint == "forward_stream");
    CHECK(last().requested_model == "claude-sonnet-4-6");
    CHECK(last().completion_tokens == 2);
  }
}

TEST_CASE("16 threads share recorders; every request is recorded exactly once") {
  SimFixture f;
  Recorded rec;
  const auto dir = temp_dir("jsonl-threads");
  auto jsonl = std::make_shared<JsonlRecorder>((dir / "usage.jsonl").string());
  auto o = rec.options(f);
  o.recorders.push_back(jsonl);
  {
    TaotokenClient client(o);
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t)
      threads.emplace_back([&, t] {
        RequestOptions ro;
        ro.tags = {{"thread", std::to_string(t)}};
        for (int i = 0; i < 25; ++i) (void)client.chat(SimFixture::ask("x"), ro);
      });
    for (auto& th : threads) th.join();
  }
  CHECK(rec.memory->count() == 400);
  auto s = rec.memory->summary();
  CHECK(s.total.requests == 400);
  CHECK(s.total.completion_tokens == 800);
  CHECK(s.by_tag.size() == 16);
  CHECK(s.by_tag.at("thread=3").requests == 25);
  std::ifstream in(dir / "usage.jsonl");
  std::string line;
  int lines = 0;
  simdjson::dom::parser p;
  while (std::getline(in, line)) {
    simdjson::dom::element e;
    REQUIRE(p.parse(line).get(e) == simdjson::SUCCESS);
    ++lines;
  }
  CHECK(lines == 400);
  fs::remove_all(dir);
}

TEST_CASE("JSONL rotates by size and by day, keeping N files that parse back") {
  const auto dir = temp_dir("jsonl-rotate");
  const std::string path = (dir / "u.jsonl").string();
  auto now = std::chrono::system_clock::from_time_t(1795000000);  // a fixed day
  JsonlOptions opts;
  opts.max_bytes = 2000;
  opts.keep = 2;
  opts.now = [&] { return now; };
  JsonlRecorder rec(path, opts);
  RequestRecord r;
  r.request_id = "req_1";
  r.model = "m";
  for (int i = 0; i < 20; ++i) rec.record(r);  // ~600 bytes each: rotates by size
  rec.flush();  // the writer thread does the rotations, in order with the lines
  CHECK(fs::exists(path + ".1"));
  CHECK(fs::exists(path + ".2"));
  CHECK_FALSE(fs::exists(path + ".3"));  // keep = 2
  CHECK(fs::file_size(path) <= 2000);
  fs::remove(path + ".1");
  fs::remove(path + ".2");
  now += std::chrono::hours(24);  // a new day rotates even a small file
  rec.record(r);
  rec.flush();
  CHECK(fs::exists(path + ".1"));
  simdjson::dom::parser p;
  for (const auto& f : {path, path + ".1"}) {
    std::ifstream in(f);
    std::string line;
    while (std::getline(in, line)) CHECK(p.parse(line).error() == simdjson::SUCCESS);
  }
  fs::remove_all(dir);
}

TEST_CASE("JSONL to a FIFO never rotates (a path that is not a regular file is never renamed)") {
  const auto dir = temp_dir("jsonl-fifo");
  const std::string path = (dir / "u.fifo").string();
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  std::string got;
  std::thread reader([&] {
    std::ifstream in(path, std::ios::binary);  // blocks until the recorder opens it
    got.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  });
  auto now = std::chrono::system_clock::from_time_t(1795000000);
  {
    JsonlOptions opts;
    opts.max_bytes = 1000;  // far less than what is written
    opts.now = [&] { return now; };
    JsonlRecorder rec(path, opts);
    RequestRecord r;
    r.request_id = "req_fifo";
    for (int i = 0; i < 10; ++i) rec.record(r);
    now += std::chrono::hours(24);  // a new day would rotate a regular file
    for (int i = 0; i < 10; ++i) rec.record(r);
  }
  reader.join();
  CHECK(std::count(got.begin(), got.end(), '\n') == 20);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
  CHECK_FALSE(fs::exists(path + ".1"));
  fs::remove_all(dir);
}

TEST_CASE("JSONL on a full disk: the hook hears of it, the lines are counted as dropped, requests succeed") {
  SimFixture f;
  std::mutex mu;
  std::vector<std::string> errors;
  auto hook = [&](std::string_view who, std::string_view m) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(std::string(who) + ": " + std::string(m));
  };
  auto jsonl = std::make_shared<JsonlRecorder>("/dev/full", JsonlOptions{}, hook);  // every write: ENOSPC
  auto o = f.options();
  o.recorders = {jsonl};
  TaotokenClient client(o);
  for (int i = 0; i < 5; ++i) CHECK(client.chat(SimFixture::ask("x")).ok());
  jsonl->flush();
  CHECK(jsonl->dropped() == 5);
  std::lock_guard<std::mutex> lock(mu);
  REQUIRE_FALSE(errors.empty());
  CHECK_THAT(errors[0], Catch::Contains("jsonl: write to '/dev/full' failed") && Catch::Contains("space"));
}

TEST_CASE("JSONL on a stuck file: record() does not block; past the pending limit records are dropped and reported") {
  const auto dir = temp_dir("jsonl-stuck");
  StuckFifo fifo(dir);
  std::atomic<int> reported{0};
  std::size_t dropped = 0;
  {
    JsonlOptions opts;
    opts.max_pending_bytes = 256 << 10;  // the pipe holds 64 KiB, then this
    opts.full_queue_wait = std::chrono::milliseconds(1);
    JsonlRecorder rec(fifo.path(), opts, [&](std::string_view, std::string_view m) {
      if (std::string_view(m).find("too far behind") != std::string_view::npos) ++reported;
    });
    RequestRecord r;
    r.request_id = "req_stuck";
    r.error_message = std::string(1000, 'e');  // ~1.6 KB a line
    // ~1.6 MB: far more than the pipe and the pending limit hold. The loop
    // can only end if record() never waits for the stuck write, which
    // cannot return before the reader is released, after the loop.
    for (int i = 0; i < 1000; ++i) rec.record(r);
    dropped = rec.dropped();
    CHECK(dropped > 0);
    CHECK(dropped < 1000);
    CHECK(reported == static_cast<int>(dropped));
    fifo.release();  // the disk comes back: everything accepted is written
  }
  CHECK(fifo.lines_read() == 1000 - dropped);
  fs::remove_all(dir);
}

TEST_CASE("JSONL with a pending limit under a write's worth: a healthy disk drops nothing") {
  const auto dir = temp_dir("jsonl-small");
  const std::string path = (dir / "u.jsonl").string();
  std::size_t dropped = 0;
  {
    JsonlOptions opts;
    opts.max_pending_bytes = 8 << 10;  // ~13 lines; the writer must not wait for 64 KiB
    opts.full_queue_wait = std::chrono::milliseconds(100);  // less than the writer's 200 ms
    JsonlRecorder rec(path, opts);
    RequestRecord r;
    r.request_id = "req_small";
    for (int i = 0; i < 100; ++i) rec.record(r);
    rec.flush();
    dropped = rec.dropped();
  }
  CHECK(dropped == 0);
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(std::count(all.begin(), all.end(), '\n') == 100);
  fs::remove_all(dir);
}

TEST_CASE("JSONL destroyed while its writer is stuck: destruction returns after drain_timeout; the writer finishes later") {
  const auto dir = temp_dir("jsonl-stuck-exit");
  StuckFifo fifo(dir);
  {
    JsonlOptions opts;
    opts.drain_timeout = std::chrono::milliseconds(100);
    JsonlRecorder rec(fifo.path(), opts);
    RequestRecord r;
    r.request_id = "req_late";
    r.error_message = std::string(1000, 'e');
    for (int i = 0; i < 100; ++i) rec.record(r);  // ~160 KB: more than the pipe holds
  }  // returns although the write cannot finish yet (the test would hang otherwise)
  fifo.release();
  CHECK(fifo.lines_read() == 100);  // EOF: the left-behind writer wrote everything and closed the file
  fs::remove_all(dir);
}

TEST_CASE("JSONL through a symbolic link never rotates (the link is not renamed)") {
  const auto dir = temp_dir("jsonl-link");
  const std::string target = (dir / "real.jsonl").string();
  const std::string link = (dir / "u.jsonl").string();
  REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
  {
    JsonlOptions opts;
    opts.max_bytes = 1000;  // far less than what is written
    JsonlRecorder rec(link, opts);
    RequestRecord r;
    r.request_id = "req_link";
    for (int i = 0; i < 10; ++i) rec.record(r);
  }
  CHECK(fs::is_symlink(link));
  CHECK_FALSE(fs::exists(link + ".1"));
  std::ifstream in(target);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(std::count(all.begin(), all.end(), '\n') == 10);
  fs::remove_all(dir);
}

TEST_CASE("an unwritable JSONL path is a clear error at construction") {
  CHECK_THROWS_AS(JsonlRecorder("/nonexistent-dir/x/usage.jsonl"), Error);
}

TEST_CASE("a throwing recorder never fails a request; the hook hears about it") {
  SimFixture f;
  auto o = f.options();
  std::vector<std::string> errors;
  o.recorders = {std::make_shared<CallbackRecorder>([](const RequestRecord&) { throw std::runtime_error("disk full"); })};
  o.on_recorder_error = [&](std::string_view, std::string_view m) { errors.emplace_back(m); };
  CHECK(TaotokenClient(o).chat(SimFixture::ask("x")).ok());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] == "disk full");
}

TEST_CASE("prices: from JSON, lookups, malformed files") {
  auto t = PriceTable::from_json(R"({"gpt-4o":{"input":2.5,"output":10,"cached_input":1.25},"m":{"input":1,"output":2}})");
  REQUIRE(t.ok());
  REQUIRE(t->find("openai/gpt-4o"));
  CHECK(t->find("gpt-4o-2024-08-06")->output_per_million == 10);
  CHECK_FALSE(t->find("claude"));
  Usage u;
  u.prompt_tokens = 1000;
  u.cached_tokens = 400;
  u.completion_tokens = 100;
  CHECK(*t->cost("gpt-4o", u) == Approx((600 * 2.5 + 400 * 1.25 + 100 * 10) / 1e6));
  CHECK_FALSE(t->cost("unknown", u));
  for (const char* bad : {"[1]", "{\"m\":{\"input\":1}}", "{\"m\":{\"input\":\"x\",\"output\":1}}",
                          "{\"m\":{\"input\":1,\"output\":1,\"extra\":2}}", "{\"m\":{\"input\":-1,\"output\":1}}", "{"}) {
    INFO(bad);
    auto r = PriceTable::from_json(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind() == ErrorKind::invalid_argument);
  }
  CHECK_FALSE(PriceTable::from_file("/nonexistent/prices.json").ok());
  CHECK(PriceTable::builtin_estimates().find("gpt-4o-mini"));
}

TEST_CASE("summary percentiles are exact nearest-rank") {
  SummaryBuilder b;
  for (int ms = 1; ms <= 100; ++ms) {
    RequestRecord r;
    r.model = ms % 2 ? "odd" : "even";
    r.latency = std::chrono::milliseconds(ms);
    r.status = ms <= 90 ? RequestStatus::success : RequestStatus::error;
    b.add(r);
  }
  UsageSummary s = b.build();
  CHECK(s.total.requests == 100);
  CHECK(s.total.successes == 90);
  CHECK(s.total.errors == 10);
  CHECK(s.total.latency_p50 == 50ms);
  CHECK(s.total.latency_p95 == 95ms);
  CHECK(s.total.latency_p99 == 99ms);
  CHECK(s.by_model.at("odd").latency_p50 == 49ms);
  simdjson::dom::parser p;
  CHECK(p.parse(s.to_json()).error() == simdjson::SUCCESS);
}

TEST_CASE("the API key never reaches a record or a usage file") {
  SimFixture f;
  Recorded rec;
  const auto dir = temp_dir("jsonl-key");
  auto o = rec.options(f, true);
  auto jsonl = std::make_shared<JsonlRecorder>((dir / "u.jsonl").string());
  o.recorders.push_back(jsonl);
  o.record_request_summary = true;
  o.record_message_text = true;
  TaotokenClient client(o);
  f.calls_with_key_echo(client);
  for (const auto& r : rec.memory->recent(10)) CHECK(r.to_json().find("sk-test-secret-key-123") == std::string::npos);
  jsonl->flush();  // the writer thread has written every line
  std::ifstream in(dir / "u.jsonl");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(all.find("sk-test-secret-key-123") == std::string::npos);
  CHECK_THAT(all, Catch::Contains("[REDACTED]"));
  fs::remove_all(dir);
}

TEST_CASE("forward_stream records a stream that failed after its bytes were passed on") {
  SimFixture f;
  Recorded rec;
  TaotokenClient client(rec.options(f));
  sim::Fault err;
  err.stream_error_after = 1;
  f.sim.push_fault(err);
  ForwardSink sink;
  auto r = client.forward_stream(R"({"stream":true,"messages":[{"role":"user","content":"a b c"}]})", sink);
  REQUIRE(r.ok());  // the bytes went through
  REQUIRE(r->stream_error);
  CHECK(r->stream_error->message() == "simulated mid-stream error");
  RequestRecord x = rec.only();
  CHECK(x.status == RequestStatus::error);
  CHECK(x.error_kind == ErrorKind::server_error);
}

TEST_CASE("a callback that throws still leaves one record") {
  SimFixture f;
  Recorded rec;
  auto o = rec.options(f, true);
  o.on_retry = [](const RetryEvent&) { throw std::runtime_error("hook failed"); };
  sim::Fault busy;
  busy.status = 503;
  f.sim.push_fault(busy);
  CHECK_THROWS_WITH(TaotokenClient(o).chat(SimFixture::ask("x")), "hook failed");
  RequestRecord x = rec.only();
  CHECK(x.status == RequestStatus::cancelled);
  CHECK_THAT(x.error_message, Catch::Contains("hook failed"));
}

TEST_CASE("record summaries stay valid JSON whatever the model name") {
  SimFixture f;
  Recorded rec;
  auto o = rec.options(f);
  o.record_request_summary = true;
  TaotokenClient client(o);
  (void)client.forward(R"({"model":"a\",\"evil\":\"1\\","messages":[{"role":"user","content":"x"}]})");
  RequestRecord x = rec.only();
  REQUIRE(x.request_summary);
  simdjson::dom::parser p;
  simdjson::dom::element e;
  REQUIRE(p.parse(*x.request_summary).get(e) == simdjson::SUCCESS);
  CHECK(e["evil"].error() == simdjson::NO_SUCH_FIELD);
  CHECK(p.parse(x.to_json()).error() == simdjson::SUCCESS);
}

TEST_CASE("bounded summaries: exact below the sample cap, close beyond it, groups capped") {
  SummaryBuilder b(1000, 3);
  for (int i = 1; i <= 100000; ++i) {
    RequestRecord r;
    r.model = "m" + std::to_string(i % 5);  // 5 models, cap 3 groups
    r.latency = std::chrono::milliseconds(i % 1000 + 1);  // uniform 1..1000
    b.add(r);
  }
  UsageSummary s = b.build();
  CHECK(s.total.requests == 100000);
  CHECK(s.by_model.size() == 4);  // m0..m2 and "(other)"
  CHECK(s.by_model.at("(other)").requests == 40000);
  // Reservoir estimate of a uniform 1..1000 distribution.
  CHECK(s.total.latency_p50.count() == Approx(500).margin(60));
  CHECK(s.total.latency_p95.count() == Approx(950).margin(30));
}

TEST_CASE("record timestamps are ISO 8601 UTC with milliseconds, matching gmtime") {
  std::uint64_t x = 88172645463325252ULL;
  for (int i = 0; i < 20000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const auto ms = static_cast<long long>(x % 7258118400000ULL);  // 1970 .. 2200
    RequestRecord r;
    r.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
    const std::time_t s = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&s, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    char expect[48];
    std::snprintf(expect, sizeof expect, "%s.%03lldZ", buf, ms % 1000);
    REQUIRE(r.started_at_iso() == expect);
  }
}
