// The storefront's surface: which routes exist, what their bodies say, and how a response is
// framed on the wire. Nothing here touches sockets, so the connection code stays about I/O.
#pragma once

#include <llhttp.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::demo {

// What the response tells the client about the connection. HTTP/1.1 keep-alive is the default
// and needs no header; HTTP/1.0 keep-alive has to be confirmed explicitly.
enum class ConnHeader : uint8_t { kNone, kKeepAlive, kClose };

enum class RouteId : uint8_t {
  kHome,        // GET /
  kItemPage,    // GET /item/{id}
  kItemList,    // GET /api/items
  kItem,        // GET /api/items/{id}
  kItemPrice,   // GET /api/items/{id}/price
  kItemStock,   // GET /api/items/{id}/stock
  kCheckout,    // POST /api/items/{id}/checkout
  kCart,        // POST /api/cart
  kSlow,        // GET /api/slow?ms=N
  kFail,        // GET /api/fail
  kHealthz,     // GET /healthz
  kEcho,        // ANY /__demo/echo
  kBytes,       // GET /__demo/bytes?n=N
  kHealth,      // POST /__demo/health?status=up|down
  kStatus,      // GET /__demo/status/{code}
  kEarlyHints,  // GET /__demo/early-hints
  kWebSocket,   // GET /__demo/ws
  kCounter,     // GET /__demo/counter
  kNotFound,
};

enum class Allow : uint8_t { kAny, kGetHead, kPost };

struct Route {
  RouteId id = RouteId::kNotFound;
  Allow allow = Allow::kAny;
  std::string_view param;  // item id or status code, a view into the request target
  std::string_view query;  // after '?', without it
};

// Routes on the raw target (no percent-decoding: item ids are restricted to characters that
// never need it, so an encoded id is simply not an id).
Route match_route(std::string_view target);
bool method_allowed(Allow allow, llhttp_method_t method);
std::string_view allow_header_value(Allow allow);

bool valid_item_id(std::string_view id);

// Items are synthesised from their id so any id "exists" and answers the same on every
// server and every run, which keeps tests and benchmarks free of fixtures.
struct Item {
  std::string_view id;
  std::string_view adjective;
  std::string_view noun;
  uint32_t price_cents;
  uint32_t stock;
};
Item synth_item(std::string_view id);

// Finds `key` in an application/x-www-form-urlencoded style query (no decoding).
bool query_param(std::string_view query, std::string_view key, std::string_view* value);
// Parses a whole decimal string; false on anything else or on overflow.
bool parse_u64(std::string_view text, uint64_t* value);
// Finds `name` in the Cookie header value `cookies`.
bool cookie_value(std::string_view cookies, std::string_view name, std::string_view* value);
// Whether the comma-separated header value contains `token` (case-insensitive).
bool has_token(std::string_view header_value, std::string_view token);
bool iequals(std::string_view a, std::string_view b);

std::string_view reason_phrase(int status);
// Statuses whose responses never carry a body (RFC 9110 6.4.1).
inline bool status_forbids_body(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

void append_json_string(std::string& out, std::string_view text);
void append_uint(std::string& out, uint64_t value);
void append_price(std::string& out, uint32_t cents);

// Body builders; each appends to `out`.
void append_item_json(std::string& out, const Item& item);
void append_item_html(std::string& out, const Item& item);

// A response whose bytes are fixed at start-up: the status line and headers (without the
// Connection line and the final CRLF) and the body, so serving it is two appends.
struct PrebuiltResponse {
  std::string head;
  std::string body;
};

class Site {
 public:
  explicit Site(std::string name);

  const std::string& name() const { return name_; }

  // Status line + X-Served-By + Content-Type + Content-Length (omitted when < 0) + `extra`
  // (complete header lines) + Connection + CRLF.
  void append_head(std::string& out, int status, std::string_view content_type,
                   int64_t content_length, ConnHeader conn, std::string_view extra = {}) const;
  void append_response(std::string& out, int status, std::string_view content_type,
                       std::string_view body, ConnHeader conn, bool head_only,
                       std::string_view extra = {}) const;
  void append(std::string& out, const PrebuiltResponse& response, ConnHeader conn,
              bool head_only) const;
  // An interim (1xx) response head: status line, X-Served-By, `extra`, CRLF.
  void append_interim(std::string& out, int status, std::string_view extra = {}) const;

  PrebuiltResponse home;
  PrebuiltResponse item_list;
  PrebuiltResponse not_found;
  PrebuiltResponse fail;
  PrebuiltResponse healthz_up;
  PrebuiltResponse healthz_down;
  PrebuiltResponse method_not_allowed_get;
  PrebuiltResponse method_not_allowed_post;
  PrebuiltResponse bad_request;
  PrebuiltResponse uri_too_long;
  PrebuiltResponse headers_too_large;
  PrebuiltResponse upgrade_required;

 private:
  PrebuiltResponse prebuild(int status, std::string_view content_type, std::string body,
                            std::string_view extra = {}) const;

  std::string name_;
  std::string served_by_;  // "X-Served-By: NAME\r\n"
};

constexpr std::string_view kJson = "application/json";
constexpr std::string_view kHtml = "text/html; charset=utf-8";
constexpr std::string_view kText = "text/plain; charset=utf-8";

}  // namespace sluice::demo
