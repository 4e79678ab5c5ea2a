#include "risk/proof_of_work.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstring>

namespace sluice::risk {
namespace {

int leadingZeroBits(const Sha256Digest& d) {
  int n = 0;
  for (uint8_t b : d) {
    if (b == 0) {
      n += 8;
      continue;
    }
    return n + __builtin_clz(static_cast<unsigned>(b)) - 24;
  }
  return n;
}

// A string literal for a <script> block: JSON escapes plus '<', '>', '&' and the two JS line
// separators as \u escapes, so the value can never close the script element.
std::string jsString(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '<': out += "\\u003c"; break;
      case '>': out += "\\u003e"; break;
      case '&': out += "\\u0026"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  // U+2028/2029 end a line in older JS engines.
  for (std::string_view sep : {"\xe2\x80\xa8", "\xe2\x80\xa9"}) {
    size_t p;
    while ((p = out.find(sep)) != std::string::npos) out.replace(p, 3, sep[2] == '\xa8' ? "\\u2028" : "\\u2029");
  }
  return out + "\"";
}

}  // namespace

const char* powStatusName(PowStatus s) {
  switch (s) {
    case PowStatus::kOk: return "ok";
    case PowStatus::kBadTicket: return "bad_ticket";
    case PowStatus::kExpired: return "expired";
    case PowStatus::kWrongSubject: return "wrong_subject";
    case PowStatus::kNotProofOfWork: return "not_proof_of_work";
    case PowStatus::kBadCounter: return "bad_counter";
    case PowStatus::kBadSolution: return "bad_solution";
    case PowStatus::kReplayed: return "replayed";
  }
  return "bad_ticket";
}

int powLeadingZeroBits(std::string_view nonceHex, std::string_view counter) {
  char buf[64];
  if (nonceHex.size() + counter.size() > sizeof buf) return 0;
  std::memcpy(buf, nonceHex.data(), nonceHex.size());
  std::memcpy(buf + nonceHex.size(), counter.data(), counter.size());
  return leadingZeroBits(sha256(std::string_view(buf, nonceHex.size() + counter.size())));
}

uint64_t solveProofOfWork(std::string_view nonceHex, int difficulty) {
  for (uint64_t c = 0;; ++c) {
    const std::string s = std::to_string(c);
    if (powLeadingZeroBits(nonceHex, s) >= difficulty) return c;
  }
}

PowStatus verifyProofOfWork(const ChallengeTicketCodec& codec, SpentSet& spent,
                            std::string_view ticketText, std::string_view counter,
                            const std::array<uint8_t, 16>* subject, int64_t now,
                            ChallengeTicket* ticketOut) {
  ChallengeTicket t;
  switch (codec.open(ticketText, subject, now, &t)) {
    case TicketStatus::kOk: break;
    case TicketStatus::kExpired: return PowStatus::kExpired;
    case TicketStatus::kWrongSubject: return PowStatus::kWrongSubject;
    default: return PowStatus::kBadTicket;
  }
  if (ticketOut) *ticketOut = t;
  if (t.difficulty == 0) return PowStatus::kNotProofOfWork;
  if (counter.empty() || counter.size() > 20) return PowStatus::kBadCounter;
  for (char c : counter)
    if (c < '0' || c > '9') return PowStatus::kBadCounter;
  if (powLeadingZeroBits(t.nonceHex(), counter) < t.difficulty) return PowStatus::kBadSolution;
  // Spent only once solved: a wrong guess does not burn a ticket a human is still solving.
  if (!spent.markSpent(std::string_view(reinterpret_cast<const char*>(t.nonce.data()), t.nonce.size()),
                       t.expiresAt, now)) return PowStatus::kReplayed;
  return PowStatus::kOk;
}

std::string safeReturnUrl(std::string_view url) {
  if (url.empty() || url.size() > 2048 || url[0] != '/') return "/";
  if (url.size() > 1 && (url[1] == '/' || url[1] == '\\')) return "/";
  for (unsigned char c : url)
    if (c < 0x21 || c == 0x7f || c == '\\') return "/";
  return std::string(url);
}

std::string proofOfWorkPage(std::string_view ticketText, const ChallengeTicket& t,
                            std::string_view verifyUrl, std::string_view returnUrl) {
  std::string page;
  page.reserve(2600);
  page +=
      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
      "<meta name=\"robots\" content=\"noindex\"><title>Checking your browser</title>"
      "<style>body{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;"
      "color:#222}</style></head>\n<body><h1>One moment</h1>"
      "<p id=\"s\">Checking your browser before you continue.</p>"
      "<noscript><p>Please enable JavaScript to continue.</p></noscript>\n<script>\n(function(){\n";
  page += "var T=" + jsString(ticketText) + ",N=" + jsString(t.nonceHex()) +
          ",D=" + std::to_string(t.difficulty) + ",V=" + jsString(safeReturnUrl(verifyUrl)) +
          ",R=" + jsString(safeReturnUrl(returnUrl)) + ";\n";
  page +=
      "var s=document.getElementById(\"s\");\n"
      "if(!window.crypto||!crypto.subtle||!window.TextEncoder){s.textContent=\"This check needs "
      "a secure (HTTPS) connection and a current browser.\";return;}\n"
      "var enc=new TextEncoder(),c=0,B=128;\n"
      "function zeros(b){var n=0;for(var i=0;i<b.length;i++){var x=b[i];if(x===0){n+=8;continue;}"
      "while(!(x&128)){n++;x<<=1;}break;}return n;}\n"
      "function batch(){var ps=[];for(var i=0;i<B;i++)ps.push(crypto.subtle.digest(\"SHA-256\","
      "enc.encode(N+(c+i))));\n"
      " return Promise.all(ps).then(function(hs){for(var i=0;i<hs.length;i++){"
      "if(zeros(new Uint8Array(hs[i]))>=D)return c+i;}c+=B;return batch();});}\n"
      "batch().then(function(k){return fetch(V,{method:\"POST\",credentials:\"same-origin\","
      "headers:{\"Content-Type\":\"application/x-www-form-urlencoded\"},"
      "body:\"ticket=\"+encodeURIComponent(T)+\"&counter=\"+k});})\n"
      ".then(function(r){if(r.ok){location.replace(R);}else{s.textContent=\"The check failed (\""
      "+r.status+\"). Reload the page to try again.\";}})\n"
      ".catch(function(){s.textContent=\"The check failed. Reload the page to try again.\";});\n"
      "})();\n</script></body></html>\n";
  return page;
}

}  // namespace sluice::risk
