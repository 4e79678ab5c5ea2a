#pragma once
// The config loader's internals, shared by the files that parse one section each
// (config_loader.cc, and the risk and Lua sections in their own files): the YAML shape helpers,
// error reporting with file:line:col, and the Loader class. Not for use outside proxy/config.
#include <re2/re2.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/evp.h>

#include "core/strings.h"
#include "proxy/config/config.h"
#include "proxy/config/config_loader.h"

namespace sluice::config_detail {

using YAML::Node;

inline constexpr int kMaxWorkers = 256;
// The item id in the demo storefront's (and most storefronts') paths: /item/{id}, /api/items/{id}/...
inline constexpr const char* kDefaultItemPattern = "^/(?:api/)?items?/([^/?]+)";

// Optimal-string-alignment distance: a transposed pair ("hots" for "host") costs one edit,
// which is the most common typo in hand-written keys.
inline size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); i++) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); j++) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    for (size_t j = 1; j <= b.size(); j++) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// " (did you mean 'x'?)" when one candidate is close enough to be a plausible typo, else "".
template <class Range>
inline std::string suggestion(std::string_view got, const Range& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    std::string_view cand(c);
    size_t d = editDistance(toLower(got), cand);
    // Short names need a tighter bound, or every 4-letter word "looks like" every other one.
    if (d <= 2 && d * 3 <= cand.size() && d < best_d) {
      best_d = d;
      best = std::string(cand);
    }
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

inline std::string describe(const Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "'" + n.Scalar() + "'";
    default: return "nothing";
  }
}

inline bool isTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

inline bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!isTokenChar(c)) return false;
  return true;
}

// Names of upstreams and routes appear in metrics labels, logs and admin URLs.
inline bool isName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

inline std::string trimAll(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return std::string(s);
}

inline std::string sha256Hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; i++) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 0xf];
  }
  return out;
}

struct HostPort {
  std::string host;  // numeric IP; IPv6 without brackets
  IpAddress ip;
  uint16_t port = 0;
  std::string text() const {
    return (host.find(':') == std::string::npos ? host : "[" + host + "]") + ":" +
           std::to_string(port);
  }
};

// Parses "1.2.3.4:80" / "[::1]:80". Returns an error message, empty on success.
inline std::string parseHostPort(std::string_view s, HostPort* out) {
  std::string_view host, port;
  bool bracketed = false;
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) return "missing ']' in '" + std::string(s) + "'";
    host = s.substr(1, close - 1);
    std::string_view rest = s.substr(close + 1);
    if (rest.empty() || rest.front() != ':')
      return "expected [IPv6]:port like [::1]:8080, got '" + std::string(s) + "'";
    port = rest.substr(1);
    bracketed = true;
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string_view::npos)
      return "expected host:port like 127.0.0.1:8080, got '" + std::string(s) + "'";
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return "IPv6 addresses need brackets, like [::1]:8080; got '" + std::string(s) + "'";
  }
  if (host.empty()) return "missing host in '" + std::string(s) + "'";
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || p < 1 || p > 65535)
    return "port must be a number 1..65535, got '" + std::string(port) + "'";
  IpAddress ip;
  if (!IpAddress::parse(host, &ip) || (bracketed && host.find(':') == std::string_view::npos)) {
    return "'" + std::string(host) +
           "' is not a numeric IP address; sluice does not resolve host names, write e.g. "
           "127.0.0.1:9080 or [::1]:9080";
  }
  out->host = std::string(host);
  out->ip = ip;
  out->port = static_cast<uint16_t>(p);
  return "";
}

// A mapping whose keys were checked against the schema.
struct Mapping {
  Node node;
  std::string path;  // "" for the document root, else "upstreams.storefront.retry"
  bool valid = false;

  std::optional<Node> get(std::string_view key) const {
    if (!valid || !node.IsMap()) return std::nullopt;
    for (auto it = node.begin(); it != node.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
    return std::nullopt;
  }
  std::string child(std::string_view key) const {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }
  std::string where() const { return path.empty() ? "the top level" : path; }
};

class Loader {
 public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  std::vector<ConfigError>& errors() { return errors_; }

  void fail(const YAML::Mark& m, std::string msg) {
    ConfigError e;
    e.file = file_;
    if (!m.is_null()) {
      e.line = m.line + 1;
      e.col = m.column + 1;
    }
    e.message = std::move(msg);
    errors_.push_back(std::move(e));
  }
  void fail(const Node& at, std::string msg) { fail(at.Mark(), std::move(msg)); }
  void failNoPos(std::string msg) { fail(YAML::Mark::null_mark(), std::move(msg)); }

  void load(const Node& root, Config& cfg);

  // Records the identity of a file the config depends on, before it is read: a file replaced
  // after this stat shows up as a change at the next reload instead of being missed.
  void noteInput(const std::string& file) {
    struct stat st;
    inputs_stamp_ += file;
    if (::stat(file.c_str(), &st) != 0) {
      inputs_stamp_ += " missing\n";
      return;
    }
    char buf[128];
    snprintf(buf, sizeof(buf), " %llu:%llu:%lld:%lld.%09ld\n",
             static_cast<unsigned long long>(st.st_dev), static_cast<unsigned long long>(st.st_ino),
             static_cast<long long>(st.st_size), static_cast<long long>(st.st_mtim.tv_sec),
             st.st_mtim.tv_nsec);
    inputs_stamp_ += buf;
  }
  const std::string& inputsStamp() const { return inputs_stamp_; }

 private:
  // ---- shape helpers: each reports its own error and returns false/invalid on mismatch.

  Mapping mapping(const Node& n, const std::string& path,
                  std::initializer_list<std::string_view> keys) {
    Mapping m{n, path, false};
    // An empty section (`health_check:` with everything commented out) is an empty mapping.
    if (n.IsNull()) {
      m.valid = true;
      return m;
    }
    if (!n.IsMap()) {
      fail(n, (path.empty() ? "the document" : path) + ": expected a mapping, got " + describe(n));
      return m;
    }
    m.valid = true;
    std::set<std::string> seen;
    for (auto it = n.begin(); it != n.end(); ++it) {
      // Copy: `it->` yields a temporary proxy, a reference into it would dangle.
      Node k = it->first;
      if (!k.IsScalar()) {
        fail(k, "keys must be plain names in " + m.where());
        continue;
      }
      const std::string& key = k.Scalar();
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
        fail(k, "unknown key '" + key + "' in " + m.where() + suggestion(key, keys));
        continue;
      }
      // yaml-cpp keeps both entries of a duplicated key; the second would be silently ignored.
      if (!seen.insert(key).second) fail(k, "duplicate key '" + key + "' in " + m.where());
    }
    return m;
  }

  bool scalar(const Node& n, const std::string& path, const std::string& expected,
              std::string* out) {
    if (!n.IsScalar()) {
      fail(n, path + ": expected " + expected + ", got " + describe(n));
      return false;
    }
    *out = n.Scalar();
    return true;
  }

  bool readString(const Node& n, const std::string& path, std::string* out) {
    std::string s;
    if (!scalar(n, path, "a string", &s)) return false;
    if (s.empty()) {
      fail(n, path + ": must not be empty");
      return false;
    }
    *out = s;
    return true;
  }

  bool readBool(const Node& n, const std::string& path, bool* out) {
    std::string s;
    if (!scalar(n, path, "true or false", &s)) return false;
    std::string l = toLower(s);
    if (l == "true") *out = true;
    else if (l == "false") *out = false;
    else {
      fail(n, path + ": expected true or false, got '" + s + "'");
      return false;
    }
    return true;
  }

  template <class T>
  bool readInt(const Node& n, const std::string& path, int64_t lo, int64_t hi, T* out) {
    return readIntIn(n, path, lo, hi, "an integer " + std::to_string(lo) + ".." + std::to_string(hi), out);
  }

  // "auto" (leaves *out at 0, the "work it out at run time" value) or an integer lo..hi.
  template <class T>
  bool readAutoInt(const Node& n, const std::string& path, int64_t lo, int64_t hi, T* out) {
    if (n.IsScalar() && n.Scalar() == "auto") {
      *out = 0;
      return true;
    }
    return readIntIn(n, path, lo, hi,
                     "\"auto\" or an integer " + std::to_string(lo) + ".." + std::to_string(hi), out);
  }

  // An integer in lo..hi; `expected` says what was wanted in the error.
  template <class T>
  bool readIntIn(const Node& n, const std::string& path, int64_t lo, int64_t hi,
                 const std::string& expected, T* out) {
    std::string s;
    if (!scalar(n, path, expected, &s)) return false;
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) {
      fail(n, path + ": expected " + expected + ", got '" + s + "'");
      return false;
    }
    *out = static_cast<T>(v);
    return true;
  }

  bool readNumber(const Node& n, const std::string& path, double lo, double hi, double* out) {
    char buf[64];
    snprintf(buf, sizeof(buf), "a number %g..%g", lo, hi);
    std::string s;
    if (!scalar(n, path, buf, &s)) return false;
    double v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !(v >= lo && v <= hi)) {
      fail(n, path + ": expected " + buf + ", got '" + s + "'");
      return false;
    }
    *out = v;
    return true;
  }

  bool readDuration(const Node& n, const std::string& path, Nanos* out, bool allow_zero = false) {
    const std::string expected = "a duration like 250ms or 5s";
    std::string s;
    if (!scalar(n, path, expected, &s)) return false;
    int64_t v = 0;
    if (!parseDurationNanos(s, &v)) {
      fail(n, path + ": expected " + expected + ", got '" + s + "'");
      return false;
    }
    if (v == 0 && !allow_zero) {
      fail(n, path + ": must be greater than zero, got '" + s + "'");
      return false;
    }
    *out = v;
    return true;
  }

  bool readSize(const Node& n, const std::string& path, uint64_t* out, uint64_t min) {
    const std::string expected = "a size like 512, 16k or 8m";
    std::string s;
    if (!scalar(n, path, expected, &s)) return false;
    uint64_t v = 0;
    if (!parseSize(s, &v)) {
      fail(n, path + ": expected " + expected + ", got '" + s + "'");
      return false;
    }
    if (v < min) {
      fail(n, path + ": must be at least " + std::to_string(min) + " bytes, got '" + s + "'");
      return false;
    }
    *out = v;
    return true;
  }

  bool readEnum(const Node& n, const std::string& path, std::initializer_list<std::string_view> allowed,
                std::string* out) {
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    std::string s;
    if (!scalar(n, path, "one of " + list, &s)) return false;
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      fail(n, path + ": expected one of " + list + ", got '" + s + "'" + suggestion(s, allowed));
      return false;
    }
    *out = s;
    return true;
  }

  // A list node; a single scalar is accepted where `allow_scalar` (host: a.com == host: [a.com]).
  bool sequence(const Node& n, const std::string& path, std::vector<Node>* out,
                bool allow_scalar = false) {
    if (n.IsSequence()) {
      for (auto it = n.begin(); it != n.end(); ++it) out->push_back(*it);
      return true;
    }
    if (allow_scalar && n.IsScalar()) {
      out->push_back(n);
      return true;
    }
    fail(n, path + ": expected a list, got " + describe(n));
    return false;
  }

  void readCidrs(const Node& n, const std::string& path, CidrSet* out) {
    std::vector<Node> items;
    if (!sequence(n, path, &items)) return;
    for (size_t i = 0; i < items.size(); i++) {
      std::string p = path + "[" + std::to_string(i) + "]";
      std::string s;
      if (!scalar(items[i], p, "a CIDR like 10.0.0.0/8", &s)) continue;
      Cidr c;
      if (!Cidr::parse(trim(s), &c)) {
        fail(items[i], p + ": expected a CIDR like 10.0.0.0/8 or ::1/128, got '" + s + "'");
        continue;
      }
      out->add(c);
    }
  }

  // The whole file at `file` (relative to the working directory, like every path given to the
  // binary); false after reporting at `n` when it cannot be read.
  bool readFile(const Node& n, const std::string& path, const std::string& file, std::string* out) {
    noteInput(file);
    FILE* f = fopen(file.c_str(), "rb");
    if (!f) {
      fail(n, path + ": cannot read '" + file + "': " + strerror(errno));
      return false;
    }
    out->clear();
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof(buf), f)) > 0) out->append(buf, r);
    bool read_error = ferror(f);
    fclose(f);
    if (read_error) fail(n, path + ": cannot read '" + file + "'");
    return !read_error;
  }

  bool readAddress(const Node& n, const std::string& path, HostPort* out) {
    std::string s;
    if (!scalar(n, path, "an address like 127.0.0.1:8080", &s)) return false;
    std::string err = parseHostPort(trim(s), out);
    if (!err.empty()) {
      fail(n, path + ": " + err);
      return false;
    }
    return true;
  }

  // ---- sections

  void loadWorkers(const Node& n, Config& cfg);
  void loadListeners(const std::optional<Node>& n, Config& cfg);
  void loadAdmin(const Node& n, Config& cfg);
  void loadClient(const Node& n, ClientConfig& c);
  void loadLog(const Node& n, Config& cfg);
  void loadUpstreams(const Node& n, Config& cfg);
  void loadUpstream(const Node& n, const std::string& path, UpstreamConfig& u);
  void loadHealthCheck(const Node& n, const std::string& path, HealthCheckConfig& h);
  void loadRoutes(const Node& n, Config& cfg);
  void loadRoute(const Node& n, const std::string& path, RouteConfig& r);
  void loadMatch(const Node& n, const std::string& path, RouteConfig& r);
  void loadRouteCache(const Node& n, const std::string& path, RouteConfig& r);
  void loadCache(const Node& n, Config& cfg);
  void loadDegradeSwitches(const Node& n, Config& cfg);
  bool readNameList(const Node& n, const std::string& path, std::vector<std::string>* out);
  void loadLimits(const Node& n, Config& cfg);
  void loadHotItems(const Node& n, Config& cfg);
  void loadJwt(const Node& n, Config& cfg);
  bool loadLimitRule(const Node& n, const std::string& path, LimitRuleConfig& rule);
  bool loadLimitKeyPart(const Node& n, const std::string& path, LimitKeyPart* part);
  void resolveRouteLimits(Config& cfg);
  // Risk (risk_section.cc): the `risk:` section -> RiskSettings + RiskPolicy (before routes, so
  // a route's `risk: {profile: x}` is checked against the profiles), and a route's `risk:`.
  void loadRisk(const Node& n, Config& cfg);
  void loadRouteRisk(const Node& n, const std::string& path, RouteConfig& r);
  bool readSecret(const Mapping& m, const std::string& what, std::string* out, std::string* source);
  // Lua (lua_section.cc): a route's `policies:` / `aggregate:` are collected while routes load,
  // then the `lua:` section builds and validates the policy bundle (file:line errors here too).
  void loadRouteLua(const Mapping& m, const std::string& path, RouteConfig& r);
  void loadLua(const std::optional<Node>& n, Config& cfg);
  // Redis (redis_section.cc): the `redis:` section (before limits and routes, which may need
  // it), a rule's cluster-scope keys, a route's `sale_gate:`.
  void loadRedis(const Node& n, Config& cfg);
  bool loadLimitRuleScope(const Mapping& m, LimitRuleConfig& rule);
  void loadRouteSaleGate(const Node& n, const std::string& path, RouteConfig& r);

  std::string file_;
  std::vector<ConfigError> errors_;
  std::string inputs_stamp_;
  // Every upstream name declared, even one whose body had errors, so that a route naming it
  // does not pile a second, misleading error on top.
  std::vector<std::string> upstream_names_;
  std::vector<std::string> limit_ids_;
  // Listener addresses, to refuse an admin listener on the same socket.
  std::vector<std::pair<IpAddress, uint16_t>> listener_addrs_;
  // Profile names of the `risk:` section (loaded before routes); empty when risk is off.
  std::vector<std::string> risk_profiles_;
  bool risk_on_ = false;
  // Routes' Lua attachments, by route, until loadLua() puts them into the bundle.
  struct LuaRouteAttachment {
    std::string route;
    std::string policy;
    std::string config_json;
    YAML::Mark mark;
  };
  std::vector<LuaRouteAttachment> lua_attachments_;
  std::vector<std::pair<std::string, YAML::Mark>> lua_aggregate_routes_;
  bool redis_on_ = false;  // a `redis:` section was given
};

}  // namespace sluice::config_detail
