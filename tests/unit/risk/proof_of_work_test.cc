#include "risk/proof_of_work.h"

#include <catch2/catch.hpp>

namespace sluice::risk {
namespace {

constexpr int64_t kNow = 1700000000;
const std::array<uint8_t, 16> kSubject{1, 2, 3};

ChallengeTicketCodecPtr codec() {
  std::string err;
  auto c = ChallengeTicketCodec::create(std::string(32, 'm'), &err);
  REQUIRE(c);
  return c;
}

TEST_CASE("challenge tickets: seal, open, expiry, subject, forgery", "[risk][pow]") {
  auto c = codec();
  ChallengeTicket issued;
  const std::string t = c->issue(2, 12, kSubject, kNow, 300, &issued);
  CHECK(t.size() == ChallengeTicketCodec::kTicketChars);
  ChallengeTicket got;
  REQUIRE(c->open(t, &kSubject, kNow + 10, &got) == TicketStatus::kOk);
  CHECK(got.level == 2);
  CHECK(got.difficulty == 12);
  CHECK(got.nonce == issued.nonce);
  CHECK(c->open(t, &kSubject, kNow + 300, &got) == TicketStatus::kExpired);
  const std::array<uint8_t, 16> other{9};
  CHECK(c->open(t, &other, kNow, &got) == TicketStatus::kWrongSubject);
  std::string f = t;
  f[10] = f[10] == 'A' ? 'B' : 'A';
  CHECK(c->open(f, &kSubject, kNow, &got) == TicketStatus::kForged);
  CHECK(c->open("garbage", &kSubject, kNow, &got) == TicketStatus::kMalformed);
  CHECK(c->open(std::string(80, '*'), &kSubject, kNow, &got) == TicketStatus::kMalformed);
  std::string err;
  auto foreign = ChallengeTicketCodec::create(std::string(32, 'x'), &err);
  CHECK(foreign->open(t, &kSubject, kNow, &got) == TicketStatus::kForged);
}

TEST_CASE("proof of work: a solution passes once; wrong ones fail", "[risk][pow]") {
  auto c = codec();
  SpentSet spent(1 << 16);
  ChallengeTicket tk;
  const std::string t = c->issue(1, 10, kSubject, kNow, 300, &tk);
  const uint64_t counter = solveProofOfWork(tk.nonceHex(), 10);
  const std::string cs = std::to_string(counter);
  CHECK(powLeadingZeroBits(tk.nonceHex(), cs) >= 10);
  // Find a counter that does not solve it.
  std::string wrong = "0";
  for (uint64_t i = 0; powLeadingZeroBits(tk.nonceHex(), wrong) >= 10; ++i) wrong = std::to_string(i + 1);
  CHECK(verifyProofOfWork(*c, spent, t, wrong, &kSubject, kNow) == PowStatus::kBadSolution);
  CHECK(verifyProofOfWork(*c, spent, t, "12a", &kSubject, kNow) == PowStatus::kBadCounter);
  CHECK(verifyProofOfWork(*c, spent, t, "", &kSubject, kNow) == PowStatus::kBadCounter);
  CHECK(verifyProofOfWork(*c, spent, t, std::string(21, '1'), &kSubject, kNow) == PowStatus::kBadCounter);
  CHECK(verifyProofOfWork(*c, spent, t, cs, &kSubject, kNow + 301) == PowStatus::kExpired);
  CHECK(verifyProofOfWork(*c, spent, t, cs, &kSubject, kNow) == PowStatus::kOk);
  CHECK(verifyProofOfWork(*c, spent, t, cs, &kSubject, kNow) == PowStatus::kReplayed);
  const std::string ext = c->issue(3, 0, kSubject, kNow, 300);
  CHECK(verifyProofOfWork(*c, spent, ext, "1", &kSubject, kNow) == PowStatus::kNotProofOfWork);
}

TEST_CASE("proof of work: leading zero bits", "[risk][pow]") {
  // SHA-256("abc") = ba7816bf...: no leading zero bits.
  CHECK(powLeadingZeroBits("ab", "c") == 0);
  CHECK(powLeadingZeroBits(std::string(100, 'a'), "1") == 0);  // oversized input: never passes
}

TEST_CASE("proof of work page: self-contained, escaped, safe return URL", "[risk][pow]") {
  auto c = codec();
  ChallengeTicket tk;
  const std::string t = c->issue(1, 16, kSubject, kNow, 300, &tk);
  const std::string page = proofOfWorkPage(t, tk, "/.sluice/pow", "/item/1?x=</script><b>");
  CHECK(page.find("crypto.subtle.digest") != std::string::npos);
  CHECK(page.find(t) != std::string::npos);
  CHECK(page.find(tk.nonceHex()) != std::string::npos);
  CHECK(page.find("D=16") != std::string::npos);
  CHECK(page.find("</script><b>") == std::string::npos);
  CHECK(page.find("\\u003c/script\\u003e") != std::string::npos);
  CHECK(page.find("http://") == std::string::npos);
  CHECK(page.find("https://") == std::string::npos);
  CHECK(page.find("src=") == std::string::npos);
  CHECK(safeReturnUrl("/cart?a=1") == "/cart?a=1");
  CHECK(safeReturnUrl("//evil.example/") == "/");
  CHECK(safeReturnUrl("/\\evil.example") == "/");
  CHECK(safeReturnUrl("https://evil.example/") == "/");
  CHECK(safeReturnUrl("/a b") == "/");
  CHECK(safeReturnUrl("") == "/");
}

}  // namespace
}  // namespace sluice::risk
