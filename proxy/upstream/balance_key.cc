#include "proxy/upstream/balance_key.h"

#include <cstring>

#include "core/hash.h"
#include "core/strings.h"
#include "proxy/router/router.h"

namespace sluice {

namespace {

inline bool isOws(char c) { return c == ' ' || c == '\t'; }

}  // namespace

bool findCookie(const HeaderMap& headers, std::string_view name, std::string_view* value) {
  // Runs for every cookie-keyed limit, balance key and risk identity of a request: one pass over
  // the pairs with pointer scans, no substring and trim calls per pair. A pair is
  // OWS name OWS "=" OWS value OWS; the first pair whose name is `name` (case-sensitive) wins.
  // A pair's name never holds '=' or ';' and never ends in OWS: such a `name` matches nothing.
  for (char c : name)
    if (c == '=' || c == ';') return false;
  if (!name.empty() && isOws(name.back())) return false;
  const size_t n = name.size();
  for (size_t i = 0; i < headers.size(); i++) {
    if (headers.removed(i)) continue;
    const std::string_view hn = headers.name(i);
    if (hn.size() != 6 || !equalsIgnoreCase(hn, "cookie")) continue;
    const std::string_view v = headers.value(i);
    const char* p = v.data();
    const char* const end = p + v.size();
    while (p < end) {
      while (p < end && isOws(*p)) p++;
      if (static_cast<size_t>(end - p) > n && memcmp(p, name.data(), n) == 0) {
        const char* q = p + n;
        while (q < end && isOws(*q)) q++;
        if (q < end && *q == '=') {
          const char* vb = q + 1;
          const char* ve = static_cast<const char*>(memchr(vb, ';', static_cast<size_t>(end - vb)));
          if (ve == nullptr) ve = end;
          while (vb < ve && isOws(*vb)) vb++;
          while (ve > vb && isOws(ve[-1])) ve--;
          *value = std::string_view(vb, static_cast<size_t>(ve - vb));
          return true;
        }
      }
      const char* semi = static_cast<const char*>(memchr(p, ';', static_cast<size_t>(end - p)));
      if (semi == nullptr) break;
      p = semi + 1;
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
