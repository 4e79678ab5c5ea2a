#include "proxy/router/router.h"

#include <re2/re2.h>

#include "core/strings.h"

namespace sluice {

namespace {

std::string_view hostWithoutPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    auto end = host.find(']');
    return end == std::string_view::npos ? host : host.substr(0, end + 1);
  }
  auto colon = host.rfind(':');
  return colon == std::string_view::npos ? host : host.substr(0, colon);
}

bool hostMatches(const std::vector<std::string>& patterns, std::string_view host) {
  if (patterns.empty()) return true;
  host = hostWithoutPort(host);
  for (const auto& p : patterns) {
    if (p.size() > 1 && p[0] == '*' && p[1] == '.') {
      std::string_view suffix(p.data() + 1, p.size() - 1);  // ".example.com"
      if (host.size() > suffix.size() &&
          equalsIgnoreCase(host.substr(host.size() - suffix.size()), suffix))
        return true;
    } else if (p == "*" || equalsIgnoreCase(p, host)) {
      return true;
    }
  }
  return false;
}

}  // namespace

void splitTarget(std::string_view target, std::string_view* path, std::string_view* query) {
  if (!target.empty() && target.front() != '/') {
    // absolute-form: scheme://authority/path
    auto scheme = target.find("://");
    if (scheme != std::string_view::npos) {
      // The authority ends at the first '/' or '?' (RFC 3986 3.2): in "http://h?next=/admin"
      // the path is empty ("/") and the slash belongs to the query.
      auto end = target.find_first_of("/?", scheme + 3);
      if (end == std::string_view::npos) {
        target = "/";
      } else if (target[end] == '?') {
        *path = "/";
        *query = target.substr(end + 1);
        return;
      } else {
        target = target.substr(end);
      }
    }
  }
  auto q = target.find('?');
  if (q == std::string_view::npos) {
    *path = target;
    *query = {};
  } else {
    *path = target.substr(0, q);
    *query = target.substr(q + 1);
  }
}

Router::Router(const Config& config) : config_(config) {}

int Router::match(std::string_view host, std::string_view path, std::string_view method) const {
  const auto& routes = config_.routes;
  for (size_t i = 0; i < routes.size(); i++) {
    const auto& r = routes[i];
    if (!r.methods.empty()) {
      bool ok = false;
      for (const auto& m : r.methods)
        if (m == method) { ok = true; break; }
      if (!ok) continue;
    }
    if (!hostMatches(r.hosts, host)) continue;
    switch (r.path_kind) {
      case PathMatchKind::kAny:
        return static_cast<int>(i);
      case PathMatchKind::kExact:
        if (path == r.path) return static_cast<int>(i);
        break;
      case PathMatchKind::kPrefix:
        if (path.substr(0, r.path.size()) == r.path) return static_cast<int>(i);
        break;
      case PathMatchKind::kRegex:
        if (r.regex && RE2::PartialMatch(re2::StringPiece(path.data(), path.size()), *r.regex))
          return static_cast<int>(i);
        break;
    }
  }
  return -1;
}

}  // namespace sluice
