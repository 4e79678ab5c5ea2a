#pragma once
// The identify phase's pure parts: who the client really is, and the request's id and trace.
#include <string>
#include <string_view>

#include "core/ip.h"
#include "proxy/http/header_map.h"

namespace sluice {

// The real client address. X-Forwarded-For is believed only when the direct peer is a trusted
// proxy; it is then walked right to left, skipping trusted hops, and the first untrusted address
// is the client (nginx's real_ip_recursive). X-Real-IP is used when XFF is absent.
IpAddress resolveClientIp(const IpAddress& peer, const HeaderMap& headers, const CidrSet& trusted);

// A client-supplied request id is kept only if it is 1..128 visible token characters;
// anything else is replaced, so ids are safe to log and echo.
bool isValidRequestId(std::string_view id);

// W3C traceparent "00-<32 hex>-<16 hex>-<2 hex>", with non-zero ids.
bool isValidTraceparent(std::string_view tp);
std::string newTraceparent();
// The same into `out`, reusing its capacity.
void writeTraceparent(std::string* out);

}  // namespace sluice
