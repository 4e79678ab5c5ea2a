#pragma once
// What a request phase hook tells the connection (see phases.h for what each phase may do).
#include <cstdint>

namespace sluice {

enum class PhaseResult : uint8_t {
  kContinue,   // go on to the next phase
  kAnswered,   // the phase responded (or closed the connection): stop here
  kSuspended,  // the phase waits for I/O and will resume the request itself
};

}  // namespace sluice
