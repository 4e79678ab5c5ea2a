#pragma once
// The few OpenSSL primitives risk/ needs, behind small value types. Algorithms are fetched once
// (OpenSSL 3 re-fetches on every implicit use, which costs microseconds per call).
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>


namespace sluice::risk {

using Sha256Digest = std::array<uint8_t, 32>;

// HKDF-SHA256 (RFC 5869); false only if OpenSSL fails.
bool hkdfSha256(std::string_view secret, std::string_view salt, std::string_view info,
                uint8_t* out, size_t outLen);
Sha256Digest sha256(std::string_view data);
bool randomBytes(uint8_t* out, size_t n);
// Constant-time comparison (CRYPTO_memcmp) of equal-length buffers.
bool constantTimeEqual(const void* a, const void* b, size_t n);

std::string base64UrlEncode(const uint8_t* data, size_t n);
// Unpadded base64url; false on any other character, on padding or on a bad length.
bool base64UrlDecode(std::string_view in, std::string* out);
// The same into a caller's buffer (no allocation); false also when it needs more than `cap` bytes.
bool base64UrlDecode(std::string_view in, uint8_t* out, size_t cap, size_t* outLen);
std::string hexEncode(const uint8_t* data, size_t n);
bool hexDecode(std::string_view in, uint8_t* out, size_t n);

// A keyed HMAC-SHA256 (RFC 2104). The SHA-256 states after absorbing the key's ipad and opad
// blocks are computed once; each mac() copies those two plain structs on the stack, so a MAC is
// the data's blocks plus one outer block, with no allocation and no OpenSSL context duplication.
// Thread-safe: mac() only reads the precomputed states.
class HmacSha256 {
 public:
  explicit HmacSha256(std::string_view key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;
  bool valid() const { return valid_; }
  Sha256Digest mac(std::string_view data) const;
  Sha256Digest mac2(std::string_view a, std::string_view b) const;

 private:
  // OpenSSL SHA256_CTX storage (kept opaque so this header needs no OpenSSL include).
  static constexpr size_t kStateBytes = 128;
  alignas(16) unsigned char inner_[kStateBytes] = {};  // after absorbing K ^ ipad
  alignas(16) unsigned char outer_[kStateBytes] = {};  // after absorbing K ^ opad
  bool valid_ = false;
};

// AES-256-GCM with a 12-byte nonce and a 16-byte tag. Each thread keeps a few cipher contexts
// with this key already scheduled (AES round keys and the GHASH table), keyed by the instance's
// unique id, so a seal/open only sets the nonce: no key expansion and no allocation per call.
class Aes256Gcm {
 public:
  static constexpr size_t kKeyBytes = 32, kNonceBytes = 12, kTagBytes = 16;
  explicit Aes256Gcm(const uint8_t key[kKeyBytes]);
  ~Aes256Gcm();
  Aes256Gcm(const Aes256Gcm&) = delete;
  Aes256Gcm& operator=(const Aes256Gcm&) = delete;
  // out gets plaintext.size() bytes; tag 16 bytes.
  bool seal(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
            std::string_view aad3, const uint8_t* plaintext, size_t n, uint8_t* out,
            uint8_t* tag) const;
  // False when the tag does not authenticate (forged, tampered, or wrong associated data).
  bool open(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
            std::string_view aad3, const uint8_t* ciphertext, size_t n, const uint8_t* tag,
            uint8_t* out) const;

 private:
  uint8_t key_[kKeyBytes];
  uint64_t id_;  // process-unique, never reused: names this key in the per-thread context cache
};

}  // namespace sluice::risk
