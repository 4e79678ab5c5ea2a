#pragma once
// JSON-lines access log. Each worker formats into its own buffer and writes whole lines with one
// write(2) when the buffer fills or its flush timer fires (100 ms), so logging costs no lock and
// about one syscall per 32 KiB instead of one per request.
#include <uv.h>

#include <cstdint>
#include <string>

namespace sluice {

struct AccessLogEntry {
  int64_t time_us = 0;  // wall clock at request start
  std::string_view request_id;
  std::string_view client_ip;
  std::string_view method;
  std::string_view path;  // request target as sent
  std::string_view route;
  int status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  std::string_view upstream;
  int64_t upstream_us = -1;  // -1 when no upstream was involved
  int64_t total_us = 0;
  std::string_view error;  // empty when none
  // Room for the decision fields later phases add (limit, risk, lua), already JSON-encoded
  // members without braces, e.g. "\"limit\":{...}".
  std::string_view decisions;
};

class AccessLog {
 public:
  // fd < 0 disables logging. A file descriptor above 2 is owned and closed by stop().
  AccessLog(uv_loop_t* loop, int fd);
  ~AccessLog();
  void write(const AccessLogEntry& e);
  void flush();
  void stop();
  bool enabled() const { return fd_ >= 0; }

 private:
  static void onTimer(uv_timer_t* t);
  int fd_;
  std::string buf_;
  uv_timer_t* timer_;  // heap-allocated: freed by its close callback, so stop() then delete is safe
  bool timer_started_ = false;
  bool stopped_ = false;
  int64_t cached_second_ = -1;
  char cached_prefix_[64] = {0};
};

// Opens an access log target: "stdout", "stderr", "off" (returns -1) or a file path (appended).
int openAccessLogTarget(const std::string& target, std::string* err);

}  // namespace sluice
