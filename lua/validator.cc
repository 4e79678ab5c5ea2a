#include "lua/validator.h"

namespace sluice::lua {

std::string ValidationReport::summary() const {
  std::string s;
  for (const auto& e : errors) {
    if (!s.empty()) s += '\n';
    s += e;
  }
  return s;
}

ValidationReport Validator::validate(const PolicyBundlePtr& bundle) const {
  ValidationReport r;
  WorkerVmPtr vm = WorkerVm::prepare(bundle, options_, nullptr, nullptr, &r.errors,
                                     WorkerVm::Mode::kValidate);
  r.ok = vm != nullptr && r.errors.empty();
  if (vm) r.policies = vm->policies();
  return r;
}

}  // namespace sluice::lua
