#include "core/log.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace sluice {

const char* errorTypeName(ErrorType t) {
  switch (t) {
    case ErrorType::kNone: return "none";
    case ErrorType::kConnectFailed: return "connect_failed";
    case ErrorType::kConnectTimeout: return "connect_timeout";
    case ErrorType::kReadTimeout: return "read_timeout";
    case ErrorType::kSendTimeout: return "send_timeout";
    case ErrorType::kConnectionReset: return "connection_reset";
    case ErrorType::kBadMessage: return "bad_message";
    case ErrorType::kNoHealthyServer: return "no_healthy_server";
    case ErrorType::kTooLarge: return "too_large";
    case ErrorType::kDrain: return "drain";
  }
  return "unknown";
}

namespace log {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_fd{2};
const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void setLevel(LogLevel l) { g_level.store(static_cast<int>(l)); }
LogLevel level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

bool parseLevel(const std::string& s, LogLevel* out) {
  for (int i = 0; i < 4; i++) {
    if (s == kNames[i]) {
      *out = static_cast<LogLevel>(i);
      return true;
    }
  }
  return false;
}

bool setTarget(const std::string& target, std::string* err) {
  if (target == "stderr") { g_fd.store(2); return true; }
  if (target == "stdout") { g_fd.store(1); return true; }
  int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (err) *err = std::string("cannot open ") + target + ": " + strerror(errno);
    return false;
  }
  int old = g_fd.exchange(fd);
  if (old > 2) ::close(old);
  return true;
}

void write(LogLevel lvl, const char* fmt, ...) {
  char buf[4096];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                   kNames[static_cast<int>(lvl)]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = std::min<size_t>(n + m, sizeof(buf) - 2);
  buf[len++] = '\n';
  ssize_t w = ::write(g_fd.load(std::memory_order_relaxed), buf, len);
  (void)w;
}

}  // namespace log
}  // namespace sluice
