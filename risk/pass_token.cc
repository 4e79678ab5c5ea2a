#include "risk/pass_token.h"

#include <openssl/crypto.h>

#include <cstring>

#include "core/hash.h"

namespace sluice::risk {
namespace {

constexpr size_t kPayloadBytes = 64;
constexpr size_t kHeaderBytes = 2 + Aes256Gcm::kNonceBytes;
constexpr std::string_view kSalt = "sluice pass token v1";

void putU64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}
uint64_t getU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
void putU32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}
uint32_t getU32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }

// Lengths first, so ("ab", "c") and ("a", "bc") are different associated data.
std::array<uint8_t, 24> aadHeader(uint8_t version, uint8_t keyId, std::string_view ua,
                                  std::string_view tls) {
  std::array<uint8_t, 24> h{};
  std::memcpy(h.data(), "sluice-pass-v1", 14);
  h[14] = version;
  h[15] = keyId;
  putU32(&h[16], static_cast<uint32_t>(ua.size()));
  putU32(&h[20], static_cast<uint32_t>(tls.size()));
  return h;
}

}  // namespace

const char* tokenStatusName(TokenStatus s) {
  switch (s) {
    case TokenStatus::kAbsent: return "absent";
    case TokenStatus::kValid: return "valid";
    case TokenStatus::kMalformed: return "malformed";
    case TokenStatus::kUnknownKey: return "unknown_key";
    case TokenStatus::kForged: return "forged";
    case TokenStatus::kExpired: return "expired";
    case TokenStatus::kNotYetValid: return "not_yet_valid";
    case TokenStatus::kWrongSubject: return "wrong_subject";
    case TokenStatus::kOldPolicy: return "old_policy";
  }
  return "malformed";
}

PassTokenCodecPtr PassTokenCodec::create(const PassTokenKeysConfig& cfg, std::string* error) {
  if (cfg.masterSecret.size() < 32) {
    *error = "pass token master secret must be at least 32 bytes";
    return nullptr;
  }
  if (cfg.currentKeyId == 0) {
    *error = "pass token key id must be 1..255";
    return nullptr;
  }
  std::shared_ptr<PassTokenCodec> c(new PassTokenCodec());
  c->currentKeyId_ = cfg.currentKeyId;
  c->minPolicyVersion_ = cfg.minPolicyVersion;
  c->maxSkew_ = cfg.maxClockSkewSeconds;
  std::vector<uint8_t> ids = cfg.acceptedKeyIds;
  ids.push_back(cfg.currentKeyId);
  for (uint8_t id : ids) {
    if (id == 0) {
      *error = "pass token accepted key ids must be 1..255";
      return nullptr;
    }
    uint8_t key[Aes256Gcm::kKeyBytes];
    const std::string info = "aes-256-gcm key id " + std::to_string(id);
    if (!hkdfSha256(cfg.masterSecret, kSalt, info, key, sizeof key)) {
      *error = "pass token key derivation failed (OpenSSL)";
      return nullptr;
    }
    c->keys_[id] = std::make_unique<Aes256Gcm>(key);
    OPENSSL_cleanse(key, sizeof key);
  }
  uint8_t subjectKey[32];
  if (!hkdfSha256(cfg.masterSecret, kSalt, "subject", subjectKey, sizeof subjectKey)) {
    *error = "pass token key derivation failed (OpenSSL)";
    return nullptr;
  }
  c->subjectKey_ = std::make_unique<HmacSha256>(
      std::string_view(reinterpret_cast<const char*>(subjectKey), sizeof subjectKey));
  if (!c->subjectKey_->valid()) {
    *error = "HMAC-SHA256 unavailable (OpenSSL)";
    return nullptr;
  }
  return c;
}

std::array<uint8_t, 16> PassTokenCodec::subjectOf(const TokenSubjectInput& in) const {
  Sha256Digest d = !in.deviceId.empty()   ? subjectKey_->mac2("d:", in.deviceId)
                   : !in.memberId.empty() ? subjectKey_->mac2("m:", in.memberId)
                                          : subjectKey_->mac("a:");
  std::array<uint8_t, 16> out;
  std::memcpy(out.data(), d.data(), out.size());
  return out;
}

uint64_t PassTokenCodec::ipPrefixHash(const IpAddress& ip) {
  std::array<uint8_t, 16> b = ip.bytes;
  // IPv4 /24 (mapped: bytes 12..14 kept), IPv6 /64.
  const size_t keep = ip.v4 ? 15 : 8;
  for (size_t i = keep; i < 16; ++i) b[i] = 0;
  return hash64(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()), 0x1f);
}

std::string PassTokenCodec::seal(const PassToken& t, std::string_view ua,
                                 std::string_view tls) const {
  const Aes256Gcm* key = keys_[t.keyId].get();
  if (!key) return {};
  uint8_t buf[kTokenBytes];
  buf[0] = t.version;
  buf[1] = t.keyId;
  if (!randomBytes(buf + 2, Aes256Gcm::kNonceBytes)) return {};
  uint8_t payload[kPayloadBytes] = {};
  putU64(payload, static_cast<uint64_t>(t.issuedAt));
  putU64(payload + 8, static_cast<uint64_t>(t.notAfter));
  payload[16] = t.level;
  putU32(payload + 20, t.policyVersion);
  std::memcpy(payload + 24, t.subject.data(), 16);
  std::memcpy(payload + 40, t.uniqueId.data(), 16);
  putU64(payload + 56, t.ipPrefixHash);
  const auto aad = aadHeader(t.version, t.keyId, ua, tls);
  if (!key->seal(buf + 2, std::string_view(reinterpret_cast<const char*>(aad.data()), aad.size()),
                 ua, tls, payload, kPayloadBytes, buf + kHeaderBytes,
                 buf + kHeaderBytes + kPayloadBytes))
    return {};
  return base64UrlEncode(buf, sizeof buf);
}

std::string PassTokenCodec::issue(const TokenSubjectInput& subject, uint8_t level,
                                  uint32_t policyVersion, const IpAddress& ip,
                                  std::string_view ua, std::string_view tls, int64_t nowUnix,
                                  int64_t ttlSeconds) const {
  PassToken t;
  t.keyId = currentKeyId_;
  t.issuedAt = nowUnix;
  t.notAfter = nowUnix + ttlSeconds;
  t.level = level;
  t.policyVersion = policyVersion;
  t.subject = subjectOf(subject);
  if (!randomBytes(t.uniqueId.data(), t.uniqueId.size())) return {};
  t.ipPrefixHash = ipPrefixHash(ip);
  return seal(t, ua, tls);
}

TokenCheck PassTokenCodec::verify(std::string_view text, const TokenSubjectInput& subject,
                                  const IpAddress& ip, std::string_view ua, std::string_view tls,
                                  int64_t nowUnix) const {
  TokenCheck out;
  if (text.empty()) return out;
  out.status = TokenStatus::kMalformed;
  // Length first: an oversized cookie is refused before any decoding work.
  if (text.size() != kTokenChars) return out;
  uint8_t buf[kTokenBytes];
  size_t rawLen = 0;
  if (!base64UrlDecode(text, buf, sizeof buf, &rawLen) || rawLen != kTokenBytes) return out;
  if (buf[0] != 1) return out;
  const Aes256Gcm* key = keys_[buf[1]].get();
  if (!key) {
    out.status = TokenStatus::kUnknownKey;
    return out;
  }
  uint8_t payload[kPayloadBytes];
  const auto aad = aadHeader(buf[0], buf[1], ua, tls);
  if (!key->open(buf + 2, std::string_view(reinterpret_cast<const char*>(aad.data()), aad.size()),
                 ua, tls, buf + kHeaderBytes, kPayloadBytes, buf + kHeaderBytes + kPayloadBytes,
                 payload)) {
    out.status = TokenStatus::kForged;
    return out;
  }
  PassToken& t = out.token;
  t.version = buf[0];
  t.keyId = buf[1];
  t.issuedAt = static_cast<int64_t>(getU64(payload));
  t.notAfter = static_cast<int64_t>(getU64(payload + 8));
  t.level = payload[16];
  t.policyVersion = getU32(payload + 20);
  std::memcpy(t.subject.data(), payload + 24, 16);
  std::memcpy(t.uniqueId.data(), payload + 40, 16);
  t.ipPrefixHash = getU64(payload + 56);
  if (nowUnix >= t.notAfter) {
    out.status = TokenStatus::kExpired;
  } else if (t.issuedAt > nowUnix + maxSkew_) {
    out.status = TokenStatus::kNotYetValid;
  } else if (t.policyVersion < minPolicyVersion_) {
    out.status = TokenStatus::kOldPolicy;
  } else {
    const auto want = subjectOf(subject);
    if (!constantTimeEqual(want.data(), t.subject.data(), want.size())) {
      out.status = TokenStatus::kWrongSubject;
    } else {
      out.status = TokenStatus::kValid;
      out.ipChanged = t.ipPrefixHash != ipPrefixHash(ip);
    }
  }
  return out;
}

}  // namespace sluice::risk
