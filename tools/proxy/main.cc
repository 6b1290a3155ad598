// taotoken-proxy: see `taotoken-proxy --help` and docs/proxy.md.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "proxy_server.h"

namespace {

const char* kUsage =
    "usage: taotoken-proxy [--port N] [--bind ADDR] [--db PATH] [--max-body-bytes N] [--max-retries N]\n"
    "                      [--upstream URL] [--threads N]\n"
    "Serves POST /v1/chat/completions, GET /v1/models, GET /healthz, GET /admin/logs, GET /admin/usage.\n"
    "Environment: PORT (default 3000), TAOTOKEN_PROXY_KEYS (comma-separated internal keys; required to bind\n"
    "beyond loopback), TAOTOKEN_BASE_URL and TAOTOKEN_API_KEY (the upstream), TAOTOKEN_PROXY_DB (default\n"
    "./taotoken-proxy.db; empty disables the database).\n";

std::vector<std::string> split_keys(const char* v) {
  std::vector<std::string> out;
  if (!v) return out;
  std::string s = v, cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur.push_back(c);
    }
  }
  return out;
}

long number(const char* flag, const char* v) {
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (!*v || *end || n < 0) {
    std::fprintf(stderr, "taotoken-proxy: %s expects a non-negative integer\n", flag);
    std::exit(2);
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  taotoken_proxy::ProxyOptions o;
  if (const char* p = std::getenv("PORT")) o.port = static_cast<int>(number("PORT", p));
  if (const char* d = std::getenv("TAOTOKEN_PROXY_DB")) o.db_path = d;
  o.keys = split_keys(std::getenv("TAOTOKEN_PROXY_KEYS"));
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "taotoken-proxy: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") o.port = static_cast<int>(number("--port", value()));
    else if (a == "--bind") o.bind = value();
    else if (a == "--db") o.db_path = value();
    else if (a == "--max-body-bytes") o.max_body_bytes = static_cast<std::size_t>(number("--max-body-bytes", value()));
    else if (a == "--max-retries")
      o.client.retry_policy = taotoken::RetryPolicy::standard(static_cast<int>(number("--max-retries", value())));
    else if (a == "--upstream") o.client.base_url = value();
    else if (a == "--threads") o.threads = static_cast<int>(number("--threads", value()));
    else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "taotoken-proxy: unknown argument %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  o.client.prices = std::make_shared<taotoken::PriceTable>(taotoken::PriceTable::builtin_estimates());

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::unique_ptr<taotoken_proxy::ProxyServer> server;
  try {
    server = std::make_unique<taotoken_proxy::ProxyServer>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "taotoken-proxy: %s\n", e.what());
    return 1;
  }
  std::printf("taotoken-proxy listening on http://%s:%d (upstream %s, %zu internal key(s), db %s)\n", o.bind.c_str(),
              server->port(), o.client.base_url.empty() ? "from TAOTOKEN_BASE_URL or the default" : o.client.base_url.c_str(),
              o.keys.size(), o.db_path.empty() ? "off" : o.db_path.c_str());
  std::fflush(stdout);
  std::thread serving([&] { server->run(); });
  int sig = 0;
  sigwait(&set, &sig);
  std::fprintf(stderr, "taotoken-proxy: signal %d, stopping (in-flight requests finish, records are flushed)\n", sig);
  server->stop();
  serving.join();
  server.reset();  // waits for in-flight requests, then flushes the recorders
  return 0;
}
