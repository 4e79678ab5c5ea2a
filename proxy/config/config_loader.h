#pragma once
// YAML -> validated Config. Every problem is reported as `file:line:col: message` (1-based, the
// position of the offending node), all of them in one pass, so an operator fixes a file at once.
#include <string>
#include <vector>

#include "proxy/config/config.h"

namespace sluice {

struct ConfigError {
  std::string file;
  int line = 0;  // 1-based; 0 when the error has no position (e.g. file unreadable)
  int col = 0;   // 1-based
  std::string message;
  std::string format() const;  // "file:line:col: message" (or "file: message" without position)
};

struct ConfigLoadResult {
  ConfigPtr config;  // null when errors is non-empty
  std::vector<ConfigError> errors;
  bool ok() const { return config != nullptr && errors.empty(); }
};

ConfigLoadResult loadConfigFile(const std::string& path);
// `name` is used as the file name in error messages.
ConfigLoadResult loadConfigString(const std::string& yaml, const std::string& name);

}  // namespace sluice
