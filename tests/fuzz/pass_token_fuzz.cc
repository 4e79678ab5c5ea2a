// Pass-token and challenge-ticket verification on hostile cookie values: never a crash, never a
// read past the input, and never "valid" for bytes this process did not seal. The first input
// byte picks the UA/TLS split; the rest is the token text.
#include <string>

#include "risk/challenge_ticket.h"
#include "risk/pass_token.h"
#include "risk/proof_of_work.h"
#include "tests/fuzz/fuzz_common.h"

namespace {

struct Codecs {
  sluice::risk::PassTokenCodecPtr tokens;
  sluice::risk::ChallengeTicketCodecPtr tickets;
  std::string valid;
};

const Codecs& codecs() {
  static const Codecs c = [] {
    Codecs c;
    sluice::risk::PassTokenKeysConfig k;
    k.masterSecret = std::string(40, 'f');
    k.currentKeyId = 2;
    k.acceptedKeyIds = {1};
    std::string err;
    c.tokens = sluice::risk::PassTokenCodec::create(k, &err);
    c.tickets = sluice::risk::ChallengeTicketCodec::create(k.masterSecret, &err);
    FUZZ_CHECK(c.tokens && c.tickets);
    sluice::IpAddress ip;
    sluice::IpAddress::parse("192.0.2.1", &ip);
    c.valid = c.tokens->issue({"dev", ""}, 1, 1, ip, "ua", "tls", 1700000000, 600);
    return c;
  }();
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::risk;
  if (size > 8192) return -1;
  sluice::fuzz::Knobs knobs(data, size);
  const uint8_t mode = knobs.byte();
  const std::string text(knobs.rest());
  const Codecs& c = codecs();
  sluice::IpAddress ip;
  sluice::IpAddress::parse("192.0.2.1", &ip);
  const TokenCheck r = c.tokens->verify(text, {"dev", ""}, ip, "ua", "tls", 1700000000);
  // Only the token we sealed authenticates; anything else the fuzzer builds must not.
  if (r.status == TokenStatus::kValid) FUZZ_CHECK(text == c.valid);
  if (text.size() != PassTokenCodec::kTokenChars && !text.empty())
    FUZZ_CHECK(r.status == TokenStatus::kMalformed);
  // Mutations of the valid token: one byte replaced at a fuzzer-chosen place.
  std::string mutated = c.valid;
  if (!text.empty()) {
    mutated[mode % mutated.size()] = text[0];
    const TokenCheck m = c.tokens->verify(mutated, {"dev", ""}, ip, "ua", "tls", 1700000000);
    if (mutated != c.valid) FUZZ_CHECK(m.status != TokenStatus::kValid);
  }
  ChallengeTicket t;
  const TicketStatus ts = c.tickets->open(text, nullptr, 1700000000, &t);
  if (ts == TicketStatus::kOk) FUZZ_CHECK(text.size() == ChallengeTicketCodec::kTicketChars);
  (void)safeReturnUrl(text);
  return 0;
}
