#pragma once
// The request phases, in order. Each value says whether the phase may yield (wait on I/O and
// resume later) and whether it may end the request with a local response. Later issues plug in
// here (limit, risk, Lua); docs/request-lifecycle.md draws the same sequence.
#include <cstdint>

namespace sluice {

enum class Phase : uint8_t {
  // Read and parse the request head (llhttp, strict). May end the request: 400, 408, 414, 431.
  // Yields while bytes are missing.
  kRead,
  // Real client IP (trusted proxies / PROXY protocol), request id, trace, route match.
  // Computed once, read by every later phase. May end the request: 404 (no route). Never yields.
  kIdentify,
  // Operator Lua rewrite handlers: change the request (headers) and set the keys limit rules
  // read (sluice.limit.set_key) before any rule runs. May end the request; may yield.
  kRewrite,
  // Limit rules of the route (limiter issue). May end the request (429/503/degrade). May yield
  // (queueing).
  kLimit,
  // Risk scoring and challenge ladder (risk issue). May end the request (challenge, 403).
  // May yield (cluster-state look-ups within a budget).
  kRisk,
  // Operator Lua access handlers (Lua issue). May end the request; may yield.
  kAccess,
  // Produce the response: proxy to the route's upstream pool, a Lua aggregate, or a local
  // response. Yields on upstream I/O. Ends the request by definition.
  kContent,
  // Response head on its way to the client: hop-by-hop removal, added headers, then Lua
  // header_filter. May not yield; may change headers, not end the request.
  kHeaderFilter,
  // Response body streamed with backpressure (and Lua body_filter). May not yield.
  kBody,
  // After the last byte: access log, metrics, behaviour feedback. May not yield or respond.
  kLog,
};

const char* phaseName(Phase p);

}  // namespace sluice
