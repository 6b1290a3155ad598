// Helpers for tests that start a real server process on 127.0.0.1 (openssl
// s_server, nginx): a free port, "is it listening yet", a throw-away
// self-signed certificate for 127.0.0.1 / localhost, and the process itself.
#ifndef TAOTOKEN_TESTS_SUPPORT_LOCAL_SERVER_H
#define TAOTOKEN_TESTS_SUPPORT_LOCAL_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>

extern char** environ;

namespace test_support {

// A loopback port that was free a moment ago.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// True once something accepts connections on 127.0.0.1:port.
inline bool can_connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// Writes dir/key.pem and dir/cert.pem (self-signed, one day, for IP
// 127.0.0.1 and DNS localhost) with the openssl command; false on failure.
inline bool make_self_signed_cert(const std::filesystem::path& dir) {
  const std::string gen = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout '" +
                          (dir / "key.pem").string() + "' -out '" + (dir / "cert.pem").string() +
                          "' >/dev/null 2>&1";
  return std::system(gen.c_str()) == 0;
}

// An HTTPS server process for one test: a fresh directory holding a
// self-signed certificate (cert.pem, key.pem), a free port, and the process
// a /bin/sh script starts (under `timeout` in the script, should the test
// die); stopped and its directory removed on destruction.
struct ServerProcess {
  std::filesystem::path dir;
  int port = 0;
  pid_t pid = 0;

  // The directory (temp/taotoken-<name>-<pid>), the certificate, the port.
  bool prepare(const std::string& name) {
    dir = std::filesystem::temp_directory_path() / ("taotoken-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    port = free_port();
    return make_self_signed_cert(dir);
  }
  // Runs `script`; true once something accepts on the port (5 s at most).
  bool start(const std::string& script) {
    const char* argv[] = {"/bin/sh", "-c", script.c_str(), nullptr};
    if (::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) return false;
    for (int i = 0; i < 200 && !can_connect(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    return can_connect(port);
  }
  ~ServerProcess() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port) + "/v1"; }
};

}  // namespace test_support

#endif
