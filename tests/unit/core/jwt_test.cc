// core/jwt.h: tokens are built here with OpenSSL (HMAC, a fresh RSA key), so every case checks
// the verifier against independently produced signatures.
#include "core/jwt.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <catch2/catch.hpp>
#include <string>

namespace sluice {
namespace {

constexpr int64_t kNow = 1800000000;  // 2027-01-15

std::string hs256Token(const std::string& header, const std::string& claims, const std::string& secret) {
  std::string input = base64UrlEncode(header) + "." + base64UrlEncode(claims);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return input + "." + base64UrlEncode(std::string(reinterpret_cast<char*>(mac), len));
}

struct RsaKey {
  EVP_PKEY* key = nullptr;
  RsaKey() {
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr);
    REQUIRE(EVP_PKEY_keygen_init(ctx) == 1);
    REQUIRE(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048) == 1);
    REQUIRE(EVP_PKEY_keygen(ctx, &key) == 1);
    EVP_PKEY_CTX_free(ctx);
  }
  ~RsaKey() { EVP_PKEY_free(key); }
  std::string publicPem() const {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, key);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<size_t>(n));
    BIO_free(bio);
    return pem;
  }
  std::string sign(const std::string& claims) const {
    std::string input = base64UrlEncode(R"({"alg":"RS256","typ":"JWT"})") + "." + base64UrlEncode(claims);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t len = 0;
    REQUIRE(EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1);
    REQUIRE(EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1);
    std::string sig(len, '\0');
    REQUIRE(EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                           reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1);
    EVP_MD_CTX_free(ctx);
    sig.resize(len);
    return input + "." + base64UrlEncode(sig);
  }
};

const std::string kHs = R"({"alg":"HS256","typ":"JWT"})";

TEST_CASE("jwt: base64url round trip and strictness", "[core][jwt]") {
  for (std::string s : std::initializer_list<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\xff\xfe\x00\x01", 4)}) {
    std::string back;
    REQUIRE(base64UrlDecode(base64UrlEncode(s), &back));
    CHECK(back == s);
  }
  CHECK(base64UrlEncode("\xfb\xff") == "-_8");  // the URL alphabet, no padding
  std::string out;
  CHECK_FALSE(base64UrlDecode("ab+c", &out));  // '+' is the other alphabet
  CHECK_FALSE(base64UrlDecode("abc=", &out));  // no padding
  CHECK_FALSE(base64UrlDecode("a", &out));     // a lone character encodes nothing
}

TEST_CASE("jwt: claims are read as strings or integers, escapes decoded", "[core][jwt]") {
  std::string v;
  const char* claims = R"({"nested":{"sub":"no"},"arr":[1,{"a":[]},"x"],"sub":"m\u00e9-\"42\"","n":-17,"f":1.5,"t":true})";
  REQUIRE(jwtClaim(claims, "sub", &v));
  CHECK(v == "m\xc3\xa9-\"42\"");
  REQUIRE(jwtClaim(claims, "n", &v));
  CHECK(v == "-17");
  CHECK_FALSE(jwtClaim(claims, "f", &v));  // not an integer
  CHECK_FALSE(jwtClaim(claims, "t", &v));  // not a string
  CHECK_FALSE(jwtClaim(claims, "a", &v));  // only top-level members
  CHECK_FALSE(jwtClaim(claims, "missing", &v));
  CHECK_FALSE(jwtClaim(R"({"sub":"open)", "sub", &v));
  CHECK_FALSE(jwtClaim(R"(["sub","x"])", "sub", &v));
  std::string deep(100, '[');
  CHECK_FALSE(jwtClaim("{\"a\":" + deep + ",\"sub\":\"x\"}", "sub", &v));  // depth bounded
}

TEST_CASE("jwt: HS256 verified with the configured secret", "[core][jwt]") {
  JwtVerifier v(JwtKeys{"s3cret", ""});
  std::string claims;
  std::string good = hs256Token(kHs, R"({"sub":"member-1","exp":1800000100})", "s3cret");
  REQUIRE(v.decode(good, kNow, 30, &claims));
  std::string sub;
  REQUIRE(jwtClaim(claims, "sub", &sub));
  CHECK(sub == "member-1");
  CHECK_FALSE(v.decode(hs256Token(kHs, R"({"sub":"member-1"})", "other"), kNow, 30, &claims));
  // A tampered payload under the original signature.
  std::string tampered = good;
  size_t d1 = tampered.find('.'), d2 = tampered.rfind('.');
  tampered.replace(d1 + 1, d2 - d1 - 1, base64UrlEncode(R"({"sub":"member-2","exp":1800000100})"));
  CHECK_FALSE(v.decode(tampered, kNow, 30, &claims));
  // alg none, or an algorithm without a configured key, never passes when verifying.
  std::string none = base64UrlEncode(R"({"alg":"none"})") + "." + base64UrlEncode(R"({"sub":"x"})") + ".";
  CHECK_FALSE(v.decode(none, kNow, 30, &claims));
  CHECK_FALSE(v.decode(hs256Token(R"({"alg":"RS256"})", R"({"sub":"x"})", "s3cret"), kNow, 30, &claims));
}

TEST_CASE("jwt: exp and nbf with leeway", "[core][jwt]") {
  JwtVerifier v(JwtKeys{"k", ""});
  std::string claims;
  std::string t = hs256Token(kHs, R"({"sub":"a","exp":1800000000,"nbf":1799999000})", "k");
  CHECK(v.decode(t, kNow, 0, &claims));
  CHECK_FALSE(v.decode(t, kNow + 1, 0, &claims));
  CHECK(v.decode(t, kNow + 30, 30, &claims));
  CHECK_FALSE(v.decode(t, kNow + 31, 30, &claims));
  CHECK_FALSE(v.decode(t, 1799999000 - 31, 30, &claims));
  CHECK(v.decode(t, 1799999000 - 30, 30, &claims));
}

TEST_CASE("jwt: RS256 verified with the configured public key", "[core][jwt]") {
  RsaKey key;
  std::string pem = key.publicPem();
  CHECK(checkRsaPublicKey(pem).empty());
  CHECK_FALSE(checkRsaPublicKey("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n").empty());
  JwtVerifier v(JwtKeys{"", pem});
  std::string claims, sub;
  REQUIRE(v.decode(key.sign(R"({"sub":"rsa-member"})"), kNow, 30, &claims));
  REQUIRE(jwtClaim(claims, "sub", &sub));
  CHECK(sub == "rsa-member");
  RsaKey other;
  CHECK_FALSE(v.decode(other.sign(R"({"sub":"rsa-member"})"), kNow, 30, &claims));
  // An HS256 token "signed" with the public key text (the classic alg confusion) is refused.
  CHECK_FALSE(v.decode(hs256Token(kHs, R"({"sub":"x"})", pem), kNow, 30, &claims));
}

TEST_CASE("jwt: without keys claims are read unverified; garbage is never a token", "[core][jwt]") {
  JwtVerifier v(JwtKeys{});
  std::string claims;
  CHECK(v.decode(hs256Token(kHs, R"({"sub":"u"})", "anything"), kNow, 30, &claims));
  for (std::string bad : std::initializer_list<std::string>{"", ".", "..", "a.b", "a.b.c.d", "!!.e30.", "e30.!!.", "e30.WzFd.", "e30.bnVsbA.x",
                          std::string(9000, 'a')}) {
    INFO(bad);
    CHECK_FALSE(v.decode(bad, kNow, 30, &claims));
  }
}

}  // namespace
}  // namespace sluice

TEST_CASE("json bodies: members and string arrays for the admin API", "[core][jwt][json]") {
  std::string v;
  CHECK(sluice::jsonMember(R"({"mode": "shadow", "on": true})", "on", &v));
  CHECK(v == "true");
  std::vector<std::string> a;
  REQUIRE(sluice::jsonStringArrayMember(R"({"ttl":"30m","entries":["10.0.0.0/8", "dev\u0041"]})", "entries", &a));
  CHECK(a == std::vector<std::string>{"10.0.0.0/8", "devA"});
  CHECK(sluice::jsonStringArrayMember(R"({"entries":[]})", "entries", &a));
  CHECK(a.empty());
  CHECK_FALSE(sluice::jsonStringArrayMember(R"({"entries":["a", 1]})", "entries", &a));
  CHECK_FALSE(sluice::jsonStringArrayMember(R"({"entries":"a"})", "entries", &a));
  CHECK_FALSE(sluice::jsonStringArrayMember(R"({"entries":["a")", "entries", &a));
  CHECK_FALSE(sluice::jsonStringArrayMember(R"({"other":["a"]})", "entries", &a));
}
