#pragma once
// PassToken: proof that a client passed a challenge, carried in a cookie so the proxy stays
// stateless. Sealed with AES-256-GCM under a key derived per key id from one master secret.
//
// Wire format (version 1), base64url without padding, 126 characters:
//   [0]      version = 1
//   [1]      key id (1..255)
//   [2..13]  GCM nonce (random)
//   [14..77] ciphertext of the 64-byte payload:
//              issued_at u64be (Unix s) | not_after u64be | level u8 | 3 zero bytes |
//              policy_version u32be | subject[16] | unique_id[16] | ip_prefix_hash u64be
//   [78..93] GCM tag
// Associated data: "sluice-pass-v1" | version | key id | len(UA) u32be | len(TLS fp) u32be, then
// the User-Agent, then the TLS fingerprint. A token copied to another browser fails to open.
// Subject = first 16 bytes of HMAC-SHA256(subject key, "d:" device id | "m:" member id | "a:").
// Keys: HKDF-SHA256(master, salt "sluice pass token v1", info "aes-256-gcm key id <n>") and
// HKDF-SHA256(master, salt "sluice pass token v1", info "subject") for the subject HMAC.
// The client IP is not bound (carrier NAT moves it); a different /24 (IPv4) or /64 (IPv6) from
// the one the token was issued to is reported as ipChanged so the scorer adds points.
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/ip.h"
#include "risk/crypto.h"

namespace sluice::risk {

struct PassToken {
  uint8_t version = 1;
  uint8_t keyId = 0;
  int64_t issuedAt = 0;  // Unix seconds
  int64_t notAfter = 0;  // Unix seconds
  uint8_t level = 0;     // challenge level passed (1-based); higher satisfies lower
  uint32_t policyVersion = 0;
  std::array<uint8_t, 16> subject{};
  std::array<uint8_t, 16> uniqueId{};
  uint64_t ipPrefixHash = 0;
};

enum class TokenStatus : uint8_t {
  kAbsent,       // no token presented
  kValid,
  kMalformed,    // not base64url, wrong length or version: garbage
  kUnknownKey,   // key id neither current nor accepted (rotated out)
  kForged,       // did not authenticate: tampered, wrong key, or another UA/TLS fingerprint
  kExpired,
  kNotYetValid,  // issued in the future beyond the allowed skew
  kWrongSubject, // issued to another device/member
  kOldPolicy,    // policy version below the minimum still honoured
};
const char* tokenStatusName(TokenStatus s);

struct TokenCheck {
  TokenStatus status = TokenStatus::kAbsent;
  PassToken token;         // filled when status is kValid (and for expired/wrong-subject ones)
  bool ipChanged = false;  // valid token presented from another /24 or /64
};

// Who a token is about: device id when present, else member id, else anonymous.
struct TokenSubjectInput {
  std::string_view deviceId;
  std::string_view memberId;
};

class PassTokenCodec;
using PassTokenCodecPtr = std::shared_ptr<const PassTokenCodec>;

struct PassTokenKeysConfig {
  std::string masterSecret;           // at least 32 bytes; the proxy refuses to start without one
  uint8_t currentKeyId = 1;           // tokens are issued under this id
  std::vector<uint8_t> acceptedKeyIds;  // older ids still verified during rotation
  uint32_t minPolicyVersion = 0;      // tokens from older policies are refused
  int64_t maxClockSkewSeconds = 60;
};

class PassTokenCodec {
 public:
  // Derives the keys; null and *error when the secret is too short or a key id is 0.
  static PassTokenCodecPtr create(const PassTokenKeysConfig& config, std::string* error);

  std::array<uint8_t, 16> subjectOf(const TokenSubjectInput& in) const;
  static uint64_t ipPrefixHash(const IpAddress& ip);

  // Issues a token for `subject` at `level`, valid for ttlSeconds from nowUnix.
  std::string issue(const TokenSubjectInput& subject, uint8_t level, uint32_t policyVersion,
                    const IpAddress& ip, std::string_view userAgent,
                    std::string_view tlsFingerprint, int64_t nowUnix, int64_t ttlSeconds) const;
  // Low level: seals a filled token with its keyId (tests forge with it).
  std::string seal(const PassToken& token, std::string_view userAgent,
                   std::string_view tlsFingerprint) const;
  // Verifies `text` (the cookie value). Never throws, never reads past the input.
  TokenCheck verify(std::string_view text, const TokenSubjectInput& subject, const IpAddress& ip,
                    std::string_view userAgent, std::string_view tlsFingerprint,
                    int64_t nowUnix) const;

  uint8_t currentKeyId() const { return currentKeyId_; }
  static constexpr size_t kTokenBytes = 94;
  static constexpr size_t kTokenChars = 126;

 private:
  PassTokenCodec() = default;
  std::array<std::unique_ptr<Aes256Gcm>, 256> keys_;  // by key id; null = not accepted
  std::unique_ptr<HmacSha256> subjectKey_;
  uint8_t currentKeyId_ = 1;
  uint32_t minPolicyVersion_ = 0;
  int64_t maxSkew_ = 60;
};

}  // namespace sluice::risk
