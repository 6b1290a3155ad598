// Helpers for tests that start a real server process on 127.0.0.1 (openssl
// s_server, nginx): a free port, "is it listening yet", and a throw-away
// self-signed certificate for 127.0.0.1 / localhost.
#ifndef TAOTOKEN_TESTS_SUPPORT_LOCAL_SERVER_H
#define TAOTOKEN_TESTS_SUPPORT_LOCAL_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

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

}  // namespace test_support

#endif
