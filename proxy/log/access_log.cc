#include "proxy/log/access_log.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "core/strings.h"

namespace sluice {

namespace {
constexpr size_t kFlushBytes = 32 * 1024;
constexpr uint64_t kFlushIntervalMs = 100;

void appendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  // Fast path: most values need no escaping.
  bool clean = true;
  for (unsigned char c : s)
    if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f) {
      clean = false;
      break;
    }
  if (clean) out->append(s);
  else out->append(jsonEscape(s));
  out->push_back('"');
}
void appendInt(std::string* out, int64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

// Microseconds as seconds with six decimals, without floating point.
void appendSeconds(std::string* out, int64_t us) {
  if (us < 0) us = 0;
  appendInt(out, us / 1000000);
  char frac[8] = {'.', 0, 0, 0, 0, 0, 0, 0};
  int64_t f = us % 1000000;
  for (int i = 6; i >= 1; i--) {
    frac[i] = static_cast<char>('0' + f % 10);
    f /= 10;
  }
  out->append(frac, 7);
}

}  // namespace

int openAccessLogTarget(const std::string& target, std::string* err) {
  if (target == "off") return -1;
  if (target == "stdout") return 1;
  if (target == "stderr") return 2;
  int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 && err) *err = "cannot open access log " + target + ": " + strerror(errno);
  return fd;
}

AccessLog::AccessLog(uv_loop_t* loop, int fd) : fd_(fd), timer_(new uv_timer_t) {
  uv_timer_init(loop, timer_);
  timer_->data = this;
  buf_.reserve(kFlushBytes + 4096);
}

AccessLog::~AccessLog() { stop(); }

void AccessLog::stop() {
  if (stopped_) return;
  stopped_ = true;
  flush();
  uv_timer_stop(timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (fd_ > 2) ::close(fd_);
  fd_ = -1;
}

void AccessLog::write(const AccessLogEntry& e) {
  if (fd_ < 0) return;
  // The "YYYY-MM-DDTHH:MM:SS." prefix changes once a second: format it then, not per line.
  int64_t secs = e.time_us / 1000000;
  if (secs != cached_second_) {
    time_t t = static_cast<time_t>(secs);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(cached_prefix_, sizeof(cached_prefix_), "%04d-%02d-%02dT%02d:%02d:%02d.",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_second_ = secs;
  }
  buf_ += "{\"time\":\"";
  buf_ += cached_prefix_;
  int ms = static_cast<int>((e.time_us / 1000) % 1000);
  char msbuf[5] = {static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                   static_cast<char>('0' + ms % 10), 'Z', 0};
  buf_ += msbuf;
  buf_ += "\",\"request_id\":";
  appendJsonString(&buf_, e.request_id);
  buf_ += ",\"client_ip\":";
  appendJsonString(&buf_, e.client_ip);
  buf_ += ",\"method\":";
  appendJsonString(&buf_, e.method);
  buf_ += ",\"path\":";
  appendJsonString(&buf_, e.path);
  buf_ += ",\"route\":";
  appendJsonString(&buf_, e.route);
  buf_ += ",\"status\":";
  appendInt(&buf_, e.status);
  buf_ += ",\"bytes_in\":";
  appendInt(&buf_, static_cast<int64_t>(e.bytes_in));
  buf_ += ",\"bytes_out\":";
  appendInt(&buf_, static_cast<int64_t>(e.bytes_out));
  buf_ += ",\"upstream\":";
  if (e.upstream.empty()) buf_ += "null";
  else appendJsonString(&buf_, e.upstream);
  buf_ += ",\"upstream_time\":";
  if (e.upstream_us >= 0) appendSeconds(&buf_, e.upstream_us);
  else buf_ += "null";
  buf_ += ",\"total_time\":";
  appendSeconds(&buf_, e.total_us);
  if (!e.error.empty()) {
    buf_ += ",\"error\":";
    appendJsonString(&buf_, e.error);
  }
  if (!e.decisions.empty()) {
    buf_ += ',';
    buf_ += e.decisions;
  }
  buf_ += "}\n";
  if (buf_.size() >= kFlushBytes) {
    flush();
  } else if (!timer_started_ && !stopped_) {
    uv_timer_start(timer_, onTimer, kFlushIntervalMs, 0);
    timer_started_ = true;
  }
}

void AccessLog::flush() {
  if (fd_ < 0) {
    buf_.clear();
    return;
  }
  size_t off = 0;
  while (off < buf_.size()) {
    ssize_t n = ::write(fd_, buf_.data() + off, buf_.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;  // a broken log target must never stop the proxy
    }
    off += static_cast<size_t>(n);
  }
  buf_.clear();
}

void AccessLog::onTimer(uv_timer_t* t) {
  auto* self = static_cast<AccessLog*>(t->data);
  self->timer_started_ = false;
  self->flush();
}

}  // namespace sluice
