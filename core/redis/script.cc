#include "core/redis/script.h"

#include <openssl/evp.h>

namespace sluice::redis {

std::string sha1Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha1(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; i++) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xf]);
  }
  return out;
}

RedisScript::RedisScript(std::string name, std::string body)
    : name_(std::move(name)), body_(std::move(body)), sha1_(sha1Hex(body_)) {}

}  // namespace sluice::redis
