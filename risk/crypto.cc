// The low-level SHA256_* calls are deprecated in OpenSSL 3 but remain the only allocation-free way
// to copy a mid-stream SHA-256 state (EVP_MD_CTX_copy_ex duplicates the provider context on the
// heap). They run the same assembly (SHA-NI / AVX2) as EVP.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include "risk/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <atomic>

#include <cstring>

namespace sluice::risk {
namespace {

EVP_CIPHER* gcmAlgorithm() {
  static EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return c;
}
EVP_MD* sha256Algorithm() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

std::atomic<uint64_t> nextGcmId{1};

// Per thread, a few GCM contexts with a key already scheduled, by (key instance id, direction).
// A hit only sets the nonce; a miss (first use on this thread, or more live keys than slots)
// schedules the key into the least recently used slot. Ids are never reused, so a slot of a
// destroyed key is simply never hit again; EVP_CIPHER_CTX_free cleanses it at eviction or thread
// exit.
class GcmContextCache {
 public:
  static constexpr int kSlots = 8;
  ~GcmContextCache() {
    for (auto& s : slots_) EVP_CIPHER_CTX_free(s.ctx);
  }
  // A context ready for nonce-only (re)initialisation with `key`, or null on failure.
  EVP_CIPHER_CTX* get(uint64_t id, bool encrypt, const uint8_t* key) {
    ++clock_;
    for (auto& s : slots_) {
      if (s.id == id && s.encrypt == encrypt && s.ctx) {
        s.used = clock_;
        return s.ctx;
      }
    }
    Slot* victim = &slots_[0];
    for (auto& s : slots_)
      if (s.used < victim->used) victim = &s;
    if (!victim->ctx) victim->ctx = EVP_CIPHER_CTX_new();
    victim->id = 0;
    if (!victim->ctx ||
        EVP_CipherInit_ex2(victim->ctx, gcmAlgorithm(), key, nullptr, encrypt ? 1 : 0, nullptr) != 1)
      return nullptr;
    victim->id = id;
    victim->encrypt = encrypt;
    victim->used = clock_;
    return victim->ctx;
  }

 private:
  struct Slot {
    uint64_t id = 0;
    bool encrypt = false;
    uint64_t used = 0;
    EVP_CIPHER_CTX* ctx = nullptr;
  };
  Slot slots_[kSlots];
  uint64_t clock_ = 0;
};

EVP_CIPHER_CTX* threadGcmCtx(uint64_t id, bool encrypt, const uint8_t* key) {
  thread_local GcmContextCache cache;
  return cache.get(id, encrypt, key);
}

// base64url alphabet value per byte, -1 for anything else.
struct B64Table {
  int8_t v[256];
  constexpr B64Table() : v() {
    for (int i = 0; i < 256; ++i) v[i] = -1;
    for (int i = 0; i < 26; ++i) v['A' + i] = static_cast<int8_t>(i);
    for (int i = 0; i < 26; ++i) v['a' + i] = static_cast<int8_t>(26 + i);
    for (int i = 0; i < 10; ++i) v['0' + i] = static_cast<int8_t>(52 + i);
    v[static_cast<int>('-')] = 62;
    v[static_cast<int>('_')] = 63;
  }
};
constexpr B64Table kB64Values;

// The decode table again, each value pre-shifted to its place in a 4-character group (0x80000000
// marks a byte outside the alphabet): a group decodes with four loads and three ORs, and one test
// rejects any bad character in it.
struct B64Shifted {
  uint32_t v[4][256] = {};
  constexpr B64Shifted() {
    for (int k = 0; k < 4; ++k) {
      for (int c = 0; c < 256; ++c) {
        const int x = kB64Values.v[c];
        v[k][c] = x < 0 ? 0x80000000u : static_cast<uint32_t>(x) << (18 - 6 * k);
      }
    }
  }
};
constexpr B64Shifted kB64Shifted;

bool addAad(EVP_CIPHER_CTX* ctx, std::string_view aad, bool encrypt) {
  if (aad.empty()) return true;
  int len = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(aad.data());
  return encrypt ? EVP_EncryptUpdate(ctx, nullptr, &len, p, static_cast<int>(aad.size())) == 1
                 : EVP_DecryptUpdate(ctx, nullptr, &len, p, static_cast<int>(aad.size())) == 1;
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int b64Value(char c) { return kB64Values.v[static_cast<unsigned char>(c)]; }

}  // namespace

bool hkdfSha256(std::string_view secret, std::string_view salt, std::string_view info,
                uint8_t* out, size_t outLen) {
  EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr);
  if (!pctx) return false;
  bool ok = EVP_PKEY_derive_init(pctx) == 1 && EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()) == 1 &&
            EVP_PKEY_CTX_set1_hkdf_salt(pctx, reinterpret_cast<const unsigned char*>(salt.data()),
                                        static_cast<int>(salt.size())) == 1 &&
            EVP_PKEY_CTX_set1_hkdf_key(pctx, reinterpret_cast<const unsigned char*>(secret.data()),
                                       static_cast<int>(secret.size())) == 1 &&
            EVP_PKEY_CTX_add1_hkdf_info(pctx, reinterpret_cast<const unsigned char*>(info.data()),
                                        static_cast<int>(info.size())) == 1;
  size_t len = outLen;
  ok = ok && EVP_PKEY_derive(pctx, out, &len) == 1 && len == outLen;
  EVP_PKEY_CTX_free(pctx);
  return ok;
}

Sha256Digest sha256(std::string_view data) {
  Sha256Digest d{};
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), d.data(), &len, sha256Algorithm(), nullptr);
  return d;
}

bool randomBytes(uint8_t* out, size_t n) { return RAND_bytes(out, static_cast<int>(n)) == 1; }

bool constantTimeEqual(const void* a, const void* b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

std::string base64UrlEncode(const uint8_t* d, size_t n) {
  std::string out;
  out.reserve((n * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v = (uint32_t{d[i]} << 16) | (uint32_t{d[i + 1]} << 8) | d[i + 2];
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = uint32_t{d[i]} << 16;
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
  } else if (n - i == 2) {
    const uint32_t v = (uint32_t{d[i]} << 16) | (uint32_t{d[i + 1]} << 8);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
  }
  return out;
}

bool base64UrlDecode(std::string_view in, std::string* out) {
  if (in.size() % 4 == 1) return false;
  out->clear();
  out->reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = b64Value(c);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  // Leftover bits must be zero, so each byte string has exactly one encoding.
  return (acc & ((1u << bits) - 1)) == 0;
}

bool base64UrlDecode(std::string_view in, uint8_t* out, size_t cap, size_t* outLen) {
  if (in.size() % 4 == 1 || in.size() / 4 * 3 + (in.size() % 4 ? in.size() % 4 - 1 : 0) > cap)
    return false;
  size_t n = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t full = in.size() / 4 * 4;
  size_t i = 0;
  for (; i < full; i += 4) {
    const uint32_t v = kB64Shifted.v[0][p[i]] | kB64Shifted.v[1][p[i + 1]] |
                       kB64Shifted.v[2][p[i + 2]] | kB64Shifted.v[3][p[i + 3]];
    if (v & 0x80000000u) return false;
    out[n++] = static_cast<uint8_t>(v >> 16);
    out[n++] = static_cast<uint8_t>(v >> 8);
    out[n++] = static_cast<uint8_t>(v);
  }
  uint32_t acc = 0;
  int bits = 0;
  for (; i < in.size(); ++i) {
    const int v = kB64Values.v[p[i]];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = static_cast<uint8_t>((acc >> bits) & 0xff);
    }
  }
  *outLen = n;
  // Leftover bits must be zero, so each byte string has exactly one encoding.
  return (acc & ((1u << bits) - 1)) == 0;
}

std::string hexEncode(const uint8_t* d, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = kHex[d[i] >> 4];
    s[2 * i + 1] = kHex[d[i] & 15];
  }
  return s;
}

bool hexDecode(std::string_view in, uint8_t* out, size_t n) {
  if (in.size() != 2 * n) return false;
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < n; ++i) {
    const int hi = val(in[2 * i]), lo = val(in[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

static_assert(sizeof(SHA256_CTX) <= 128, "HmacSha256 state storage too small");

HmacSha256::HmacSha256(std::string_view key) {
  // RFC 2104: a key longer than the block is hashed first, then zero-padded to 64 bytes.
  unsigned char k[SHA256_CBLOCK] = {};
  if (key.size() > SHA256_CBLOCK) {
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), k);
  } else if (!key.empty()) {
    std::memcpy(k, key.data(), key.size());
  }
  unsigned char pad[SHA256_CBLOCK];
  auto* inner = reinterpret_cast<SHA256_CTX*>(inner_);
  auto* outer = reinterpret_cast<SHA256_CTX*>(outer_);
  for (size_t i = 0; i < sizeof pad; ++i) pad[i] = k[i] ^ 0x36;
  valid_ = SHA256_Init(inner) == 1 && SHA256_Update(inner, pad, sizeof pad) == 1;
  for (size_t i = 0; i < sizeof pad; ++i) pad[i] = k[i] ^ 0x5c;
  valid_ = valid_ && SHA256_Init(outer) == 1 && SHA256_Update(outer, pad, sizeof pad) == 1;
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
}

HmacSha256::~HmacSha256() {
  OPENSSL_cleanse(inner_, sizeof inner_);
  OPENSSL_cleanse(outer_, sizeof outer_);
}

Sha256Digest HmacSha256::mac(std::string_view data) const { return mac2(data, {}); }

Sha256Digest HmacSha256::mac2(std::string_view a, std::string_view b) const {
  Sha256Digest d{};
  if (!valid_) return d;
  SHA256_CTX c;
  std::memcpy(&c, inner_, sizeof c);
  if (!a.empty()) SHA256_Update(&c, a.data(), a.size());
  if (!b.empty()) SHA256_Update(&c, b.data(), b.size());
  unsigned char innerDigest[SHA256_DIGEST_LENGTH];
  SHA256_Final(innerDigest, &c);
  std::memcpy(&c, outer_, sizeof c);
  SHA256_Update(&c, innerDigest, sizeof innerDigest);
  SHA256_Final(d.data(), &c);
  // The copies hold key-equivalent chaining values.
  OPENSSL_cleanse(&c, sizeof c);
  return d;
}

Aes256Gcm::Aes256Gcm(const uint8_t key[kKeyBytes])
    : id_(nextGcmId.fetch_add(1, std::memory_order_relaxed)) {
  std::memcpy(key_, key, kKeyBytes);
}

Aes256Gcm::~Aes256Gcm() { OPENSSL_cleanse(key_, sizeof key_); }

bool Aes256Gcm::seal(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
                     std::string_view aad3, const uint8_t* pt, size_t n, uint8_t* out,
                     uint8_t* tag) const {
  EVP_CIPHER_CTX* ctx = threadGcmCtx(id_, true, key_);
  int len = 0;
  // Key already scheduled: only the nonce is set (this also resets the GHASH and counter state).
  if (!ctx || EVP_EncryptInit_ex2(ctx, nullptr, nullptr, nonce, nullptr) != 1) return false;
  if (!addAad(ctx, aad1, true) || !addAad(ctx, aad2, true) || !addAad(ctx, aad3, true)) return false;
  if (n && EVP_EncryptUpdate(ctx, out, &len, pt, static_cast<int>(n)) != 1) return false;
  if (EVP_EncryptFinal_ex(ctx, out + len, &len) != 1) return false;
  return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1;
}

constexpr size_t kJoinedAadBytes = 1024;

bool Aes256Gcm::open(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
                     std::string_view aad3, const uint8_t* ct, size_t n, const uint8_t* tag,
                     uint8_t* out) const {
  EVP_CIPHER_CTX* ctx = threadGcmCtx(id_, false, key_);
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex2(ctx, nullptr, nullptr, nonce, nullptr) != 1) return false;
  // The associated data in one update when it fits a stack buffer: GCM's AAD hashing pays a
  // partial-block flush and a provider call per piece.
  const size_t aadLen = aad1.size() + aad2.size() + aad3.size();
  if (aadLen <= kJoinedAadBytes) {
    uint8_t joined[kJoinedAadBytes];
    size_t pos = 0;
    for (std::string_view part : {aad1, aad2, aad3}) {
      if (!part.empty()) std::memcpy(joined + pos, part.data(), part.size());
      pos += part.size();
    }
    if (!addAad(ctx, std::string_view(reinterpret_cast<const char*>(joined), pos), false))
      return false;
  } else if (!addAad(ctx, aad1, false) || !addAad(ctx, aad2, false) || !addAad(ctx, aad3, false)) {
    return false;
  }
  if (n && EVP_DecryptUpdate(ctx, out, &len, ct, static_cast<int>(n)) != 1) return false;
  // The expected tag straight through the provider's parameters (what EVP_CTRL_GCM_SET_TAG is
  // translated into, without the translation).
  OSSL_PARAM params[2] = {
      OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, const_cast<uint8_t*>(tag),
                                        kTagBytes),
      OSSL_PARAM_construct_end()};
  if (EVP_CIPHER_CTX_set_params(ctx, params) != 1) return false;
  // The tag comparison inside EVP_DecryptFinal_ex is constant-time (CRYPTO_memcmp).
  return EVP_DecryptFinal_ex(ctx, out + len, &len) == 1;
}

}  // namespace sluice::risk
