// sluice-demo-storefront: the stand-in application tier for `make run`, the e2e tests and the
// benchmarks. See demo/README.md for the surface.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "demo/storefront/server.h"
#include "demo/storefront/site.h"

namespace {

using sluice::demo::Shared;
using sluice::demo::Site;
using sluice::demo::Worker;

struct Options {
  std::string host = "127.0.0.1";
  int port = 9080;
  int threads = 1;
  std::string name = "storefront";
  uint64_t idle_timeout_s = 75;
  bool quiet = false;
};

constexpr std::string_view kUsage =
    "usage: sluice-demo-storefront [--host 127.0.0.1] [--port 9080] [--threads N] [--name NAME]\n"
    "                              [--idle-timeout SECONDS] [--quiet]\n";

[[noreturn]] void die_usage(const char* message, const char* arg = nullptr) {
  std::fprintf(stderr, "sluice-demo-storefront: %s%s%s\n%.*s", message, arg ? ": " : "",
               arg ? arg : "", static_cast<int>(kUsage.size()), kUsage.data());
  std::exit(2);
}

bool parse_int(std::string_view text, long min, long max, long* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const std::string copy(text);
  const long v = std::strtol(copy.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) return false;
  *out = v;
  return true;
}

// The name ends up in a response header, so it is restricted to token characters.
bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_inline = false;
    if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline = true;
    }
    auto next = [&]() -> std::string_view {
      if (has_inline) return value;
      if (i + 1 >= argc) die_usage("missing value for", argv[i]);
      return argv[++i];
    };
    long v = 0;
    if (arg == "--host") {
      o.host = next();
    } else if (arg == "--port") {
      if (!parse_int(next(), 0, 65535, &v)) die_usage("bad --port");
      o.port = static_cast<int>(v);
    } else if (arg == "--threads") {
      if (!parse_int(next(), 1, 256, &v)) die_usage("bad --threads");
      o.threads = static_cast<int>(v);
    } else if (arg == "--name") {
      o.name = next();
      if (!valid_name(o.name)) die_usage("--name must be 1-64 of [A-Za-z0-9._-]");
    } else if (arg == "--idle-timeout") {
      if (!parse_int(next(), 0, 86400, &v)) die_usage("bad --idle-timeout");
      o.idle_timeout_s = static_cast<uint64_t>(v);
    } else if (arg == "--quiet" && !has_inline) {
      o.quiet = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fwrite(kUsage.data(), 1, kUsage.size(), stdout);
      std::exit(0);
    } else {
      die_usage("unknown argument", argv[i]);
    }
  }
  if (o.host == "localhost") o.host = "127.0.0.1";
  return o;
}

struct Address {
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family() const { return storage.ss_family; }
  void set_port(int port) {
    if (family() == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(static_cast<uint16_t>(port));
    } else {
      reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(static_cast<uint16_t>(port));
    }
  }
};

bool resolve(const std::string& host, int port, Address* out) {
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out->storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out->storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    out->len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    out->len = sizeof(sockaddr_in6);
  } else {
    return false;
  }
  out->set_port(port);
  return true;
}

// SO_REUSEPORT lets every worker own a listening socket on the same port and lets the kernel
// spread connections across them. libuv 1.44 has no flag for it, hence the raw socket.
int open_listener(const Address& addr, bool reuseport, std::string* error) {
  const int fd = socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    *error = std::string("SO_REUSEPORT: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr.storage), addr.len) != 0) {
    *error = std::string("bind: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (reuseport && ::listen(fd, 4096) != 0) {
    *error = std::string("listen: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

int bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);

  // Signals are taken synchronously by the main thread (sigwait); workers inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a peer gone mid-write is an EPIPE, not a death

  Address addr;
  if (!resolve(opt.host, opt.port, &addr)) die_usage("--host must be an IP address", opt.host.c_str());

  std::string error;
  int port = opt.port;
  if (port != 0) {
    // SO_REUSEPORT would let us silently share the port with a stale storefront left running
    // by an earlier test; a probe without it fails if anyone is listening there.
    const int probe = open_listener(addr, false, &error);
    if (probe < 0) {
      std::fprintf(stderr, "sluice-demo-storefront: %s:%d: %s\n", opt.host.c_str(), port,
                   error.c_str());
      return 1;
    }
    ::close(probe);
  }
  std::vector<int> fds;
  for (int i = 0; i < opt.threads; ++i) {
    const int fd = open_listener(addr, true, &error);
    if (fd < 0) {
      std::fprintf(stderr, "sluice-demo-storefront: %s:%d: %s\n", opt.host.c_str(), port,
                   error.c_str());
      return 1;
    }
    if (port == 0) {  // --port 0: the first socket picks, the others join it
      port = bound_port(fd);
      addr.set_port(port);
    }
    fds.push_back(fd);
  }

  const Site site(opt.name);
  EVP_MD* sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD* sha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  if (sha256 == nullptr || sha1 == nullptr) {
    std::fprintf(stderr, "sluice-demo-storefront: OpenSSL has no SHA-256/SHA-1\n");
    return 1;
  }
  Shared shared;
  shared.site = &site;
  shared.sha256 = sha256;
  shared.sha1 = sha1;
  shared.idle_timeout_ms = opt.idle_timeout_s * 1000;
  shared.quiet = opt.quiet;

  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < opt.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(i, &shared));
    if (const int rc = workers.back()->listen(fds[static_cast<size_t>(i)]); rc != 0) {
      std::fprintf(stderr, "sluice-demo-storefront: listen: %s\n", uv_strerror(rc));
      return 1;
    }
  }
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([w = w.get()] { w->run(); });

  // The sockets are listening already, so connections made after this line queue up even if
  // a worker thread has not reached its loop yet.
  const bool v6 = addr.family() == AF_INET6;
  std::printf("demo storefront %s listening on %s%s%s:%d\n", opt.name.c_str(), v6 ? "[" : "",
              opt.host.c_str(), v6 ? "]" : "", port);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  for (auto& w : workers) w->request_stop();
  for (auto& t : threads) t.join();
  workers.clear();
  EVP_MD_free(sha256);
  EVP_MD_free(sha1);
  if (!opt.quiet) {
    std::fprintf(stderr, "demo storefront %s stopped (%s) after %llu requests\n",
                 opt.name.c_str(), sig == SIGINT ? "SIGINT" : "SIGTERM",
                 static_cast<unsigned long long>(shared.requests.load()));
  }
  return 0;
}
