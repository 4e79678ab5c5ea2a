#include "proxy/server/controls.h"

#include <map>
#include <memory>
#include <mutex>

namespace sluice {

namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, std::unique_ptr<std::atomic<uint8_t>>> modes;
  std::map<std::string, std::unique_ptr<std::atomic<bool>>> switches;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: workers may read it during exit
  return *r;
}

}  // namespace

const char* ruleModeOverrideName(RuleModeOverride m) {
  switch (m) {
    case RuleModeOverride::kNone: return "config";
    case RuleModeOverride::kEnforce: return "enforce";
    case RuleModeOverride::kShadow: return "shadow";
    case RuleModeOverride::kOff: return "off";
  }
  return "?";
}

bool parseRuleModeOverride(const std::string& s, RuleModeOverride* out) {
  if (s == "enforce") *out = RuleModeOverride::kEnforce;
  else if (s == "shadow") *out = RuleModeOverride::kShadow;
  else if (s == "off") *out = RuleModeOverride::kOff;
  else if (s == "config") *out = RuleModeOverride::kNone;
  else return false;
  return true;
}

std::atomic<uint8_t>* Controls::ruleMode(const std::string& rule_id) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto& cell = r.modes[rule_id];
  if (!cell) cell = std::make_unique<std::atomic<uint8_t>>(0);
  return cell.get();
}

std::atomic<bool>* Controls::degradeSwitch(const std::string& name) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto& cell = r.switches[name];
  if (!cell) cell = std::make_unique<std::atomic<bool>>(false);
  return cell.get();
}

std::vector<Controls::Entry> Controls::ruleModes() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<Entry> out;
  for (const auto& [k, v] : r.modes)
    if (uint8_t m = v->load(std::memory_order_relaxed)) out.push_back({k, m});
  return out;
}

std::vector<Controls::Entry> Controls::degradeSwitches() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<Entry> out;
  for (const auto& [k, v] : r.switches) out.push_back({k, static_cast<uint8_t>(v->load() ? 1 : 0)});
  return out;
}

}  // namespace sluice
