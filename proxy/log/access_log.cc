#include "proxy/log/access_log.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
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
  char tbuf[64];
  time_t secs = static_cast<time_t>(e.time_us / 1000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  snprintf(tbuf, sizeof(tbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           static_cast<int>((e.time_us / 1000) % 1000));
  buf_ += "{\"time\":\"";
  buf_ += tbuf;
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
  char nbuf[160];
  snprintf(nbuf, sizeof(nbuf), ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"upstream\":",
           e.status, static_cast<unsigned long long>(e.bytes_in),
           static_cast<unsigned long long>(e.bytes_out));
  buf_ += nbuf;
  if (e.upstream.empty()) buf_ += "null";
  else appendJsonString(&buf_, e.upstream);
  if (e.upstream_us >= 0)
    snprintf(nbuf, sizeof(nbuf), ",\"upstream_time\":%.6f", e.upstream_us / 1e6);
  else
    snprintf(nbuf, sizeof(nbuf), ",\"upstream_time\":null");
  buf_ += nbuf;
  snprintf(nbuf, sizeof(nbuf), ",\"total_time\":%.6f", e.total_us / 1e6);
  buf_ += nbuf;
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
