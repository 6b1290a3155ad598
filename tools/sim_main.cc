// taotoken-sim: runs the local OpenAI-compatible simulator until SIGINT or
// SIGTERM. See `taotoken-sim --help`.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "taotoken/simulator.h"

namespace {

void usage(std::FILE* out) {
  std::fputs(
      "usage: taotoken-sim [--host ADDR] [--port N] [--port-file FILE] [--api-key KEY]\n"
      "                    [--fail-first N --fail-status CODE [--retry-after SECONDS]]\n"
      "                    [--delay-ms MS] [--hold-until N]\n"
      "                    [--max-fragment BYTES] [--fragment-delay-us US]\n"
      "Serves POST /v1/chat/completions (echoes the last user message) and GET /v1/models\n"
      "on 127.0.0.1 until SIGINT/SIGTERM. --port 0 (default) picks a free port;\n"
      "--port-file writes it to FILE once listening. --hold-until N holds every answer until N\n"
      "requests have arrived. Streams go out in random fragments of 1..--max-fragment bytes\n"
      "(default 48) with random pauses of 0..--fragment-delay-us (default 1000).\n",
      out);
}

}  // namespace

int main(int argc, char** argv) try {
  taotoken::sim::SimulatorOptions opts;
  std::string port_file;
  int fail_first = 0, fail_status = 503;
  std::string retry_after;
  long delay_ms = 0;
  std::size_t hold_until = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "taotoken-sim: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--host") opts.host = next();
    else if (a == "--port") opts.port = static_cast<std::uint16_t>(std::stoi(next()));
    else if (a == "--port-file") port_file = next();
    else if (a == "--api-key") opts.api_key = next();
    else if (a == "--fail-first") fail_first = std::stoi(next());
    else if (a == "--fail-status") fail_status = std::stoi(next());
    else if (a == "--retry-after") retry_after = next();
    else if (a == "--delay-ms") delay_ms = std::stol(next());
    else if (a == "--hold-until") hold_until = static_cast<std::size_t>(std::stoul(next()));
    else if (a == "--max-fragment") opts.max_fragment = static_cast<std::size_t>(std::stoul(next()));
    else if (a == "--fragment-delay-us") opts.max_fragment_delay = std::chrono::microseconds(std::stol(next()));
    else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "taotoken-sim: unknown argument %s\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }
  opts.record_requests = false;  // a long-running server must not grow

  // Block the stop signals before any thread starts, then wait for one.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  taotoken::sim::Simulator sim(opts);
  try {
    sim.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "taotoken-sim: %s\n", e.what());
    return 1;
  }
  if (fail_first > 0) {
    taotoken::sim::Fault f;
    f.status = fail_status;
    f.replace_body = true;
    f.body = R"({"error":{"message":"simulated failure","type":"server_error","param":null,"code":null}})";
    if (!retry_after.empty()) f.headers.emplace_back("Retry-After", retry_after);
    sim.push_fault(f, fail_first);
  }
  if (delay_ms > 0 || hold_until > 0) {
    taotoken::sim::Fault f;
    f.delay = std::chrono::milliseconds(delay_ms);
    f.hold_until_requests = hold_until;
    sim.set_fault(f);
  }
  if (!port_file.empty()) {
    std::ofstream(port_file) << sim.port() << "\n";
  }
  std::printf("taotoken-sim listening on %s\n", sim.base_url().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  sim.stop();
  return 0;
} catch (const std::invalid_argument&) {
  std::fprintf(stderr, "taotoken-sim: a numeric option got a value that is not a number\n");
  return 2;
} catch (const std::out_of_range&) {
  std::fprintf(stderr, "taotoken-sim: a numeric option is out of range\n");
  return 2;
}
