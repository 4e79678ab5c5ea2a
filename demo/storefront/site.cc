#include "demo/storefront/site.h"

#include <array>
#include <charconv>

#include "proxy/http/status.h"

namespace sluice::demo {
namespace {

constexpr std::array<std::string_view, 16> kAdjectives = {
    "Crimson", "Velvet", "Midnight", "Golden",  "Arctic", "Neon",   "Retro", "Limited",
    "Classic", "Shadow", "Solar",    "Granite", "Coral",  "Electric", "Silent", "Vintage"};
constexpr std::array<std::string_view, 16> kNouns = {
    "Sneaker", "Hoodie",  "Backpack", "Console", "Headset",  "Jacket",  "Watch", "Camera",
    "Vinyl",   "Figurine", "Keyboard", "Lamp",    "Skateboard", "Poster", "Cap",   "Tote"};

constexpr int kListedItems = 10;
constexpr int kHomeItems = 6;

// FNV-1a then the splitmix64 finaliser: cheap, and spreads short ids ("1", "2") over all bits.
uint64_t hash_id(std::string_view id) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

constexpr bool id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool consume_prefix(std::string_view& s, std::string_view prefix) {
  if (!s.starts_with(prefix)) return false;
  s.remove_prefix(prefix.size());
  return true;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not one.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t len;
  uint32_t min;
  uint32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, min = 0x80, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, min = 0x800, cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, min = 0x10000, cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

void append_conn(std::string& out, ConnHeader conn) {
  switch (conn) {
    case ConnHeader::kNone: break;
    case ConnHeader::kKeepAlive: out.append("Connection: keep-alive\r\n"); break;
    case ConnHeader::kClose: out.append("Connection: close\r\n"); break;
  }
}

std::string error_json(std::string_view message) {
  std::string body = "{\"error\":";
  append_json_string(body, message);
  body.append("}\n");
  return body;
}

}  // namespace

Route match_route(std::string_view target) {
  Route r;
  std::string_view path = target;
  if (const size_t q = target.find('?'); q != std::string_view::npos) {
    path = target.substr(0, q);
    r.query = target.substr(q + 1);
  }
  auto set = [&r](RouteId id, Allow allow, std::string_view param = {}) {
    r.id = id;
    r.allow = allow;
    r.param = param;
    return r;
  };

  if (path == "/") return set(RouteId::kHome, Allow::kGetHead);
  if (path == "/healthz") return set(RouteId::kHealthz, Allow::kGetHead);
  std::string_view rest = path;
  if (consume_prefix(rest, "/api/")) {
    if (rest == "items") return set(RouteId::kItemList, Allow::kGetHead);
    if (rest == "cart") return set(RouteId::kCart, Allow::kPost);
    if (rest == "slow") return set(RouteId::kSlow, Allow::kGetHead);
    if (rest == "fail") return set(RouteId::kFail, Allow::kGetHead);
    if (consume_prefix(rest, "items/")) {
      const size_t slash = rest.find('/');
      const std::string_view id = rest.substr(0, slash);
      if (!valid_item_id(id)) return r;
      if (slash == std::string_view::npos) return set(RouteId::kItem, Allow::kGetHead, id);
      const std::string_view sub = rest.substr(slash + 1);
      if (sub == "price") return set(RouteId::kItemPrice, Allow::kGetHead, id);
      if (sub == "stock") return set(RouteId::kItemStock, Allow::kGetHead, id);
      if (sub == "checkout") return set(RouteId::kCheckout, Allow::kPost, id);
    }
    return r;
  }
  if (consume_prefix(rest, "/item/")) {
    if (valid_item_id(rest)) return set(RouteId::kItemPage, Allow::kGetHead, rest);
    return r;
  }
  if (consume_prefix(rest, "/__demo/")) {
    if (rest == "echo") return set(RouteId::kEcho, Allow::kAny);
    if (rest == "bytes") return set(RouteId::kBytes, Allow::kGetHead);
    if (rest == "health") return set(RouteId::kHealth, Allow::kPost);
    if (rest == "early-hints") return set(RouteId::kEarlyHints, Allow::kGetHead);
    if (rest == "ws") return set(RouteId::kWebSocket, Allow::kGetHead);
    if (rest == "counter") return set(RouteId::kCounter, Allow::kGetHead);
    if (consume_prefix(rest, "status/")) return set(RouteId::kStatus, Allow::kGetHead, rest);
  }
  return r;
}

bool method_allowed(Allow allow, llhttp_method_t method) {
  switch (allow) {
    case Allow::kAny: return true;
    case Allow::kGetHead: return method == HTTP_GET || method == HTTP_HEAD;
    case Allow::kPost: return method == HTTP_POST;
  }
  return false;
}

std::string_view allow_header_value(Allow allow) {
  switch (allow) {
    case Allow::kAny: return "*";
    case Allow::kGetHead: return "GET, HEAD";
    case Allow::kPost: return "POST";
  }
  return "";
}

bool valid_item_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!id_char(c)) return false;
  }
  return true;
}

Item synth_item(std::string_view id) {
  const uint64_t h = hash_id(id);
  return Item{
      .id = id,
      .adjective = kAdjectives[h & 15],
      .noun = kNouns[(h >> 4) & 15],
      .price_cents = static_cast<uint32_t>(499 + (h >> 8) % 49500),
      .stock = static_cast<uint32_t>((h >> 32) % 250),
  };
}

bool query_param(std::string_view query, std::string_view key, std::string_view* value) {
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      *value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
      return true;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

bool parse_u64(std::string_view text, uint64_t* value) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc{} && end == text.data() + text.size();
}

bool cookie_value(std::string_view cookies, std::string_view name, std::string_view* value) {
  while (!cookies.empty()) {
    const size_t semi = cookies.find(';');
    const std::string_view pair = trim_ows(cookies.substr(0, semi));
    const size_t eq = pair.find('=');
    if (eq != std::string_view::npos && trim_ows(pair.substr(0, eq)) == name) {
      std::string_view v = trim_ows(pair.substr(eq + 1));
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      *value = v;
      return true;
    }
    if (semi == std::string_view::npos) break;
    cookies.remove_prefix(semi + 1);
  }
  return false;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

bool has_token(std::string_view header_value, std::string_view token) {
  while (true) {
    const size_t comma = header_value.find(',');
    if (iequals(trim_ows(header_value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) return false;
    header_value.remove_prefix(comma + 1);
  }
}

std::string_view reason_phrase(int status) {
  // One table for the proxy and its stand-in upstream.
  return sluice::statusReason(status);
}

void append_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      // Header values may carry obs-text; valid UTF-8 passes through, any other byte is
      // shown as the Latin-1 code point so the JSON stays valid and the byte stays visible.
      if (const size_t len = utf8_sequence_length(text, i); len != 0) {
        out.append(text.substr(i, len));
        i += len;
        continue;
      }
      out.append("\\u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      switch (c) {
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        default:
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
      }
    } else {
      out.push_back(static_cast<char>(c));
    }
    ++i;
  }
  out.push_back('"');
}

void append_uint(std::string& out, uint64_t value) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, end);
}

void append_price(std::string& out, uint32_t cents) {
  append_uint(out, cents / 100);
  out.push_back('.');
  out.push_back(static_cast<char>('0' + cents / 10 % 10));
  out.push_back(static_cast<char>('0' + cents % 10));
}

void append_item_json(std::string& out, const Item& item) {
  // Ids are [A-Za-z0-9_-] and names come from fixed lists: nothing needs escaping.
  out.append("{\"id\":\"").append(item.id);
  out.append("\",\"name\":\"").append(item.adjective).append(" ").append(item.noun);
  out.append("\",\"price\":");
  append_price(out, item.price_cents);
  out.append(",\"stock\":");
  append_uint(out, item.stock);
  out.push_back('}');
}

void append_item_html(std::string& out, const Item& item) {
  out.append("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>");
  out.append(item.adjective).append(" ").append(item.noun);
  out.append(" - demo storefront</title></head>\n<body>\n<h1>");
  out.append(item.adjective).append(" ").append(item.noun);
  out.append("</h1>\n<p class=\"price\">$");
  append_price(out, item.price_cents);
  out.append("</p>\n<p class=\"stock\">");
  append_uint(out, item.stock);
  out.append(" in stock</p>\n<form method=\"post\" action=\"/api/items/").append(item.id);
  out.append("/checkout\"><button>Buy now</button></form>\n<p><a href=\"/api/items/");
  out.append(item.id).append("\">JSON</a> | <a href=\"/\">Home</a></p>\n</body></html>\n");
}

Site::Site(std::string name) : name_(std::move(name)) {
  served_by_ = "X-Served-By: " + name_ + "\r\n";

  std::string html =
      "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>demo storefront</title>"
      "</head>\n<body>\n<h1>Flash sale</h1>\n<ul>\n";
  for (int i = 1; i <= kHomeItems; ++i) {
    const std::string id = std::to_string(i);
    const Item item = synth_item(id);
    html.append("<li><a href=\"/item/").append(id).append("\">");
    html.append(item.adjective).append(" ").append(item.noun).append("</a> $");
    append_price(html, item.price_cents);
    html.append("</li>\n");
  }
  html.append("</ul>\n<p><a href=\"/api/items\">API</a></p>\n</body></html>\n");
  home = prebuild(200, kHtml, std::move(html));

  std::string list = "[";
  for (int i = 1; i <= kListedItems; ++i) {
    if (i > 1) list.push_back(',');
    const std::string id = std::to_string(i);
    append_item_json(list, synth_item(id));
  }
  list.append("]\n");
  item_list = prebuild(200, kJson, std::move(list));

  not_found = prebuild(404, kJson, error_json("not found"));
  fail = prebuild(500, kJson, error_json("demo failure"));
  healthz_up = prebuild(200, kText, "ok");
  healthz_down = prebuild(503, kText, "down");
  method_not_allowed_get =
      prebuild(405, kJson, error_json("method not allowed"), "Allow: GET, HEAD\r\n");
  method_not_allowed_post =
      prebuild(405, kJson, error_json("method not allowed"), "Allow: POST\r\n");
  bad_request = prebuild(400, kJson, error_json("bad request"));
  uri_too_long = prebuild(414, kJson, error_json("request target too long"));
  headers_too_large = prebuild(431, kJson, error_json("request headers too large"));
  upgrade_required = prebuild(426, kJson, error_json("websocket upgrade required"),
                              "Upgrade: websocket\r\n");
}

PrebuiltResponse Site::prebuild(int status, std::string_view content_type, std::string body,
                                std::string_view extra) const {
  PrebuiltResponse r;
  r.head.append("HTTP/1.1 ");
  append_uint(r.head, static_cast<uint64_t>(status));
  r.head.append(" ").append(reason_phrase(status)).append("\r\n");
  r.head.append(served_by_);
  r.head.append("Content-Type: ").append(content_type).append("\r\n");
  r.head.append("Content-Length: ");
  append_uint(r.head, body.size());
  r.head.append("\r\n").append(extra);
  r.body = std::move(body);
  return r;
}

void Site::append_head(std::string& out, int status, std::string_view content_type,
                       int64_t content_length, ConnHeader conn, std::string_view extra) const {
  out.append("HTTP/1.1 ");
  append_uint(out, static_cast<uint64_t>(status));
  out.push_back(' ');
  out.append(reason_phrase(status)).append("\r\n");
  out.append(served_by_);
  if (!content_type.empty()) out.append("Content-Type: ").append(content_type).append("\r\n");
  if (content_length >= 0) {
    out.append("Content-Length: ");
    append_uint(out, static_cast<uint64_t>(content_length));
    out.append("\r\n");
  }
  out.append(extra);
  append_conn(out, conn);
  out.append("\r\n");
}

void Site::append_response(std::string& out, int status, std::string_view content_type,
                           std::string_view body, ConnHeader conn, bool head_only,
                           std::string_view extra) const {
  append_head(out, status, content_type, static_cast<int64_t>(body.size()), conn, extra);
  if (!head_only) out.append(body);
}

void Site::append(std::string& out, const PrebuiltResponse& response, ConnHeader conn,
                  bool head_only) const {
  out.append(response.head);
  append_conn(out, conn);
  out.append("\r\n");
  if (!head_only) out.append(response.body);
}

void Site::append_interim(std::string& out, int status, std::string_view extra) const {
  out.append("HTTP/1.1 ");
  append_uint(out, static_cast<uint64_t>(status));
  out.push_back(' ');
  out.append(reason_phrase(status)).append("\r\n");
  out.append(served_by_);
  out.append(extra);
  out.append("\r\n");
}

}  // namespace sluice::demo
