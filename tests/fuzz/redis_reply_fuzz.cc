// Redis replies as they arrive off the wire: random bytes fed to hiredis's reader in
// fuzzer-chosen chunks, every reply it produces converted to a RedisReply (the deep copy the
// client hands to callers), rendered, and checked by a round trip: the RESP encoding of the
// converted reply must parse back to an equal value.
#include <hiredis/hiredis.h>

#include <string>

#include "core/redis/reply.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice {
namespace {

using redis::RedisReply;
using redis::RedisReplyType;

void line(char type, const std::string& text, std::string* out) {
  out->push_back(type);
  out->append(text);
  out->append("\r\n");
}

void encode(const RedisReply& r, std::string* out) {
  switch (r.type) {
    case RedisReplyType::kNil: out->append("$-1\r\n"); break;
    case RedisReplyType::kInteger: line(':', std::to_string(r.integer), out); break;
    case RedisReplyType::kStatus: line('+', r.str, out); break;
    case RedisReplyType::kError: line('-', r.str, out); break;
    case RedisReplyType::kString:
      line('$', std::to_string(r.str.size()), out);
      out->append(r.str);
      out->append("\r\n");
      break;
    case RedisReplyType::kArray:
      line('*', std::to_string(r.elements.size()), out);
      for (const auto& e : r.elements) encode(e, out);
      break;
  }
}

bool equal(const RedisReply& a, const RedisReply& b) {
  if (a.type != b.type || a.integer != b.integer || a.str != b.str || a.elements.size() != b.elements.size()) return false;
  for (size_t i = 0; i < a.elements.size(); i++) {
    if (!equal(a.elements[i], b.elements[i])) return false;
  }
  return true;
}

// Status and error lines cannot carry CR/LF, so only those round-trip exactly.
bool encodable(const RedisReply& r) {
  if ((r.type == RedisReplyType::kStatus || r.type == RedisReplyType::kError) &&
      r.str.find_first_of("\r\n") != std::string::npos) {
    return false;
  }
  for (const auto& e : r.elements) {
    if (!encodable(e)) return false;
  }
  return true;
}

}  // namespace
}  // namespace sluice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  fuzz::Knobs knobs(data, size);
  size_t chunk = 1 + knobs.byte();  // feed in chunks of 1..256 bytes: replies split anywhere
  std::string_view rest = knobs.rest();

  redisReader* reader = redisReaderCreate();
  redis::limitReplySizes(reader);  // as the client's connections do
  bool failed = false;
  while (!rest.empty() && !failed) {
    size_t n = std::min(chunk, rest.size());
    if (redisReaderFeed(reader, rest.data(), n) != REDIS_OK) break;
    rest.remove_prefix(n);
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader, &raw) != REDIS_OK) {
        failed = true;  // protocol error: the client drops the connection
        break;
      }
      if (raw == nullptr) break;  // needs more bytes
      RedisReply reply = redis::RedisReply::fromHiredis(static_cast<redisReply*>(raw));
      freeReplyObject(raw);
      (void)reply.debugString();
      int64_t v;
      (void)reply.asInteger(&v);
      (void)reply.errorIs("MOVED");
      if (!encodable(reply)) continue;
      std::string wire;
      encode(reply, &wire);
      redisReader* again = redisReaderCreate();
      FUZZ_CHECK(redisReaderFeed(again, wire.data(), wire.size()) == REDIS_OK);
      void* raw2 = nullptr;
      FUZZ_CHECK(redisReaderGetReply(again, &raw2) == REDIS_OK && raw2 != nullptr);
      FUZZ_CHECK(equal(reply, redis::RedisReply::fromHiredis(static_cast<redisReply*>(raw2))));
      freeReplyObject(raw2);
      redisReaderFree(again);
    }
  }
  redisReaderFree(reader);
  return 0;
}
