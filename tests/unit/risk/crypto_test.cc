// The allocation-free crypto paths (precomputed HMAC states, cached per-key GCM contexts,
// buffer base64 decoding) against OpenSSL's reference one-shot functions.
#include "risk/crypto.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace sluice::risk {
namespace {

Sha256Digest referenceHmac(std::string_view key, std::string_view data) {
  Sha256Digest d{};
  unsigned int len = 0;
  static const unsigned char kEmpty = 0;
  HMAC(EVP_sha256(), key.empty() ? static_cast<const void*>(&kEmpty) : key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), d.data(), &len);
  return d;
}

std::string bytes(size_t n, int seed) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += static_cast<char>((i * 131 + seed * 17 + 7) & 0xff);
  return s;
}

TEST_CASE("HmacSha256 matches OpenSSL HMAC for every key and data length class", "[risk][crypto]") {
  // Empty key, short keys, exactly one block, just over a block (hashed first), RFC 4231's 131.
  for (size_t keyLen : {0, 1, 20, 32, 63, 64, 65, 131, 200}) {
    const std::string key = bytes(keyLen, 1);
    HmacSha256 h(key);
    REQUIRE(h.valid());
    for (size_t dataLen : {0, 1, 2, 55, 56, 63, 64, 65, 119, 120, 128, 1000}) {
      const std::string data = bytes(dataLen, 2);
      CHECK(h.mac(data) == referenceHmac(key, data));
      // mac2 is the MAC of the concatenation, wherever the split falls.
      for (size_t split : {size_t{0}, dataLen / 3, dataLen}) {
        CHECK(h.mac2(std::string_view(data).substr(0, split), std::string_view(data).substr(split)) ==
              referenceHmac(key, data));
      }
    }
  }
  // RFC 4231 test case 6: a 131-byte key of 0xaa.
  HmacSha256 h6(std::string(131, '\xaa'));
  const auto d6 = h6.mac("Test Using Larger Than Block-Size Key - Hash Key First");
  CHECK(hexEncode(d6.data(), d6.size()) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST_CASE("HmacSha256 is usable from several threads at once", "[risk][crypto]") {
  HmacSha256 h("shared key");
  const auto want = referenceHmac("shared key", "payload");
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) bad[t] += h.mac("payload") != want;
    });
  for (auto& th : threads) th.join();
  for (int b : bad) CHECK(b == 0);
}

TEST_CASE("base64url buffer decoding agrees with the string form and respects capacity",
          "[risk][crypto]") {
  for (size_t n = 0; n < 40; ++n) {
    const std::string raw = bytes(n, 3);
    const std::string enc = base64UrlEncode(reinterpret_cast<const uint8_t*>(raw.data()), n);
    uint8_t buf[64];
    size_t len = 0;
    REQUIRE(base64UrlDecode(enc, buf, sizeof buf, &len));
    CHECK(std::string(reinterpret_cast<char*>(buf), len) == raw);
    if (n > 0) CHECK_FALSE(base64UrlDecode(enc, buf, n - 1, &len));
  }
  uint8_t buf[8];
  size_t len = 0;
  CHECK_FALSE(base64UrlDecode("ab+c", buf, sizeof buf, &len));
  CHECK_FALSE(base64UrlDecode("abc=", buf, sizeof buf, &len));
  CHECK_FALSE(base64UrlDecode("a", buf, sizeof buf, &len));
  CHECK_FALSE(base64UrlDecode("AB", buf, sizeof buf, &len));  // non-zero leftover bits
  CHECK_FALSE(base64UrlDecode(std::string_view("AB\0C", 4), buf, sizeof buf, &len));
  CHECK(base64UrlDecode("ag", buf, sizeof buf, &len));
  CHECK(len == 1);
}

TEST_CASE("Aes256Gcm reuses per-key contexts without mixing keys, nonces or failures",
          "[risk][crypto]") {
  // More keys than the per-thread context cache holds, used interleaved, so slots are evicted
  // and re-scheduled; a forged open in between must not poison the next one.
  std::vector<std::unique_ptr<Aes256Gcm>> keys;
  for (int k = 0; k < 12; ++k) {
    uint8_t key[32];
    for (int i = 0; i < 32; ++i) key[i] = static_cast<uint8_t>(k * 31 + i);
    keys.push_back(std::make_unique<Aes256Gcm>(key));
  }
  const std::string pt = bytes(64, 5);
  for (int round = 0; round < 3; ++round) {
    for (int k = 0; k < 12; ++k) {
      uint8_t nonce[12];
      for (int i = 0; i < 12; ++i) nonce[i] = static_cast<uint8_t>(round * 13 + k + i);
      uint8_t ct[64], tag[16], out[64];
      REQUIRE(keys[k]->seal(nonce, "aad", "ua", "", reinterpret_cast<const uint8_t*>(pt.data()),
                            pt.size(), ct, tag));
      // Another key, or another AD, does not open it.
      CHECK_FALSE(keys[(k + 1) % 12]->open(nonce, "aad", "ua", "", ct, sizeof ct, tag, out));
      CHECK_FALSE(keys[k]->open(nonce, "aad", "ub", "", ct, sizeof ct, tag, out));
      uint8_t bad[16];
      std::memcpy(bad, tag, 16);
      bad[3] ^= 1;
      CHECK_FALSE(keys[k]->open(nonce, "aad", "ua", "", ct, sizeof ct, bad, out));
      // The right key and AD right after the failures do.
      REQUIRE(keys[k]->open(nonce, "aad", "ua", "", ct, sizeof ct, tag, out));
      CHECK(std::string(reinterpret_cast<char*>(out), sizeof out) == pt);
      // Same key and plaintext, another nonce: another ciphertext.
      uint8_t nonce2[12];
      std::memcpy(nonce2, nonce, 12);
      nonce2[0] ^= 0x80;
      uint8_t ct2[64], tag2[16];
      REQUIRE(keys[k]->seal(nonce2, "aad", "ua", "", reinterpret_cast<const uint8_t*>(pt.data()),
                            pt.size(), ct2, tag2));
      CHECK(std::memcmp(ct, ct2, sizeof ct) != 0);
    }
  }
  // A key destroyed and another created (possibly at the same address) never reuses its context.
  uint8_t k1[32] = {1}, k2[32] = {2};
  uint8_t nonce[12] = {}, ct[64], tag[16], out[64];
  auto a = std::make_unique<Aes256Gcm>(k1);
  REQUIRE(a->seal(nonce, "", "", "", reinterpret_cast<const uint8_t*>(pt.data()), 64, ct, tag));
  a.reset();
  auto b = std::make_unique<Aes256Gcm>(k2);
  CHECK_FALSE(b->open(nonce, "", "", "", ct, 64, tag, out));
  auto a2 = std::make_unique<Aes256Gcm>(k1);
  CHECK(a2->open(nonce, "", "", "", ct, 64, tag, out));
}

TEST_CASE("Aes256Gcm works from several threads (each has its own contexts)", "[risk][crypto]") {
  uint8_t key[32] = {9};
  Aes256Gcm g(key);
  std::vector<std::thread> threads;
  std::vector<int> bad(3, 0);
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        uint8_t nonce[12] = {static_cast<uint8_t>(t), static_cast<uint8_t>(i)};
        uint8_t pt[32] = {static_cast<uint8_t>(i)}, ct[32], tag[16], out[32];
        bad[t] += !g.seal(nonce, "x", "", "", pt, sizeof pt, ct, tag);
        bad[t] += !g.open(nonce, "x", "", "", ct, sizeof ct, tag, out);
        bad[t] += std::memcmp(pt, out, sizeof pt) != 0;
      }
    });
  for (auto& th : threads) th.join();
  for (int b : bad) CHECK(b == 0);
}

}  // namespace
}  // namespace sluice::risk
