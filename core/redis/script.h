#pragma once
// A Lua script registered once: its SHA1 is computed locally (OpenSSL), calls go out as EVALSHA,
// and a NOSCRIPT reply (server restarted, SCRIPT FLUSH, failover to a node that never saw it) is
// answered by the client resending the same call as EVAL, which also loads it for next time.
#include <memory>
#include <string>

namespace sluice::redis {

class RedisScript {
 public:
  RedisScript(std::string name, std::string body);
  const std::string& name() const { return name_; }
  const std::string& body() const { return body_; }
  const std::string& sha1() const { return sha1_; }  // 40 lowercase hex digits

 private:
  std::string name_;
  std::string body_;
  std::string sha1_;
};

using RedisScriptPtr = std::shared_ptr<const RedisScript>;

inline RedisScriptPtr makeRedisScript(std::string name, std::string body) {
  return std::make_shared<const RedisScript>(std::move(name), std::move(body));
}

std::string sha1Hex(const std::string& data);

}  // namespace sluice::redis
