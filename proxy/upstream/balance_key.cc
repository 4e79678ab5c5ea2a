#include "proxy/upstream/balance_key.h"

#include "core/hash.h"
#include "core/strings.h"
#include "proxy/router/router.h"

namespace sluice {

bool findCookie(const HeaderMap& headers, std::string_view name, std::string_view* value) {
  for (size_t i = 0; i < headers.size(); i++) {
    if (headers.removed(i) || !equalsIgnoreCase(headers.name(i), "cookie")) continue;
    std::string_view v = headers.value(i);
    while (!v.empty()) {
      size_t semi = v.find(';');
      std::string_view pair = trim(v.substr(0, semi));
      size_t eq = pair.find('=');
      if (eq != std::string_view::npos && trim(pair.substr(0, eq)) == name) {
        *value = trim(pair.substr(eq + 1));
        return true;
      }
      if (semi == std::string_view::npos) break;
      v.remove_prefix(semi + 1);
    }
  }
  return false;
}

bool findQueryArg(std::string_view query, std::string_view name, std::string_view* value) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    std::string_view key = pair.substr(0, eq);
    if (key == name) {
      *value = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      return true;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

uint64_t balanceKeyHash(std::string_view hash_key, const IpAddress& client_ip,
                        std::string_view target, const HeaderMap& headers) {
  std::string_view key;
  if (hash_key == "client_ip") {
    key = std::string_view(reinterpret_cast<const char*>(client_ip.bytes.data()), 16);
  } else if (hash_key == "uri") {
    key = target;
  } else if (hash_key == "path") {
    std::string_view q;
    splitTarget(target, &key, &q);
  } else if (hash_key.substr(0, 7) == "header:") {
    headers.get(hash_key.substr(7), &key);
  } else if (hash_key.substr(0, 7) == "cookie:") {
    findCookie(headers, hash_key.substr(7), &key);
  } else if (hash_key.substr(0, 6) == "query:") {
    std::string_view path, query;
    splitTarget(target, &path, &query);
    findQueryArg(query, hash_key.substr(6), &key);
  }
  return hash64(key);
}

}  // namespace sluice
