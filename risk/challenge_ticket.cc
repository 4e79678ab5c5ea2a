#include "risk/challenge_ticket.h"

#include <openssl/crypto.h>

#include <cstring>

namespace sluice::risk {

const char* ticketStatusName(TicketStatus s) {
  switch (s) {
    case TicketStatus::kOk: return "ok";
    case TicketStatus::kMalformed: return "malformed";
    case TicketStatus::kForged: return "forged";
    case TicketStatus::kExpired: return "expired";
    case TicketStatus::kWrongSubject: return "wrong_subject";
  }
  return "malformed";
}

ChallengeTicketCodecPtr ChallengeTicketCodec::create(std::string_view master, std::string* error) {
  if (master.size() < 32) {
    *error = "challenge ticket master secret must be at least 32 bytes";
    return nullptr;
  }
  uint8_t key[32];
  if (!hkdfSha256(master, "sluice challenge ticket v1", "hmac", key, sizeof key)) {
    *error = "challenge ticket key derivation failed (OpenSSL)";
    return nullptr;
  }
  std::shared_ptr<ChallengeTicketCodec> c(new ChallengeTicketCodec());
  c->key_ = std::make_unique<HmacSha256>(std::string_view(reinterpret_cast<const char*>(key), 32));
  OPENSSL_cleanse(key, sizeof key);
  if (!c->key_->valid()) {
    *error = "HMAC-SHA256 unavailable (OpenSSL)";
    return nullptr;
  }
  return c;
}

std::string ChallengeTicketCodec::seal(const ChallengeTicket& t) const {
  uint8_t b[kTicketBytes] = {};
  b[0] = 1;
  b[1] = t.level;
  b[2] = t.difficulty;
  uint64_t e = static_cast<uint64_t>(t.expiresAt);
  for (int i = 11; i >= 4; --i, e >>= 8) b[i] = static_cast<uint8_t>(e);
  std::memcpy(b + 12, t.nonce.data(), 16);
  std::memcpy(b + 28, t.subject.data(), 16);
  const Sha256Digest mac = key_->mac(std::string_view(reinterpret_cast<const char*>(b), 44));
  std::memcpy(b + 44, mac.data(), 16);
  return base64UrlEncode(b, sizeof b);
}

std::string ChallengeTicketCodec::issue(uint8_t level, uint8_t difficulty,
                                        const std::array<uint8_t, 16>& subject, int64_t now,
                                        int64_t ttl, ChallengeTicket* out) const {
  ChallengeTicket t;
  t.level = level;
  t.difficulty = difficulty;
  t.expiresAt = now + ttl;
  t.subject = subject;
  if (!randomBytes(t.nonce.data(), t.nonce.size())) return {};
  if (out) *out = t;
  return seal(t);
}

TicketStatus ChallengeTicketCodec::open(std::string_view text,
                                        const std::array<uint8_t, 16>* subject, int64_t now,
                                        ChallengeTicket* out) const {
  if (text.size() != kTicketChars) return TicketStatus::kMalformed;
  std::string raw;
  if (!base64UrlDecode(text, &raw) || raw.size() != kTicketBytes) return TicketStatus::kMalformed;
  const auto* b = reinterpret_cast<const uint8_t*>(raw.data());
  if (b[0] != 1) return TicketStatus::kMalformed;
  const Sha256Digest mac = key_->mac(std::string_view(raw.data(), 44));
  if (!constantTimeEqual(mac.data(), b + 44, 16)) return TicketStatus::kForged;
  ChallengeTicket t;
  t.level = b[1];
  t.difficulty = b[2];
  uint64_t e = 0;
  for (int i = 4; i < 12; ++i) e = (e << 8) | b[i];
  t.expiresAt = static_cast<int64_t>(e);
  std::memcpy(t.nonce.data(), b + 12, 16);
  std::memcpy(t.subject.data(), b + 28, 16);
  if (out) *out = t;
  if (now >= t.expiresAt) return TicketStatus::kExpired;
  if (subject && !constantTimeEqual(subject->data(), t.subject.data(), 16))
    return TicketStatus::kWrongSubject;
  return TicketStatus::kOk;
}

}  // namespace sluice::risk
