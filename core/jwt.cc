#include "core/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <cstring>

namespace sluice {

namespace {

int b64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// A small, strict JSON reader over the claims text: enough to find top-level members and skip
// any value. Depth is bounded so a hostile token cannot recurse the stack away.
class JsonScanner {
 public:
  explicit JsonScanner(std::string_view s) : s_(s) {}

  explicit JsonScanner(std::string_view s, bool literals) : s_(s), literals_(literals) {}

  bool findMember(std::string_view name, std::string* out) {
    return findMemberWith(name, [&] { return scalarValue(out); });
  }
  // The member's value must be an array of strings.
  bool findStringArray(std::string_view name, std::vector<std::string>* out) {
    return findMemberWith(name, [&] {
      out->clear();
      if (!eat('[')) return false;
      ws();
      if (eat(']')) return true;
      for (;;) {
        ws();
        out->emplace_back();
        if (!string(&out->back())) return false;
        ws();
        if (eat(']')) return true;
        if (!eat(',')) return false;
      }
    });
  }

 private:
  template <class ReadValue>
  bool findMemberWith(std::string_view name, ReadValue readValue) {
    ws();
    if (!eat('{')) return false;
    ws();
    if (eat('}')) return false;
    for (;;) {
      std::string key;
      ws();
      if (!string(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      if (key == name) return readValue();
      if (!skipValue(0)) return false;
      ws();
      if (eat(',')) continue;
      return false;  // '}' without a match, or garbage
    }
  }

  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      i_++;
      return true;
    }
    return false;
  }
  static void appendUtf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }
  bool hex4(uint32_t* v) {
    if (i_ + 4 > s_.size()) return false;
    *v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s_[i_++];
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      *v = *v * 16 + static_cast<uint32_t>(d);
    }
    return true;
  }
  bool string(std::string* out) {
    if (!eat('"')) return false;
    while (i_ < s_.size()) {
      char c = s_[i_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        if (out) out->push_back(c);
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      char lit = 0;
      switch (e) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) return false;
          if (cp >= 0xd800 && cp < 0xdc00) {  // a surrogate pair spells one code point
            uint32_t lo;
            if (!eat('\\') || !eat('u') || !hex4(&lo) || lo < 0xdc00 || lo > 0xdfff) return false;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            return false;
          }
          if (out) appendUtf8(out, cp);
          continue;
        }
        default: return false;
      }
      if (out) out->push_back(lit);
    }
    return false;
  }
  bool number(std::string* out) {
    size_t start = i_;
    eat('-');
    size_t digits = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    if (i_ == digits) return false;
    bool integer = true;
    if (eat('.')) {
      integer = false;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      integer = false;
      i_++;
      if (!eat('+')) eat('-');
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    if (out) {
      if (!integer) return false;  // claims used as keys are strings or integers
      out->assign(s_.substr(start, i_ - start));
    }
    return true;
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool scalarValue(std::string* out) {
    if (i_ < s_.size() && s_[i_] == '"') {
      out->clear();
      return string(out);
    }
    if (literals_) {
      for (std::string_view word : {"true", "false", "null"})
        if (literal(word)) {
          out->assign(word);
          return true;
        }
    }
    out->clear();
    return number(out);
  }
  bool skipValue(int depth) {
    if (depth > 32 || i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '"') return string(nullptr);
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      i_++;
      ws();
      if (eat(close)) return true;
      for (;;) {
        ws();
        if (c == '{') {
          if (!string(nullptr)) return false;
          ws();
          if (!eat(':')) return false;
          ws();
        }
        if (!skipValue(depth + 1)) return false;
        ws();
        if (eat(close)) return true;
        if (!eat(',')) return false;
      }
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    return number(nullptr);
  }

  std::string_view s_;
  size_t i_ = 0;
  bool literals_ = false;
};

bool claimInt(std::string_view claims, std::string_view name, int64_t* out) {
  std::string v;
  if (!jwtClaim(claims, name, &v) || v.empty() || v.size() > 18) return false;
  int64_t n = 0;
  size_t i = v[0] == '-' ? 1 : 0;
  for (; i < v.size(); i++) {
    if (v[i] < '0' || v[i] > '9') return false;
    n = n * 10 + (v[i] - '0');
  }
  *out = v[0] == '-' ? -n : n;
  return true;
}

EVP_PKEY* loadRsaPublicKey(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return nullptr;
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key && EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    return nullptr;
  }
  return key;
}

}  // namespace

bool base64UrlDecode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = b64Value(c);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return bits < 6;  // a lone trailing character cannot encode a byte
}

std::string base64UrlEncode(std::string_view in) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 0x3f]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 0x3f]);
  return out;
}

bool jwtClaim(std::string_view claims_json, std::string_view name, std::string* out) {
  JsonScanner scanner(claims_json);
  return scanner.findMember(name, out);
}

bool jsonMember(std::string_view json, std::string_view name, std::string* out) {
  JsonScanner scanner(json, /*literals=*/true);
  return scanner.findMember(name, out);
}

bool jsonStringArrayMember(std::string_view json, std::string_view name,
                           std::vector<std::string>* out) {
  JsonScanner scanner(json, /*literals=*/true);
  return scanner.findStringArray(name, out);
}

std::string checkRsaPublicKey(const std::string& pem) {
  EVP_PKEY* key = loadRsaPublicKey(pem);
  if (!key) return "not a PEM RSA public key (-----BEGIN PUBLIC KEY-----)";
  EVP_PKEY_free(key);
  return "";
}

JwtVerifier::JwtVerifier(const JwtKeys& keys) : keys_(keys) {
  if (!keys_.rs256_public_key_pem.empty()) rsa_key_ = loadRsaPublicKey(keys_.rs256_public_key_pem);
}

JwtVerifier::~JwtVerifier() { EVP_PKEY_free(static_cast<EVP_PKEY*>(rsa_key_)); }

bool JwtVerifier::verifySignature(std::string_view alg, std::string_view signing_input,
                                  const std::string& signature) const {
  if (alg == "HS256" && !keys_.hs256_secret.empty()) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), keys_.hs256_secret.data(), static_cast<int>(keys_.hs256_secret.size()),
              reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size(), mac, &len))
      return false;
    return signature.size() == len && CRYPTO_memcmp(mac, signature.data(), len) == 0;
  }
  if (alg == "RS256" && rsa_key_) {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (!ctx) return false;
    bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, static_cast<EVP_PKEY*>(rsa_key_)) == 1 &&
              EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                               reinterpret_cast<const unsigned char*>(signing_input.data()),
                               signing_input.size()) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
  }
  return false;  // "none", unknown algorithms, or no key for this one: never accepted
}

bool JwtVerifier::decode(std::string_view token, int64_t now_unix, int64_t leeway_seconds,
                         std::string* claims_json) const {
  if (token.size() > 8192) return false;
  size_t d1 = token.find('.');
  if (d1 == std::string_view::npos) return false;
  size_t d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos) return false;
  std::string header;
  if (!base64UrlDecode(token.substr(0, d1), &header)) return false;
  if (!base64UrlDecode(token.substr(d1 + 1, d2 - d1 - 1), claims_json)) return false;
  if (keys_.verify()) {
    std::string alg, signature;
    if (!jwtClaim(header, "alg", &alg)) return false;
    if (!base64UrlDecode(token.substr(d2 + 1), &signature)) return false;
    if (!verifySignature(alg, token.substr(0, d2), signature)) return false;
  }
  int64_t t;
  if (claimInt(*claims_json, "exp", &t) && now_unix > t + leeway_seconds) return false;
  if (claimInt(*claims_json, "nbf", &t) && now_unix < t - leeway_seconds) return false;
  // The payload must be a JSON object even when no claim above was looked at.
  size_t first = claims_json->find_first_not_of(" \t\r\n");
  return first != std::string::npos && (*claims_json)[first] == '{';
}

}  // namespace sluice
