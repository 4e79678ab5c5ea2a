#pragma once
// The request key a `balance: hash` upstream hashes on, from its `hash_key` setting.
#include <cstdint>
#include <string_view>

#include "core/ip.h"
#include "proxy/http/header_map.h"

namespace sluice {

// hash_key: "client_ip", "path", "uri", "header:NAME", "cookie:NAME", "query:NAME".
// A missing header/cookie/argument hashes as empty, so such requests share one server.
uint64_t balanceKeyHash(std::string_view hash_key, const IpAddress& client_ip,
                        std::string_view target, const HeaderMap& headers);

// Cookie value by name from all Cookie headers; false if absent.
bool findCookie(const HeaderMap& headers, std::string_view name, std::string_view* value);
// Query argument value (raw, not percent-decoded) by name; false if absent.
bool findQueryArg(std::string_view query, std::string_view name, std::string_view* value);

}  // namespace sluice
