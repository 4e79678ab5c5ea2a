#pragma once
// Redis Cluster key -> slot: CRC16 (XMODEM: poly 0x1021, init 0) of the key, or of its hash tag,
// modulo 16384. The hash tag is the part between the first '{' and the next '}' when that part is
// not empty; "{user:42}:gcra" and "{user:42}:window" therefore share a slot, which is how callers
// keep the keys of one multi-key script together.
#include <cstdint>
#include <string_view>

namespace sluice::redis {

constexpr uint16_t kClusterSlots = 16384;

uint16_t crc16Xmodem(std::string_view data);
std::string_view hashTag(std::string_view key);  // the part that is hashed
inline uint16_t keySlot(std::string_view key) { return crc16Xmodem(hashTag(key)) & (kClusterSlots - 1); }

}  // namespace sluice::redis
