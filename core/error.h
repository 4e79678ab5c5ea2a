#pragma once
// Errors on the data path are values, never exceptions. Like Pingora's, each carries where it
// came from and whether retrying on another upstream is safe, so the proxy decides in one place.
#include <string>

namespace sluice {

enum class ErrorSource : uint8_t {
  kDownstream,  // the client sent something wrong or went away
  kUpstream,    // the upstream server failed, timed out or sent garbage
  kInternal,    // our own limit or bug
};

enum class ErrorType : uint8_t {
  kNone,
  kConnectFailed,
  kConnectTimeout,
  kReadTimeout,
  kSendTimeout,
  kConnectionReset,  // peer closed before a complete message
  kBadMessage,       // unparseable HTTP
  kNoHealthyServer,
  kTooLarge,
  kDrain,
};

struct Error {
  ErrorSource source = ErrorSource::kInternal;
  ErrorType type = ErrorType::kNone;
  // True when no byte of the request reached the upstream application, so another server may
  // take it (still subject to method idempotency and the retry budget).
  bool retryable = false;
  std::string detail;

  bool ok() const { return type == ErrorType::kNone; }
};

const char* errorTypeName(ErrorType t);

}  // namespace sluice
