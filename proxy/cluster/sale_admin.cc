// Admin API of the sale gate (docs/cluster.md "Sale gate"): set an item's quota, return units,
// read the stock. The control thread carries no client traffic, so a short blocking hiredis
// connection is fine here (connect + command within redis.command_timeout, at least 200 ms).
#include <hiredis/hiredis.h>

#include <charconv>
#include <cstdlib>
#include <string>

#include "core/redis/scripts.h"
#include "core/strings.h"
#include "proxy/cluster/cluster_limits.h"
#include "proxy/config/redis_settings.h"

namespace sluice {

namespace {

struct SyncRedis {
  redisContext* ctx = nullptr;
  std::string error;
  ~SyncRedis() {
    if (ctx) redisFree(ctx);
  }
  bool open(const RedisSettings& s, const std::string& host, int port) {
    if (ctx) redisFree(ctx), ctx = nullptr;
    Nanos t = std::max<Nanos>(s.command_timeout, 200 * kMillis);
    timeval tv{static_cast<time_t>(t / kSeconds), static_cast<suseconds_t>((t % kSeconds) / 1000)};
    ctx = redisConnectWithTimeout(host.c_str(), port, tv);
    if (!ctx || ctx->err) {
      error = ctx ? ctx->errstr : "cannot allocate a redis context";
      return false;
    }
    redisSetTimeout(ctx, tv);
    if (!s.password.empty()) {
      redisReply* r = s.username.empty()
                          ? static_cast<redisReply*>(redisCommand(ctx, "AUTH %b", s.password.data(), s.password.size()))
                          : static_cast<redisReply*>(redisCommand(ctx, "AUTH %b %b", s.username.data(), s.username.size(),
                                                                  s.password.data(), s.password.size()));
      bool ok = r && r->type != REDIS_REPLY_ERROR;
      if (r) freeReplyObject(r);
      if (!ok) {
        error = "authentication failed";  // never the password
        return false;
      }
    }
    if (s.db != 0 && !s.cluster) {
      redisReply* r = static_cast<redisReply*>(redisCommand(ctx, "SELECT %d", s.db));
      bool ok = r && r->type != REDIS_REPLY_ERROR;
      if (r) freeReplyObject(r);
      if (!ok) return error = "SELECT failed", false;
    }
    return true;
  }
  // argv on the key's node: follows MOVED/ASK a few times (Redis Cluster).
  redisReply* run(const RedisSettings& s, const std::vector<std::string>& argv) {
    std::string host = s.endpoints[0].first;
    int port = s.endpoints[0].second;
    for (int hop = 0; hop < 4; hop++) {
      if (!open(s, host, port)) return nullptr;
      std::vector<const char*> a;
      std::vector<size_t> l;
      for (const auto& x : argv) a.push_back(x.data()), l.push_back(x.size());
      auto* r = static_cast<redisReply*>(redisCommandArgv(ctx, static_cast<int>(a.size()), a.data(), l.data()));
      if (!r) {
        error = ctx->errstr;
        return nullptr;
      }
      if (r->type == REDIS_REPLY_ERROR && (strncmp(r->str, "MOVED ", 6) == 0 || strncmp(r->str, "ASK ", 4) == 0)) {
        std::string e(r->str);
        freeReplyObject(r);
        size_t sp = e.rfind(' ');
        std::string hp = e.substr(sp + 1);
        size_t colon = hp.rfind(':');
        host = hp.substr(0, colon);
        port = atoi(hp.c_str() + colon + 1);
        continue;
      }
      return r;
    }
    error = "too many redirects";
    return nullptr;
  }
  redisReply* eval(const RedisSettings& s, const redis::RedisScriptPtr& script, const std::string& key,
                   std::vector<std::string> argv) {
    std::vector<std::string> a = {"EVAL", script->body(), "1", key};
    for (auto& x : argv) a.push_back(std::move(x));
    return run(s, a);
  }
};

bool integerOf(redisReply* r, int64_t* out) {
  if (!r) return false;
  if (r->type == REDIS_REPLY_INTEGER) return *out = r->integer, true;
  if (r->type == REDIS_REPLY_STRING) {
    auto [p, ec] = std::from_chars(r->str, r->str + r->len, *out);
    return ec == std::errc() && p == r->str + r->len;
  }
  return false;
}

bool unitsOf(std::string_view body, int64_t* out) {
  size_t k = body.find("\"units\"");
  if (k == std::string_view::npos) return false;
  size_t c = body.find(':', k);
  if (c == std::string_view::npos) return false;
  size_t i = c + 1;
  while (i < body.size() && (body[i] == ' ' || body[i] == '\t')) i++;
  size_t j = i;
  while (j < body.size() && (isdigit(static_cast<unsigned char>(body[j])) || (j == i && body[j] == '-'))) j++;
  auto [p, ec] = std::from_chars(body.data() + i, body.data() + j, *out);
  return ec == std::errc() && j > i;
}

std::string quotaTemplate(const Config& cfg) {
  for (const auto& r : cfg.routes)
    if (r.sale_gate) return r.sale_gate->quota_key;
  return SaleGateConfig{}.quota_key;
}

}  // namespace

std::pair<int, std::string> saleAdmin(const Config& cfg, bool post, std::string_view item,
                                      std::string_view action, std::string_view body) {
  if (!cfg.redis) return {404, "{\"error\":\"no redis: section configured\"}"};
  if (item.empty() || item.size() > 128 || item.find_first_of("{}/ \r\n") != std::string_view::npos)
    return {400, "{\"error\":\"bad item id\"}"};
  const RedisSettings& s = *cfg.redis;
  SaleGateConfig g;
  g.quota_key = quotaTemplate(cfg);
  std::string stock = s.key_prefix + g.keyFor(item);
  std::string quota = stock + ":quota";  // same hash tag: same slot
  std::string esc = jsonEscape(std::string(item));
  SyncRedis r;
  auto fail = [&] { return std::pair<int, std::string>{503, "{\"error\":\"redis: " + jsonEscape(r.error) + "\"}"}; };
  if (!post) {
    if (!action.empty()) return {404, "{\"error\":\"no such sale endpoint\"}"};
    redisReply* a = r.run(s, {"GET", stock});
    if (!a) return fail();
    int64_t left = -1, q = -1;
    bool has = integerOf(a, &left);
    freeReplyObject(a);
    redisReply* b = r.run(s, {"GET", quota});
    if (b) integerOf(b, &q), freeReplyObject(b);
    if (!has) return {200, "{\"item\":\"" + esc + "\",\"on_sale\":false}"};
    return {200, "{\"item\":\"" + esc + "\",\"on_sale\":true,\"remaining\":" + std::to_string(left) +
                     ",\"quota\":" + std::to_string(q) + (q >= 0 ? ",\"sold\":" + std::to_string(q - left) : "") + "}"};
  }
  int64_t units = 0;
  if (!unitsOf(body, &units) || units < 0 || units > 1000000000)
    return {400, "{\"error\":\"expected a JSON body like {\\\"units\\\": 100}\"}"};
  if (action == "quota") {
    // The quota is the stock from now on (units already sold are the operator's business).
    redisReply* a = r.run(s, {"SET", stock, std::to_string(units)});
    if (!a) return fail();
    freeReplyObject(a);
    redisReply* b = r.run(s, {"SET", quota, std::to_string(units)});
    if (!b) return fail();
    freeReplyObject(b);
    return {200, "{\"item\":\"" + esc + "\",\"quota\":" + std::to_string(units) + ",\"remaining\":" +
                     std::to_string(units) + "}"};
  }
  if (action == "return") {
    int64_t cap = -1;
    if (redisReply* q = r.run(s, {"GET", quota})) integerOf(q, &cap), freeReplyObject(q);
    redisReply* a = r.eval(s, redis::scripts::saleReturn(), stock, {std::to_string(units), std::to_string(cap)});
    if (!a) return fail();
    int64_t left = -1;
    integerOf(a, &left);
    freeReplyObject(a);
    if (left < 0) return {404, "{\"error\":\"item has no sale quota\",\"item\":\"" + esc + "\"}"};
    return {200, "{\"item\":\"" + esc + "\",\"returned\":" + std::to_string(units) + ",\"remaining\":" +
                     std::to_string(left) + "}"};
  }
  return {404, "{\"error\":\"no such sale endpoint\"}"};
}

}  // namespace sluice
