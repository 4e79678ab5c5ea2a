#pragma once
// Test support for the Redis suite: real redis-server processes on free loopback ports with a
// temp dir each (killed and removed at the end), a three-master Redis Cluster, and a loop helper
// that runs a uv_loop until a condition holds. redis-server missing is a test failure with a
// clear message, never a skip (scripts/install-deps installs it).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/redis/client.h"

namespace sluice::redis::testing {

inline std::string findProgram(const char* name) {
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/usr/sbin"}) {
    std::string p = std::string(dir) + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

inline bool portFree(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

// A port p with p and p + 10000 (the cluster bus) both free.
inline uint16_t pickPort() {
  static std::mt19937 rng(static_cast<uint32_t>(getpid() ^ std::chrono::steady_clock::now().time_since_epoch().count()));
  for (int tries = 0; tries < 1000; tries++) {
    uint16_t p = static_cast<uint16_t>(20000 + rng() % 25000);
    if (portFree(p) && portFree(static_cast<uint16_t>(p + 10000))) return p;
  }
  FAIL("no free loopback port");
  return 0;
}

// Runs a command, returns its stdout.
inline std::string run(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  pclose(f);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

class RedisServer {
 public:
  explicit RedisServer(std::vector<std::string> extra = {}, uint16_t port = 0)
      : extra_(std::move(extra)), port_(port ? port : pickPort()) {
    bin_ = findProgram("redis-server");
    if (bin_.empty()) FAIL("redis-server not found: install it with scripts/install-deps (Debian package redis-server)");
    char tmpl[] = "/tmp/sluice-redis-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    start();
  }
  ~RedisServer() {
    kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  uint16_t port() const { return port_; }
  const std::string& dir() const { return dir_; }
  RedisEndpoint endpoint() const { return {"127.0.0.1", port_}; }

  void start() {
    REQUIRE(pid_ <= 0);
    std::vector<std::string> args{bin_, "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                  "--dir", dir_, "--save", "", "--appendonly", "no",
                                  "--logfile", dir_ + "/redis.log", "--daemonize", "no",
                                  "--enable-debug-command", "local"};
    for (auto& e : extra_) args.push_back(e);
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    REQUIRE(pid_ > 0);
    waitReady();
  }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void restart() {
    kill();
    start();
  }
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

  std::string cli(const std::string& args) const {
    return run("redis-cli -h 127.0.0.1 -p " + std::to_string(port_) + " " + args + " 2>&1");
  }

 private:
  void waitReady() {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port_);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
        const char ping[] = "PING\r\n";
        char buf[64];
        bool ok = write(fd, ping, sizeof(ping) - 1) > 0 && read(fd, buf, sizeof(buf)) > 0;
        close(fd);
        if (ok) return;
      } else {
        close(fd);
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL("redis-server exited at start; log: " << run("cat " + dir_ + "/redis.log"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL("redis-server did not answer on port " << port_);
  }

  std::vector<std::string> extra_;
  uint16_t port_;
  std::string bin_;
  std::string dir_;
  pid_t pid_ = -1;
};

// Three masters, no replicas, on loopback.
class RedisClusterFixture {
 public:
  RedisClusterFixture() {
    for (int i = 0; i < 3; i++) {
      servers_.push_back(std::make_unique<RedisServer>(std::vector<std::string>{
          "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
          "--cluster-node-timeout", "5000"}));
    }
    std::string cmd = "redis-cli --cluster create";
    for (auto& s : servers_) cmd += " 127.0.0.1:" + std::to_string(s->port());
    cmd += " --cluster-replicas 0 --cluster-yes 2>&1";
    std::string out = run(cmd);
    INFO(out);
    REQUIRE(out.find("All 16384 slots covered") != std::string::npos);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      bool ok = true;
      for (auto& s : servers_) ok &= s->cli("CLUSTER INFO").find("cluster_state:ok") != std::string::npos;
      if (ok) break;
      REQUIRE(std::chrono::steady_clock::now() < until);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  RedisServer& server(size_t i) { return *servers_[i]; }
  std::vector<RedisEndpoint> seeds() const {
    std::vector<RedisEndpoint> v;
    for (auto& s : servers_) v.push_back(s->endpoint());
    return v;
  }
  std::string nodeId(size_t i) { return servers_[i]->cli("CLUSTER MYID"); }
  // Index of the server that owns `slot`, as server 0's CLUSTER NODES says.
  size_t ownerOf(uint16_t slot) {
    std::istringstream lines(servers_[0]->cli("CLUSTER NODES"));
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::vector<std::string> f;
      std::string w;
      while (fields >> w) f.push_back(w);
      if (f.size() < 9) continue;
      for (size_t k = 8; k < f.size(); k++) {
        if (f[k][0] == '[') continue;  // migrating/importing markers
        size_t dash = f[k].find('-');
        long lo = std::stol(f[k].substr(0, dash));
        long hi = dash == std::string::npos ? lo : std::stol(f[k].substr(dash + 1));
        if (slot < lo || slot > hi) continue;
        uint16_t port = static_cast<uint16_t>(std::stoi(f[1].substr(f[1].find(':') + 1)));
        for (size_t i = 0; i < servers_.size(); i++) {
          if (servers_[i]->port() == port) return i;
        }
      }
    }
    FAIL("no owner for slot " << slot);
    return 0;
  }

 private:
  std::vector<std::unique_ptr<RedisServer>> servers_;
};

class TestLoop {
 public:
  TestLoop() {
    uv_loop_init(&loop_);
    uv_timer_init(&loop_, &tick_);
  }
  ~TestLoop() {
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    drain();
    uv_loop_close(&loop_);
  }
  uv_loop_t* get() { return &loop_; }

  // Runs the loop until pred() or the timeout; returns pred().
  bool runUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    uv_timer_start(&tick_, [](uv_timer_t*) {}, 2, 2);  // wakes the loop so the clock is checked
    while (!pred() && std::chrono::steady_clock::now() < until) uv_run(&loop_, UV_RUN_ONCE);
    uv_timer_stop(&tick_);
    return pred();
  }
  void runFor(std::chrono::milliseconds d) {
    runUntil([] { return false; }, d);
  }
  // Lets closed handles (a destroyed client's timers and sockets) free themselves.
  void drain() {
    for (int i = 0; i < 10; i++) uv_run(&loop_, UV_RUN_NOWAIT);
  }

 private:
  uv_loop_t loop_;
  uv_timer_t tick_;
};

inline RedisClientOptions standaloneOptions(const RedisServer& s) {
  RedisClientOptions o;
  o.endpoints.push_back(s.endpoint());
  o.commandTimeout = 2 * kSeconds;
  return o;
}

// One command, waited for.
inline RedisResult call(TestLoop& loop, RedisClient& c, std::vector<std::string> args, Nanos timeout = 0) {
  RedisResult out;
  bool done = false;
  c.command(std::move(args), [&](RedisResult& r) {
    out = std::move(r);
    done = true;
  }, timeout);
  loop.runUntil([&] { return done; }, std::chrono::seconds(10));
  REQUIRE(done);
  return out;
}

inline RedisResult evalSync(TestLoop& loop, RedisClient& c, const RedisScriptPtr& s, std::vector<std::string> keys,
                            std::vector<std::string> argv) {
  RedisResult out;
  bool done = false;
  c.eval(s, std::move(keys), std::move(argv), [&](RedisResult& r) {
    out = std::move(r);
    done = true;
  });
  loop.runUntil([&] { return done; }, std::chrono::seconds(10));
  REQUIRE(done);
  return out;
}

inline bool waitConnected(TestLoop& loop, RedisClient& c, size_t nodes = 1) {
  return loop.runUntil([&] { return c.connectedNodes() >= nodes; });
}

}  // namespace sluice::redis::testing
