#include "core/redis/reply.h"

#include <hiredis/hiredis.h>

#include <charconv>

namespace sluice::redis {

const char* redisReplyTypeName(RedisReplyType t) {
  switch (t) {
    case RedisReplyType::kNil: return "nil";
    case RedisReplyType::kInteger: return "integer";
    case RedisReplyType::kString: return "string";
    case RedisReplyType::kStatus: return "status";
    case RedisReplyType::kError: return "error";
    case RedisReplyType::kArray: return "array";
  }
  return "?";
}

const char* redisStatusName(RedisStatus s) {
  switch (s) {
    case RedisStatus::kOk: return "ok";
    case RedisStatus::kTimeout: return "timeout";
    case RedisStatus::kNotConnected: return "not connected";
    case RedisStatus::kConnectionLost: return "connection lost";
    case RedisStatus::kBreakerOpen: return "circuit breaker open";
    case RedisStatus::kClosed: return "client closed";
    case RedisStatus::kTooManyRedirects: return "too many redirects";
    case RedisStatus::kCrossSlot: return "keys in different cluster slots";
    case RedisStatus::kBadRequest: return "bad request";
  }
  return "?";
}

namespace {

redisReplyObjectFunctions gCappedFunctions;
void* (*gCreateArray)(const redisReadTask*, int) = nullptr;

void* createCappedArray(const redisReadTask* task, int elements) {
  if (elements < 0 || static_cast<size_t>(elements) > kMaxReplyArray) return nullptr;  // read as OOM
  return gCreateArray(task, elements);
}

}  // namespace

void limitReplySizes(redisReader* reader) {
  // hiredis's default functions are static in hiredis.c: copy the table once, swap one entry.
  static const bool once = [reader] {
    gCappedFunctions = *reader->fn;
    gCreateArray = gCappedFunctions.createArray;
    gCappedFunctions.createArray = createCappedArray;
    return true;
  }();
  (void)once;
  reader->fn = &gCappedFunctions;
}

RedisReply RedisReply::ofInteger(int64_t v) {
  RedisReply r;
  r.type = RedisReplyType::kInteger;
  r.integer = v;
  return r;
}

RedisReply RedisReply::ofString(std::string s, RedisReplyType t) {
  RedisReply r;
  r.type = t;
  r.str = std::move(s);
  return r;
}

RedisReply RedisReply::fromHiredis(const redisReply* r) {
  RedisReply out;
  if (r == nullptr) return out;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      out.type = RedisReplyType::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      out.type = r->type == REDIS_REPLY_STRING   ? RedisReplyType::kString
                 : r->type == REDIS_REPLY_STATUS ? RedisReplyType::kStatus
                                                 : RedisReplyType::kError;
      if (r->str != nullptr) out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReplyType::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; i++) out.elements.push_back(fromHiredis(r->element[i]));
      break;
    default:  // REDIS_REPLY_NIL, and anything a future hiredis adds reads as nil
      break;
  }
  return out;
}

bool RedisReply::errorIs(std::string_view prefix) const {
  if (type != RedisReplyType::kError || str.size() < prefix.size()) return false;
  if (str.compare(0, prefix.size(), prefix) != 0) return false;
  return str.size() == prefix.size() || str[prefix.size()] == ' ';
}

bool RedisReply::asInteger(int64_t* out) const {
  if (type == RedisReplyType::kInteger) {
    *out = integer;
    return true;
  }
  if (type != RedisReplyType::kString && type != RedisReplyType::kStatus) return false;
  const char* b = str.data();
  const char* e = b + str.size();
  auto [p, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && p == e && b != e;
}

bool RedisReply::elementInteger(size_t i, int64_t* out) const {
  return type == RedisReplyType::kArray && i < elements.size() && elements[i].asInteger(out);
}

std::string RedisReply::debugString() const {
  switch (type) {
    case RedisReplyType::kNil: return "(nil)";
    case RedisReplyType::kInteger: return "(integer) " + std::to_string(integer);
    case RedisReplyType::kString: return "\"" + str + "\"";
    case RedisReplyType::kStatus: return str;
    case RedisReplyType::kError: return "(error) " + str;
    case RedisReplyType::kArray: {
      std::string s = "[";
      for (size_t i = 0; i < elements.size(); i++) {
        if (i) s += ", ";
        s += elements[i].debugString();
      }
      return s + "]";
    }
  }
  return "?";
}

Error RedisResult::toError() const {
  Error e;
  e.source = ErrorSource::kUpstream;
  e.detail = std::string("redis: ") + redisStatusName(status);
  if (!detail.empty()) e.detail += ": " + detail;
  switch (status) {
    case RedisStatus::kOk:
      if (reply.isError()) {
        e.type = ErrorType::kBadMessage;
        e.detail = "redis: " + reply.str;
      } else {
        e.type = ErrorType::kNone;
        e.detail.clear();
      }
      break;
    case RedisStatus::kTimeout: e.type = ErrorType::kReadTimeout; break;
    case RedisStatus::kNotConnected:
      e.type = ErrorType::kConnectFailed;
      e.retryable = true;
      break;
    case RedisStatus::kConnectionLost: e.type = ErrorType::kConnectionReset; break;
    case RedisStatus::kBreakerOpen:
      e.type = ErrorType::kNoHealthyServer;
      e.retryable = true;
      break;
    case RedisStatus::kClosed: e.type = ErrorType::kDrain; break;
    case RedisStatus::kTooManyRedirects: e.type = ErrorType::kBadMessage; break;
    case RedisStatus::kCrossSlot:
    case RedisStatus::kBadRequest:
      e.source = ErrorSource::kInternal;
      e.type = ErrorType::kBadMessage;
      break;
  }
  return e;
}

}  // namespace sluice::redis
