#pragma once
// The built-in challenge level that needs no external service: the browser must find a counter
// such that SHA-256(nonce_hex || decimal(counter)) starts with `difficulty` zero bits, where
// nonce_hex is the ticket's nonce as 32 lowercase hex characters and || is concatenation of the
// ASCII strings. Expected work is 2^difficulty hashes (16 bits: ~65k, a second or two in a
// browser); verifying costs the proxy one hash.
#include <cstdint>
#include <string>
#include <string_view>

#include "risk/challenge_ticket.h"
#include "risk/spent_set.h"

namespace sluice::risk {

enum class PowStatus : uint8_t {
  kOk,
  kBadTicket,      // malformed or forged ticket
  kExpired,
  kWrongSubject,
  kNotProofOfWork, // the ticket is for an external challenge (difficulty 0)
  kBadCounter,     // not 1..20 decimal digits
  kBadSolution,    // not enough leading zero bits
  kReplayed,       // this ticket was already redeemed
};
const char* powStatusName(PowStatus s);

// Leading zero bits of SHA-256(nonceHex || counter).
int powLeadingZeroBits(std::string_view nonceHex, std::string_view counter);
// Finds a solving counter by brute force (tests, the benchmark, the e2e client).
uint64_t solveProofOfWork(std::string_view nonceHex, int difficulty);

// Verifies a submission; on success marks the ticket nonce spent (once per ticket).
PowStatus verifyProofOfWork(const ChallengeTicketCodec& codec, SpentSet& spent,
                            std::string_view ticketText, std::string_view counter,
                            const std::array<uint8_t, 16>* subject, int64_t nowUnix,
                            ChallengeTicket* ticketOut = nullptr);

// A return URL safe to send the browser back to: a same-site absolute path ("/x?y"), never
// "//host" or a scheme (no open redirect). Anything else becomes "/".
std::string safeReturnUrl(std::string_view url);

// The self-contained interstitial (no external resources): solves the ticket with
// crypto.subtle.digest, POSTs "ticket=<ticket>&counter=<n>" (form-encoded) to verifyUrl with the
// page's cookies, and on a 2xx reloads returnUrl. crypto.subtle needs a secure context (HTTPS or
// localhost); elsewhere the page says so.
std::string proofOfWorkPage(std::string_view ticketText, const ChallengeTicket& ticket,
                            std::string_view verifyUrl, std::string_view returnUrl);

}  // namespace sluice::risk
