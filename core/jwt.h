#pragma once
// JSON Web Tokens (RFC 7519) just far enough to key limits by a claim: split, base64url-decode,
// verify HS256 / RS256 when a key is given, check exp / nbf, and read top-level string or
// integer claims. Anything malformed, mis-signed or expired is "no token" (never a crash, never
// an exception): the caller then treats the key as missing.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

struct JwtKeys {
  std::string hs256_secret;          // empty: HS256 tokens are not accepted when verifying
  std::string rs256_public_key_pem;  // empty: RS256 tokens are not accepted when verifying
  bool verify() const { return !hs256_secret.empty() || !rs256_public_key_pem.empty(); }
};

// A parsed RS256 public key, loaded once per config (parsing PEM per request would cost ~20 us).
class JwtVerifier {
 public:
  explicit JwtVerifier(const JwtKeys& keys);
  ~JwtVerifier();
  JwtVerifier(const JwtVerifier&) = delete;
  JwtVerifier& operator=(const JwtVerifier&) = delete;

  // The claims object (decoded JSON text of the payload) of `token` if it is well-formed, its
  // signature verifies (when keys are configured; unverified otherwise), and `now_unix` is within
  // [nbf - leeway, exp + leeway]. False otherwise.
  bool decode(std::string_view token, int64_t now_unix, int64_t leeway_seconds,
              std::string* claims_json) const;

 private:
  bool verifySignature(std::string_view alg, std::string_view signing_input,
                       const std::string& signature) const;
  JwtKeys keys_;
  void* rsa_key_ = nullptr;  // EVP_PKEY*, kept opaque so callers need no OpenSSL headers
};
using JwtVerifierPtr = std::shared_ptr<const JwtVerifier>;

// "" when `pem` holds an RSA public key OpenSSL can load, else the reason (config validation).
std::string checkRsaPublicKey(const std::string& pem);

// base64url without padding (RFC 7515 section 2); false on a character outside the alphabet.
bool base64UrlDecode(std::string_view in, std::string* out);
std::string base64UrlEncode(std::string_view in);

// The value of the top-level claim `name` in a JSON object: strings unescaped, integers as
// their digits. False if absent, not a string or integer, or the JSON is malformed.
bool jwtClaim(std::string_view claims_json, std::string_view name, std::string* out);

// The same scanner for small JSON request bodies (admin API): a top-level member's value as text,
// strings unescaped, integers as digits, and true / false / null as those words.
bool jsonMember(std::string_view json, std::string_view name, std::string* out);
// A top-level member whose value is an array of strings (unescaped); false otherwise.
bool jsonStringArrayMember(std::string_view json, std::string_view name,
                           std::vector<std::string>* out);

}  // namespace sluice
