#pragma once
// PROXY protocol v1 (text) and v2 (binary) headers, as sent by L4 balancers (HAProxy, ELB, SLB)
// ahead of the HTTP bytes. Pure parsing; the connection decides what to trust.
#include <cstddef>
#include <cstdint>

#include "core/ip.h"

namespace sluice {

struct ProxyProtocolResult {
  enum class Status { kIncomplete, kError, kDone } status = Status::kIncomplete;
  size_t consumed = 0;
  bool has_address = false;  // false for LOCAL / UNKNOWN: keep the TCP peer
  IpAddress source;
  uint16_t source_port = 0;
  const char* error = "";
};

ProxyProtocolResult parseProxyProtocol(const char* data, size_t len);

}  // namespace sluice
