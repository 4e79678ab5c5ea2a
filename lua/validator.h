#pragma once
// Validates a PolicyBundle before any worker sees it: on any thread, in a scratch VM with the
// same sandbox, compile every file, run module top levels, check each policy module's shape,
// decode each attachment's config and check it against the policy's schema, run configure().
// init_worker is not run (it may start timers or write shared dicts). Errors are
// `file:line: message` (or `where: route 'r' policy 'p': ...` for attachments).
#include <string>
#include <vector>

#include "lua/policy_bundle.h"
#include "lua/vm.h"

namespace sluice::lua {

struct ValidationReport {
  bool ok = false;
  std::vector<std::string> errors;
  std::vector<PolicyInfo> policies;  // when ok
  std::string summary() const;       // errors joined by newlines
};

class Validator {
 public:
  explicit Validator(VmOptions options = {}) : options_(std::move(options)) {}
  ValidationReport validate(const PolicyBundlePtr& bundle) const;

 private:
  VmOptions options_;
};

}  // namespace sluice::lua
