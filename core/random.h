#pragma once
#include <cstdint>
#include <string>

namespace sluice {

// Per-thread xoshiro256** seeded from getrandom(2): fast enough for a request id per request,
// not for secrets (pass tokens use OpenSSL's RAND_bytes).
uint64_t fastRandom();
// 32 lowercase hex characters (128 bits), the shape of a W3C trace id.
std::string randomHex128();
void randomHex(char* out, size_t nchars);

}  // namespace sluice
