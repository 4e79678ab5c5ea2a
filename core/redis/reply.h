#pragma once
// What a Redis call returns, as plain values: callers never see hiredis types. RedisReply is a
// deep copy of one server reply; RedisResult adds the transport outcome (timeout, breaker open,
// connection lost, ...), which is a different thing from a server error *reply* (WRONGTYPE,
// a script's error): a server error means Redis is up and answered.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

struct redisReply;   // hiredis, only in reply.cc
struct redisReader;  // hiredis

namespace sluice::redis {

enum class RedisReplyType : uint8_t { kNil, kInteger, kString, kStatus, kError, kArray };

const char* redisReplyTypeName(RedisReplyType t);

struct RedisReply {
  RedisReplyType type = RedisReplyType::kNil;
  int64_t integer = 0;
  std::string str;  // kString, kStatus, kError
  std::vector<RedisReply> elements;  // kArray

  static RedisReply nil() { return {}; }
  static RedisReply ofInteger(int64_t v);
  static RedisReply ofString(std::string s, RedisReplyType t = RedisReplyType::kString);
  // Deep copy of a hiredis reply tree (hiredis caps nesting at 7 levels, so recursion is bounded).
  static RedisReply fromHiredis(const redisReply* r);

  bool isNil() const { return type == RedisReplyType::kNil; }
  bool isError() const { return type == RedisReplyType::kError; }
  bool isInteger() const { return type == RedisReplyType::kInteger; }
  bool isArray() const { return type == RedisReplyType::kArray; }
  // An error reply whose first word is `prefix` (MOVED, ASK, NOSCRIPT, ...).
  bool errorIs(std::string_view prefix) const;
  // Integer value of an integer reply, or of a string/status reply holding a decimal integer.
  bool asInteger(int64_t* out) const;
  // Element i as an integer (scripts return arrays of integers); false when absent or not one.
  bool elementInteger(size_t i, int64_t* out) const;
  // Compact one-line rendering for logs and test failure messages.
  std::string debugString() const;
};

// hiredis 0.14 allocates an array's element vector as soon as it reads the header, so one
// "*999999999" line from a broken or hostile server would allocate gigabytes. This makes the
// reader refuse arrays over kMaxReplyArray elements (a protocol error: the connection drops).
constexpr size_t kMaxReplyArray = 1u << 20;
void limitReplySizes(redisReader* reader);

// Transport outcome of one command. kOk means a server answered (possibly with an error reply).
enum class RedisStatus : uint8_t {
  kOk,
  kTimeout,           // no reply within the command's budget (a late reply is discarded)
  kNotConnected,      // the node's connection could not be made (connect or handshake failed)
  kConnectionLost,    // the connection died with the command in flight: it may have run
  kBreakerOpen,       // the node's circuit breaker is open: failed fast, nothing was sent
  kClosed,            // the client was destroyed with the command pending
  kTooManyRedirects,  // MOVED/ASK chain longer than maxRedirects
  kCrossSlot,         // a multi-key script's keys hash to different cluster slots
  kBadRequest,        // empty command, or a queue over its bound
};

const char* redisStatusName(RedisStatus s);

struct RedisResult {
  RedisStatus status = RedisStatus::kOk;
  std::string detail;  // why, for transport failures
  RedisReply reply;    // valid when status == kOk

  bool ok() const { return status == RedisStatus::kOk; }
  // ok() and the server did not answer with an error.
  bool succeeded() const { return ok() && !reply.isError(); }
  // The proxy's error value: source upstream, the closest ErrorType, and retryable when the
  // command cannot have been executed (it never left, or the breaker refused it).
  Error toError() const;
};

}  // namespace sluice::redis
