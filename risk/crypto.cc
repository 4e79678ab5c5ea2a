#include "risk/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cstring>

namespace sluice::risk {
namespace {

EVP_MAC* hmacAlgorithm() {
  static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}
EVP_CIPHER* gcmAlgorithm() {
  static EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return c;
}
EVP_MD* sha256Algorithm() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

// One cipher context per thread, re-initialised per call: allocation-free on the data path.
struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};
EVP_CIPHER_CTX* threadCipherCtx() {
  thread_local CipherCtx c;
  return c.ctx;
}

bool addAad(EVP_CIPHER_CTX* ctx, std::string_view aad, bool encrypt) {
  if (aad.empty()) return true;
  int len = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(aad.data());
  return encrypt ? EVP_EncryptUpdate(ctx, nullptr, &len, p, static_cast<int>(aad.size())) == 1
                 : EVP_DecryptUpdate(ctx, nullptr, &len, p, static_cast<int>(aad.size())) == 1;
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int b64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

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

HmacSha256::HmacSha256(std::string_view key) {
  EVP_MAC* mac = hmacAlgorithm();
  if (!mac) return;
  ctx_ = EVP_MAC_CTX_new(mac);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  // An empty key is legal HMAC; OpenSSL wants a non-null pointer.
  static const unsigned char kEmpty = 0;
  const auto* k = key.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(key.data());
  if (ctx_ && EVP_MAC_init(ctx_, k, key.size(), params) != 1) {
    EVP_MAC_CTX_free(ctx_);
    ctx_ = nullptr;
  }
}

HmacSha256::~HmacSha256() { EVP_MAC_CTX_free(ctx_); }

Sha256Digest HmacSha256::mac(std::string_view data) const { return mac2(data, {}); }

Sha256Digest HmacSha256::mac2(std::string_view a, std::string_view b) const {
  Sha256Digest d{};
  if (!ctx_) return d;
  EVP_MAC_CTX* c = EVP_MAC_CTX_dup(ctx_);
  if (!c) return d;
  size_t len = 0;
  EVP_MAC_update(c, reinterpret_cast<const unsigned char*>(a.data()), a.size());
  if (!b.empty()) EVP_MAC_update(c, reinterpret_cast<const unsigned char*>(b.data()), b.size());
  EVP_MAC_final(c, d.data(), &len, d.size());
  EVP_MAC_CTX_free(c);
  return d;
}

Aes256Gcm::Aes256Gcm(const uint8_t key[kKeyBytes]) { std::memcpy(key_, key, kKeyBytes); }

bool Aes256Gcm::seal(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
                     std::string_view aad3, const uint8_t* pt, size_t n, uint8_t* out,
                     uint8_t* tag) const {
  EVP_CIPHER_CTX* ctx = threadCipherCtx();
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex2(ctx, gcmAlgorithm(), key_, nonce, nullptr) != 1) return false;
  if (!addAad(ctx, aad1, true) || !addAad(ctx, aad2, true) || !addAad(ctx, aad3, true)) return false;
  if (n && EVP_EncryptUpdate(ctx, out, &len, pt, static_cast<int>(n)) != 1) return false;
  if (EVP_EncryptFinal_ex(ctx, out + len, &len) != 1) return false;
  return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1;
}

bool Aes256Gcm::open(const uint8_t* nonce, std::string_view aad1, std::string_view aad2,
                     std::string_view aad3, const uint8_t* ct, size_t n, const uint8_t* tag,
                     uint8_t* out) const {
  EVP_CIPHER_CTX* ctx = threadCipherCtx();
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex2(ctx, gcmAlgorithm(), key_, nonce, nullptr) != 1) return false;
  if (!addAad(ctx, aad1, false) || !addAad(ctx, aad2, false) || !addAad(ctx, aad3, false)) return false;
  if (n && EVP_DecryptUpdate(ctx, out, &len, ct, static_cast<int>(n)) != 1) return false;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, const_cast<uint8_t*>(tag)) != 1)
    return false;
  // The tag comparison inside EVP_DecryptFinal_ex is constant-time (CRYPTO_memcmp).
  return EVP_DecryptFinal_ex(ctx, out + len, &len) == 1;
}

}  // namespace sluice::risk
