#pragma once
// Operator switches pulled through the admin API on sale night: a limit rule's mode forced to
// enforce / shadow / off, and named degrade switches that answer whole routes at the edge.
//
// They are process-wide and outlive configuration generations on purpose: an emergency lever
// pulled at 00:00:03 must still hold after the 00:00:05 reload, until an operator clears it.
// Cells are created on first use (control thread, admin or generation build) and never freed, so
// the data path reads them through a stable pointer with one relaxed load.
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice {

enum class RuleModeOverride : uint8_t {
  kNone = 0,  // as configured
  kEnforce,
  kShadow,
  kOff,  // the rule is not evaluated at all
};

const char* ruleModeOverrideName(RuleModeOverride m);
bool parseRuleModeOverride(const std::string& s, RuleModeOverride* out);

class Controls {
 public:
  // The override cell of a rule id / the state of a degrade switch (created on first use).
  static std::atomic<uint8_t>* ruleMode(const std::string& rule_id);
  static std::atomic<bool>* degradeSwitch(const std::string& name);

  struct Entry {
    std::string name;
    uint8_t value;
  };
  static std::vector<Entry> ruleModes();       // overrides currently set
  static std::vector<Entry> degradeSwitches();  // every switch ever named, on or off
};

}  // namespace sluice
