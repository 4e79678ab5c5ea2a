#include "proxy/cache/cache_policy.h"

#include <algorithm>
#include <limits>

#include "core/strings.h"

namespace sluice::cache {
namespace {

// Delta-seconds (RFC 9111 1.2.2): digits only; overflow saturates; anything else is 0 (stale).
int64_t parseDeltaSeconds(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  if (v.empty()) return 0;
  int64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return 0;
    if (n > (std::numeric_limits<int32_t>::max() - 9) / 10) return std::numeric_limits<int32_t>::max();
    n = n * 10 + (c - '0');
  }
  return n;
}

void setMin(int64_t* slot, int64_t v) { *slot = *slot < 0 ? v : std::min(*slot, v); }

bool containsName(const std::vector<std::string>& lowered, std::string_view name) {
  for (const auto& n : lowered)
    if (equalsIgnoreCase(n, name)) return true;
  return false;
}

}  // namespace

const char* validateCachePolicy(const CachePolicy& p, const CacheKeySpec& spec) {
  if (p.ttl <= 0) return "cache.ttl must be positive";
  if (p.max_stale < 0) return "cache.max_stale must not be negative";
  if (p.max_entry_bytes == 0) return "cache.max_entry_size must be positive";
  if (p.statuses.none()) return "cache.statuses must name at least one status";
  if (p.allow_set_cookie && spec.cookies.empty())
    return "cache.allow_set_cookie needs key.cookies (the member cookie): a Set-Cookie response "
           "would otherwise be served to other members";
  if (p.allow_authorization && !containsName(spec.headers, "authorization"))
    return "cache.allow_authorization needs authorization among key.headers: responses would "
           "otherwise be shared across credentials";
  return nullptr;
}

RequestDecision classifyRequest(const CachePolicy& policy, std::string_view method, const HeaderMap& headers) {
  RequestDecision d;
  if (method == "HEAD") {
    d.head = true;
  } else if (method != "GET") {
    d.reason = "method";
    return d;
  }
  std::string_view unused;
  if (!policy.allow_authorization && headers.get("authorization", &unused)) {
    d.reason = "authorization";
    return d;
  }
  if (d.head) {
    d.cacheability = RequestCacheability::kLookupOnly;
    d.reason = "head";
    return d;
  }
  if (parseCacheControl(headers).no_store) {
    d.cacheability = RequestCacheability::kLookupOnly;
    d.reason = "request_no_store";
    return d;
  }
  d.cacheability = RequestCacheability::kCacheable;
  return d;
}

CacheControl parseCacheControl(const HeaderMap& headers) {
  CacheControl cc;
  for (size_t i = 0; i < headers.size(); i++) {
    if (headers.removed(i) || !equalsIgnoreCase(headers.name(i), "cache-control")) continue;
    std::string_view v = headers.value(i);
    while (!v.empty()) {
      // A comma inside a quoted value (private="a, b") does not end the directive.
      size_t end = 0;
      bool quoted = false;
      for (; end < v.size(); end++) {
        if (v[end] == '"') quoted = !quoted;
        if (v[end] == ',' && !quoted) break;
      }
      std::string_view dir = trim(v.substr(0, end));
      v.remove_prefix(std::min(end + 1, v.size()));
      size_t eq = dir.find('=');
      std::string_view name = trim(dir.substr(0, eq));
      std::string_view arg = eq == std::string_view::npos ? std::string_view() : trim(dir.substr(eq + 1));
      if (equalsIgnoreCase(name, "no-store")) {
        cc.no_store = true;
      } else if (equalsIgnoreCase(name, "no-cache")) {
        cc.no_cache = true;  // no-cache="field" too: we cannot store a response minus a field
      } else if (equalsIgnoreCase(name, "private")) {
        cc.is_private = true;
      } else if (equalsIgnoreCase(name, "public")) {
        cc.is_public = true;
      } else if (equalsIgnoreCase(name, "must-revalidate") || equalsIgnoreCase(name, "proxy-revalidate")) {
        cc.must_revalidate = true;
      } else if (equalsIgnoreCase(name, "max-age")) {
        setMin(&cc.max_age, parseDeltaSeconds(arg));
      } else if (equalsIgnoreCase(name, "s-maxage")) {
        setMin(&cc.s_maxage, parseDeltaSeconds(arg));
      }
    }
  }
  return cc;
}

StoreDecision decideStore(const CachePolicy& p, const CacheKeySpec& spec, const CacheKey& key,
                          const RequestDecision& request, int status, const HeaderMap& rh, size_t body_bytes) {
  StoreDecision d;
  if (request.cacheability != RequestCacheability::kCacheable) {
    d.reason = request.cacheability == RequestCacheability::kLookupOnly ? request.reason : "request";
    return d;
  }
  if (!p.statusCacheable(status)) {
    d.reason = "status";
    return d;
  }
  CacheControl cc = parseCacheControl(rh);
  if (cc.no_store) {
    d.reason = "no_store";
    return d;
  }
  if (cc.is_private) {
    d.reason = "private";
    return d;
  }
  if (cc.no_cache) {
    d.reason = "no_cache";
    return d;
  }
  bool set_cookie = false;
  bool vary_unkeyed = false;  // reported after the whole Vary is read: a '*' anywhere wins
  for (size_t i = 0; i < rh.size(); i++) {
    if (rh.removed(i)) continue;
    std::string_view name = rh.name(i);
    if (equalsIgnoreCase(name, "set-cookie")) {
      set_cookie = true;
    } else if (equalsIgnoreCase(name, "vary")) {
      std::string_view v = rh.value(i);
      while (!v.empty()) {
        size_t comma = v.find(',');
        std::string_view tok = trim(v.substr(0, comma));
        if (tok == "*") {
          d.reason = "vary_star";
          return d;
        }
        if (!tok.empty() && !containsName(spec.vary, tok) && !containsName(spec.headers, tok)) {
          vary_unkeyed = true;
        }
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
      }
    }
  }
  if (vary_unkeyed) {
    d.reason = "vary_unkeyed";
    return d;
  }
  if (set_cookie && !(p.allow_set_cookie && !spec.cookies.empty() && key.all_key_cookies_present)) {
    d.reason = "set_cookie";
    return d;
  }
  if (body_bytes > p.max_entry_bytes) {
    d.reason = "too_large";
    return d;
  }
  Nanos fresh = p.ttl;
  if (p.honor_origin_cache_control) {
    int64_t origin = cc.s_maxage >= 0 ? cc.s_maxage : cc.max_age;  // s-maxage wins for a shared cache
    if (origin >= 0 && origin * kSeconds < fresh) fresh = origin * kSeconds;
  }
  if (fresh <= 0) {
    d.reason = "max_age_zero";
    return d;
  }
  d.store = true;
  d.fresh_for = fresh;
  d.stale_for = cc.must_revalidate ? 0 : p.max_stale;
  return d;
}

}  // namespace sluice::cache
