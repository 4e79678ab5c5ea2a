#pragma once
// Leveled error log. Thread-safe; each call formats into a local buffer and writes one line with
// a single write(2), so lines from different workers never interleave.
#include <cstdarg>
#include <string>

namespace sluice {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

namespace log {

void setLevel(LogLevel level);
LogLevel level();
// Target: "stderr", "stdout" or a file path (appended). Returns false and keeps stderr on failure.
bool setTarget(const std::string& target, std::string* err);
bool parseLevel(const std::string& s, LogLevel* out);
void write(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace log

#define SLUICE_LOG(lvl, ...)                                        \
  do {                                                              \
    if (static_cast<int>(lvl) >= static_cast<int>(::sluice::log::level())) \
      ::sluice::log::write(lvl, __VA_ARGS__);                       \
  } while (0)
#define LOG_DEBUG(...) SLUICE_LOG(::sluice::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) SLUICE_LOG(::sluice::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARN(...) SLUICE_LOG(::sluice::LogLevel::kWarn, __VA_ARGS__)
#define LOG_ERROR(...) SLUICE_LOG(::sluice::LogLevel::kError, __VA_ARGS__)

}  // namespace sluice
