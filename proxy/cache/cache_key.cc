#include "proxy/cache/cache_key.h"

#include <algorithm>

#include "core/hash.h"
#include "core/strings.h"

namespace sluice::cache {
namespace {

void appendEscaped(std::string* out, std::string_view v) {
  static const char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : v) {
    if (c <= 0x20 || c >= 0x7f || c == '%' || c == '&' || c == '=') {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
}

// Every field with this name joined by ", " (how a list-valued header is combined, RFC 9110 5.3).
bool headerValue(const HeaderMap& h, std::string_view name, std::string* scratch) {
  bool found = false;
  scratch->clear();
  for (size_t i = 0; i < h.size(); i++) {
    if (h.removed(i) || !equalsIgnoreCase(h.name(i), name)) continue;
    if (found) scratch->append(", ");
    scratch->append(h.value(i));
    found = true;
  }
  return found;
}

// First cookie with this name across every Cookie field ("a=1; b=2").
bool cookieValue(const HeaderMap& h, std::string_view name, std::string_view* value) {
  for (size_t i = 0; i < h.size(); i++) {
    if (h.removed(i) || !equalsIgnoreCase(h.name(i), "cookie")) continue;
    std::string_view v = h.value(i);
    while (!v.empty()) {
      size_t semi = v.find(';');
      std::string_view pair = trim(v.substr(0, semi));
      size_t eq = pair.find('=');
      if (eq != std::string_view::npos && trim(pair.substr(0, eq)) == name) {
        std::string_view val = trim(pair.substr(eq + 1));
        if (val.size() >= 2 && val.front() == '"' && val.back() == '"') val = val.substr(1, val.size() - 2);
        *value = val;
        return true;
      }
      if (semi == std::string_view::npos) break;
      v.remove_prefix(semi + 1);
    }
  }
  return false;
}

struct QueryArg {
  std::string_view name;
  std::string_view value;
  bool has_value;
};

}  // namespace

void CacheKeySpec::normalize() {
  for (auto& h : headers) h = toLower(h);
  for (auto& h : vary) h = toLower(h);
  std::sort(headers.begin(), headers.end());
  std::sort(vary.begin(), vary.end());
  std::sort(cookies.begin(), cookies.end());
  std::sort(query_args.begin(), query_args.end());
  headers.erase(std::unique(headers.begin(), headers.end()), headers.end());
  vary.erase(std::unique(vary.begin(), vary.end()), vary.end());
  cookies.erase(std::unique(cookies.begin(), cookies.end()), cookies.end());
  query_args.erase(std::unique(query_args.begin(), query_args.end()), query_args.end());
}

void buildCacheKey(const CacheKeySpec& spec, const CacheRequestView& req, CacheKey* out) {
  std::string& k = out->canonical;
  k.clear();
  out->vary.clear();
  out->all_key_cookies_present = true;

  if (spec.include_host) {
    for (char c : req.host) {
      char l = asciiLower(c);
      if (static_cast<unsigned char>(l) <= 0x20 || l == '%' || l == '/' || l == 0x7f) {
        appendEscaped(&k, std::string_view(&c, 1));
      } else {
        k.push_back(l);
      }
    }
  }
  std::string_view target = req.target;
  size_t qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  std::string_view query = qpos == std::string_view::npos ? std::string_view() : target.substr(qpos + 1);
  // A '#' never reaches a server, but a hostile client may send one: it is not part of the query.
  if (size_t hash = query.find('#'); hash != std::string_view::npos) query = query.substr(0, hash);
  for (char c : path) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      appendEscaped(&k, std::string_view(&c, 1));
    } else {
      k.push_back(c);
    }
  }

  if (!query.empty() && (spec.all_query_args || !spec.query_args.empty())) {
    // Small fixed buffer first: real storefront queries have a handful of args.
    QueryArg inline_args[16];
    std::vector<QueryArg> spill;
    size_t n = 0;
    auto push = [&](QueryArg a) {
      if (n < 16) {
        inline_args[n++] = a;
      } else {
        if (spill.empty()) spill.assign(inline_args, inline_args + 16);
        spill.push_back(a);
        n++;
      }
    };
    std::string_view q = query;
    while (!q.empty()) {
      size_t amp = q.find('&');
      std::string_view seg = q.substr(0, amp);
      if (!seg.empty()) {
        size_t eq = seg.find('=');
        QueryArg a{seg.substr(0, eq), eq == std::string_view::npos ? std::string_view() : seg.substr(eq + 1),
                   eq != std::string_view::npos};
        if (spec.all_query_args ||
            std::binary_search(spec.query_args.begin(), spec.query_args.end(), a.name)) {
          push(a);
        }
      }
      if (amp == std::string_view::npos) break;
      q.remove_prefix(amp + 1);
    }
    QueryArg* args = spill.empty() ? inline_args : spill.data();
    std::stable_sort(args, args + n, [](const QueryArg& a, const QueryArg& b) { return a.name < b.name; });
    for (size_t i = 0; i < n; i++) {
      k.push_back(i == 0 ? '?' : '&');
      appendEscaped(&k, args[i].name);
      if (args[i].has_value) {
        k.push_back('=');
        appendEscaped(&k, args[i].value);
      }
    }
  }

  std::string scratch;
  if (req.headers != nullptr) {
    for (const auto& name : spec.headers) {
      k.append(" h:");
      k.append(name);
      if (headerValue(*req.headers, name, &scratch)) {
        k.push_back('=');
        appendEscaped(&k, scratch);
      }
    }
    for (const auto& name : spec.cookies) {
      k.append(" c:");
      appendEscaped(&k, name);
      std::string_view v;
      if (cookieValue(*req.headers, name, &v)) {
        k.push_back('=');
        appendEscaped(&k, v);
        if (v.empty()) out->all_key_cookies_present = false;
      } else {
        out->all_key_cookies_present = false;
      }
    }
    for (const auto& name : spec.vary) {
      out->vary.append(name);
      if (headerValue(*req.headers, name, &scratch)) {
        out->vary.push_back('=');
        appendEscaped(&out->vary, scratch);
      }
      out->vary.push_back('\n');
    }
  } else if (!spec.cookies.empty()) {
    out->all_key_cookies_present = false;
  }
  out->hash = hash64(k);
}

}  // namespace sluice::cache
