#pragma once
// Route selection: host + path (exact, prefix, RE2 regex) + method, first match in config order
// (Envoy's rule: the operator's order is the priority, nothing is reordered behind their back).
// Regexes are searched like nginx's `location ~` (unanchored unless the pattern anchors itself).
#include <string_view>
#include <vector>

#include "proxy/config/config.h"

namespace sluice {

class Router {
 public:
  explicit Router(const Config& config);
  // `host` is the Host header (port allowed), `path` the target's path without the query.
  // Returns the route's index in config.routes, or -1.
  int match(std::string_view host, std::string_view path, std::string_view method) const;

 private:
  const Config& config_;
};

// Splits "/a/b?x=1" into path and query (the '?' excluded). An absolute-form target
// ("http://host/a") yields its path.
void splitTarget(std::string_view target, std::string_view* path, std::string_view* query);

}  // namespace sluice
