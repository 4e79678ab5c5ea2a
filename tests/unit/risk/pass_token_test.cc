#include "risk/pass_token.h"

#include <catch2/catch.hpp>

#include "risk/crypto.h"
#include "risk/spent_set.h"
#include "risk/verifier_signature.h"

namespace sluice::risk {
namespace {

const std::string kMaster(40, 'k');
constexpr int64_t kNow = 1700000000;
const char* kUa = "Mozilla/5.0 Chrome/124";
const char* kTls = "t13d1516h2_8daaf6152771_b0da82dd1658";

IpAddress ip(const char* s) {
  IpAddress a;
  REQUIRE(IpAddress::parse(s, &a));
  return a;
}

PassTokenCodecPtr codec(uint8_t current = 1, std::vector<uint8_t> accepted = {},
                        uint32_t minPolicy = 0) {
  PassTokenKeysConfig c;
  c.masterSecret = kMaster;
  c.currentKeyId = current;
  c.acceptedKeyIds = std::move(accepted);
  c.minPolicyVersion = minPolicy;
  std::string err;
  auto p = PassTokenCodec::create(c, &err);
  REQUIRE(p);
  return p;
}

TEST_CASE("crypto helpers: base64url and hex round trips, strict decoding", "[risk][crypto]") {
  for (size_t n = 0; n < 40; ++n) {
    std::string raw;
    for (size_t i = 0; i < n; ++i) raw += static_cast<char>(i * 37 + 11);
    std::string enc = base64UrlEncode(reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
    CHECK(enc.find_first_of("+/=") == std::string::npos);
    std::string dec;
    REQUIRE(base64UrlDecode(enc, &dec));
    CHECK(dec == raw);
  }
  std::string out;
  CHECK_FALSE(base64UrlDecode("ab+c", &out));
  CHECK_FALSE(base64UrlDecode("abc=", &out));
  CHECK_FALSE(base64UrlDecode("a", &out));
  CHECK((base64UrlDecode("ag", &out) && out.size() == 1));
  CHECK_FALSE(base64UrlDecode("AB", &out));  // non-zero leftover bits
  uint8_t b[2];
  CHECK(hexDecode("0aFF", b, 2));
  CHECK(b[1] == 0xff);
  CHECK_FALSE(hexDecode("0g00", b, 2));
  // RFC 4231 test case 2.
  HmacSha256 h("Jefe");
  auto d = h.mac("what do ya want for nothing?");
  CHECK(hexEncode(d.data(), d.size()) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST_CASE("pass token round trip", "[risk][token]") {
  auto c = codec();
  const std::string t = c->issue({"dev-1", "m-1"}, 2, 7, ip("203.0.113.9"), kUa, kTls, kNow, 1800);
  CHECK(t.size() == PassTokenCodec::kTokenChars);
  auto r = c->verify(t, {"dev-1", "m-1"}, ip("203.0.113.200"), kUa, kTls, kNow + 10);
  REQUIRE(r.status == TokenStatus::kValid);
  CHECK(r.token.level == 2);
  CHECK(r.token.policyVersion == 7);
  CHECK(r.token.issuedAt == kNow);
  CHECK(r.token.notAfter == kNow + 1800);
  CHECK_FALSE(r.ipChanged);  // same /24
  // Two tokens never share a unique id.
  const std::string t2 = c->issue({"dev-1", ""}, 2, 7, ip("203.0.113.9"), kUa, kTls, kNow, 1800);
  auto r2 = c->verify(t2, {"dev-1", ""}, ip("203.0.113.9"), kUa, kTls, kNow);
  CHECK(r2.token.uniqueId != r.token.uniqueId);
}

TEST_CASE("pass token: a changed IP is reported, not refused", "[risk][token]") {
  auto c = codec();
  const std::string t = c->issue({"dev-1", ""}, 1, 1, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  auto r = c->verify(t, {"dev-1", ""}, ip("198.51.100.1"), kUa, kTls, kNow);
  CHECK(r.status == TokenStatus::kValid);
  CHECK(r.ipChanged);
  const std::string t6 = c->issue({"dev-1", ""}, 1, 1, ip("2001:db8:1:2::1"), kUa, kTls, kNow, 60);
  CHECK_FALSE(c->verify(t6, {"dev-1", ""}, ip("2001:db8:1:2::99"), kUa, kTls, kNow).ipChanged);
  CHECK(c->verify(t6, {"dev-1", ""}, ip("2001:db8:1:3::1"), kUa, kTls, kNow).ipChanged);
}

TEST_CASE("pass token: expiry, future issue, subject, policy", "[risk][token]") {
  auto c = codec(1, {}, 3);
  const std::string t = c->issue({"dev-1", ""}, 1, 3, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  CHECK(c->verify(t, {"dev-1", ""}, ip("203.0.113.9"), kUa, kTls, kNow + 59).status == TokenStatus::kValid);
  CHECK(c->verify(t, {"dev-1", ""}, ip("203.0.113.9"), kUa, kTls, kNow + 60).status == TokenStatus::kExpired);
  CHECK(c->verify(t, {"dev-1", ""}, ip("203.0.113.9"), kUa, kTls, kNow - 61).status == TokenStatus::kNotYetValid);
  CHECK(c->verify(t, {"dev-2", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kWrongSubject);
  CHECK(c->verify(t, {"", "dev-1"}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kWrongSubject);
  const std::string old = c->issue({"dev-1", ""}, 1, 2, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  CHECK(c->verify(old, {"dev-1", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kOldPolicy);
}

TEST_CASE("pass token: bound to UA and TLS fingerprint", "[risk][token]") {
  auto c = codec();
  const std::string t = c->issue({"dev-1", ""}, 1, 1, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  CHECK(c->verify(t, {"dev-1", ""}, ip("203.0.113.9"), "curl/8", kTls, kNow).status == TokenStatus::kForged);
  CHECK(c->verify(t, {"dev-1", ""}, ip("203.0.113.9"), kUa, "other", kNow).status == TokenStatus::kForged);
  // Moving a byte between UA and TLS fingerprint changes the associated data too.
  const std::string a = c->issue({"d", ""}, 1, 1, ip("203.0.113.9"), "ab", "c", kNow, 60);
  CHECK(c->verify(a, {"d", ""}, ip("203.0.113.9"), "a", "bc", kNow).status == TokenStatus::kForged);
}

TEST_CASE("pass token: associated data of every size, joined or in pieces", "[risk][token]") {
  // open() joins the associated data into one buffer up to 1 KB and feeds it in pieces beyond;
  // seal() always feeds pieces. Both must agree, and one changed byte anywhere must not open.
  auto c = codec();
  const TokenSubjectInput subj{"dev-1", ""};
  for (size_t uaLen : {0, 1, 15, 16, 17, 500, 960, 961, 962, 990, 1000, 1024, 3000}) {
    for (size_t tlsLen : {size_t{0}, size_t{36}}) {
      std::string ua(uaLen, 'u');
      for (size_t i = 0; i < ua.size(); ++i) ua[i] = static_cast<char>('a' + i % 26);
      const std::string tls(tlsLen, 't');
      INFO(uaLen << " " << tlsLen);
      const std::string t = c->issue(subj, 1, 0, ip("192.0.2.1"), ua, tls, kNow, 600);
      CHECK(c->verify(t, subj, ip("192.0.2.1"), ua, tls, kNow).status == TokenStatus::kValid);
      if (!ua.empty()) {
        std::string other = ua;
        other[other.size() - 1] ^= 1;
        CHECK(c->verify(t, subj, ip("192.0.2.1"), other, tls, kNow).status == TokenStatus::kForged);
        // The same bytes split differently between UA and TLS fingerprint do not open either.
        CHECK(c->verify(t, subj, ip("192.0.2.1"), ua.substr(0, ua.size() - 1),
                        ua.substr(ua.size() - 1) + tls, kNow).status == TokenStatus::kForged);
      }
    }
  }
}

TEST_CASE("pass token: key rotation", "[risk][token]") {
  auto old = codec(1);
  auto rotated = codec(2, {1});
  auto retired = codec(3, {2});
  const std::string t1 = old->issue({"d", ""}, 1, 1, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  CHECK(rotated->verify(t1, {"d", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kValid);
  CHECK(retired->verify(t1, {"d", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kUnknownKey);
  const std::string t2 = rotated->issue({"d", ""}, 1, 1, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  CHECK(retired->verify(t2, {"d", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kValid);
  // Another master secret: same key id, different key.
  PassTokenKeysConfig other;
  other.masterSecret = std::string(40, 'z');
  std::string err;
  auto foreign = PassTokenCodec::create(other, &err);
  REQUIRE(foreign);
  CHECK(foreign->verify(t1, {"d", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status == TokenStatus::kForged);
}

TEST_CASE("pass token: forged, truncated and garbage input", "[risk][token]") {
  auto c = codec();
  const std::string t = c->issue({"d", ""}, 1, 1, ip("203.0.113.9"), kUa, kTls, kNow, 60);
  auto check = [&](std::string_view s) {
    return c->verify(s, {"d", ""}, ip("203.0.113.9"), kUa, kTls, kNow).status;
  };
  CHECK(check("") == TokenStatus::kAbsent);
  CHECK(check(t.substr(0, t.size() - 1)) == TokenStatus::kMalformed);
  CHECK(check(t + "A") == TokenStatus::kMalformed);
  CHECK(check(std::string(126, '!')) == TokenStatus::kMalformed);
  CHECK(check(std::string(1 << 20, 'A')) == TokenStatus::kMalformed);
  // Every single-character change of the body is caught.
  int caught = 0;
  for (size_t i = 3; i < t.size(); i += 7) {
    std::string f = t;
    f[i] = f[i] == 'A' ? 'B' : 'A';
    if (check(f) != TokenStatus::kValid) ++caught;
  }
  CHECK(caught == static_cast<int>((t.size() - 3 + 6) / 7));
  // Wrong version byte, unknown key id.
  std::string raw;
  REQUIRE(base64UrlDecode(t, &raw));
  raw[0] = 2;
  CHECK(check(base64UrlEncode(reinterpret_cast<const uint8_t*>(raw.data()), raw.size())) == TokenStatus::kMalformed);
  raw[0] = 1;
  raw[1] = 9;
  CHECK(check(base64UrlEncode(reinterpret_cast<const uint8_t*>(raw.data()), raw.size())) == TokenStatus::kUnknownKey);
}

TEST_CASE("pass token codec refuses a short secret or key id 0", "[risk][token]") {
  PassTokenKeysConfig c;
  std::string err;
  c.masterSecret = "short";
  CHECK_FALSE(PassTokenCodec::create(c, &err));
  CHECK(err.find("32 bytes") != std::string::npos);
  c.masterSecret = kMaster;
  c.currentKeyId = 0;
  CHECK_FALSE(PassTokenCodec::create(c, &err));
}

TEST_CASE("verifier signature: sign, check, skew, tamper", "[risk][verifier]") {
  HmacSha256 key(std::string(32, 's'));
  VerifierReport r{kNow, "TICKET", "sms", "dev-1", true};
  const std::string sig = signVerifierReport(key, r);
  CHECK(sig.rfind("v1=", 0) == 0);
  CHECK(sig.size() == 67);
  CHECK(verifierCanonicalString(r) == "sluice-verify-v1\n1700000000\nTICKET\nsms\ndev-1\npass");
  CHECK(checkVerifierReport(key, r, sig, kNow + 30, 60) == VerifierStatus::kOk);
  CHECK(checkVerifierReport(key, r, sig, kNow + 61, 60) == VerifierStatus::kStale);
  CHECK(checkVerifierReport(key, r, sig, kNow - 61, 60) == VerifierStatus::kStale);
  VerifierReport other = r;
  other.level = "face";
  CHECK(checkVerifierReport(key, other, sig, kNow, 60) == VerifierStatus::kBadSignature);
  other = r;
  other.passed = false;
  CHECK(checkVerifierReport(key, other, sig, kNow, 60) == VerifierStatus::kBadSignature);
  CHECK(checkVerifierReport(key, r, "v2=00", kNow, 60) == VerifierStatus::kMalformed);
  CHECK(checkVerifierReport(key, r, "v1=zz", kNow, 60) == VerifierStatus::kMalformed);
  other = r;
  other.subject = "a\nb";
  CHECK(checkVerifierReport(key, other, sig, kNow, 60) == VerifierStatus::kMalformed);
  other = r;
  other.timestamp = INT64_MIN;
  CHECK(checkVerifierReport(key, other, signVerifierReport(key, other), kNow, 60) == VerifierStatus::kStale);
}

TEST_CASE("spent set: once per id until it expires", "[risk][spent]") {
  SpentSet s(1 << 16);
  CHECK(s.markSpent("t1", kNow + 60, kNow));
  CHECK_FALSE(s.markSpent("t1", kNow + 60, kNow + 1));
  CHECK(s.isSpent("t1", kNow + 59));
  CHECK(s.markSpent("t2", kNow + 60, kNow));
  CHECK_FALSE(s.isSpent("t1", kNow + 60));
  CHECK(s.markSpent("t1", kNow + 200, kNow + 61));  // expired: the id may be reused
}

}  // namespace
}  // namespace sluice::risk
