#pragma once
// ChallengeTicket: what the proxy hands a client with a challenge, and what comes back with the
// answer (a proof-of-work solution, or an external verifier's report). HMAC-sealed, so the proxy
// keeps no per-challenge state; single use is enforced by a SpentSet keyed by the nonce.
//
// Wire format (version 1), base64url without padding, 80 characters:
//   [0] version = 1 | [1] level (1-based) | [2] difficulty bits | [3] 0 |
//   [4..11] expires_at u64be (Unix s) | [12..27] nonce (random) | [28..43] subject |
//   [44..59] first 16 bytes of HMAC-SHA256(ticket key, bytes [0..43])
// Ticket key: HKDF-SHA256(master, salt "sluice challenge ticket v1", info "hmac").
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "risk/crypto.h"

namespace sluice::risk {

struct ChallengeTicket {
  uint8_t level = 0;
  uint8_t difficulty = 0;  // proof-of-work leading zero bits; 0 for external challenges
  int64_t expiresAt = 0;
  std::array<uint8_t, 16> nonce{};
  std::array<uint8_t, 16> subject{};

  std::string nonceHex() const { return hexEncode(nonce.data(), nonce.size()); }
};

enum class TicketStatus : uint8_t { kOk, kMalformed, kForged, kExpired, kWrongSubject };
const char* ticketStatusName(TicketStatus s);

class ChallengeTicketCodec;
using ChallengeTicketCodecPtr = std::shared_ptr<const ChallengeTicketCodec>;

class ChallengeTicketCodec {
 public:
  static ChallengeTicketCodecPtr create(std::string_view masterSecret, std::string* error);

  std::string issue(uint8_t level, uint8_t difficulty, const std::array<uint8_t, 16>& subject,
                    int64_t nowUnix, int64_t ttlSeconds, ChallengeTicket* out = nullptr) const;
  std::string seal(const ChallengeTicket& t) const;
  // Checks shape, MAC (constant time), expiry and, when `subject` is non-null, the subject.
  TicketStatus open(std::string_view text, const std::array<uint8_t, 16>* subject,
                    int64_t nowUnix, ChallengeTicket* out) const;

  static constexpr size_t kTicketBytes = 60;
  static constexpr size_t kTicketChars = 80;

 private:
  ChallengeTicketCodec() = default;
  std::unique_ptr<HmacSha256> key_;
};

}  // namespace sluice::risk
