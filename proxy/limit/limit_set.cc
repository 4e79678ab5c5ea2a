#include "proxy/limit/limit_set.h"

#include <re2/re2.h>

#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/hash.h"
#include "core/strings.h"
#include "core/swar.h"
#include "proxy/config/redis_settings.h"
#include "proxy/http/header_map.h"
#include "proxy/server/controls.h"
#include "proxy/router/router.h"
#include "proxy/upstream/balance_key.h"

namespace sluice {

namespace {

limiter::GcraParams gcraParams(const LimitRuleConfig& r) {
  limiter::GcraParams p;
  p.requests = r.requests;
  p.period = r.period;
  p.burst = r.burst;
  p.delay = r.delay;
  p.nodelay = r.nodelay;
  p.countRejected = r.count_rejected;
  p.resolution = r.nginx_resolution ? limiter::GcraResolution::kNginxMillis : limiter::GcraResolution::kNanos;
  return p;
}

limiter::SlidingWindowParams windowParams(const LimitRuleConfig& r) {
  limiter::SlidingWindowParams p;
  p.limit = r.limit;
  p.window = r.window;
  p.countRejected = r.count_rejected;
  return p;
}

const LimitRuleRuntime* findPrevious(const LimitSet* previous, const LimitRuleConfig& rule) {
  if (!previous) return nullptr;
  for (size_t i = 0; i < previous->size(); i++) {
    const auto& old = previous->rule(i);
    if (old.config->id == rule.id && old.config->key_signature == rule.key_signature &&
        old.config->algorithm == rule.algorithm && old.config->ipv6_prefix == rule.ipv6_prefix)
      return &old;
  }
  return nullptr;
}

bool sameHotParams(const HotItemsConfig& a, const HotItemsConfig& b) {
  return a.window == b.window && a.sub_windows == b.sub_windows && a.hot_rate == b.hot_rate &&
         a.top_k == b.top_k;
}

// The raw token named by jwt.token: a cookie, or a header holding "Bearer <token>".
bool jwtToken(const JwtConfig& cfg, const HeaderMap& headers, std::string_view* out) {
  std::string_view src = cfg.token_source;
  if (src.rfind("cookie:", 0) == 0) return findCookie(headers, src.substr(7), out) && !out->empty();
  std::string_view v;
  if (!headers.get(src.substr(7), &v)) return false;
  v = trim(v);
  if (v.size() > 7 && equalsIgnoreCase(v.substr(0, 7), "bearer ")) v = trim(v.substr(7));
  *out = v;
  return !v.empty();
}

}  // namespace

namespace {

// Byte -> normalised byte ('#' for digits, lower case for A-Z) and byte -> is-digit.
struct UaTables {
  char out[256];
  uint8_t digit[256];
  UaTables() {
    for (int c = 0; c < 256; c++) {
      digit[c] = c >= '0' && c <= '9';
      out[c] = digit[c] ? '#' : (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : static_cast<char>(c);
    }
  }
};
const UaTables kUaTables;

}  // namespace

namespace {

using swar::kOnes;

// Squeezes out of `x` the bytes whose high bit is set in `cont` (the digits that continue a
// run): the bytes above each one shift down. Portable: a few instructions per squeezed byte.
struct ShiftSqueeze {
  static uint64_t squeeze(uint64_t x, uint64_t cont, size_t* kept) {
    while (cont != 0) {  // highest first, so the lower positions stay where they are
      const int bit = 63 - __builtin_clzll(cont);
      const uint64_t below = (uint64_t{1} << (bit & ~7)) - 1;  // the bytes under this one
      x = (x & below) | ((x >> 8) & ~below);
      cont ^= uint64_t{1} << bit;
      --*kept;
    }
    return x;
  }
};

// The same with BMI2's PEXT: one instruction for the whole word, no branch per digit.
struct PextSqueeze {
  __attribute__((target("bmi2,popcnt"))) static uint64_t squeeze(uint64_t x, uint64_t cont, size_t* kept) {
    *kept -= static_cast<size_t>(__builtin_popcountll(cont));
    return __builtin_ia32_pext_di(x, ~((cont >> 7) * 0xff));
  }
};

// Eight bytes at a time with SWAR range masks: capitals lowered, digits turned into '#', and
// the digits that continue a run ("120" -> "#") squeezed out of the word. Only the last 0-7
// bytes take the byte loop. (A byte loop over every word with a digit cost ~9.5 instructions a
// byte; this runs on every UA-cache miss.)
// Starts at input byte i / output byte w; prev_digit is 0x80 when byte i - 1 was a digit.
template <class Squeeze>
__attribute__((always_inline)) inline size_t normaliseWords(std::string_view ua, char* base, size_t i = 0,
                                                            size_t w = 0, uint64_t prev_digit = 0) {
  const auto* p = reinterpret_cast<const unsigned char*>(ua.data());
  const size_t n = ua.size();
  while (i + 8 <= n) {
    uint64_t x = swar::load8(reinterpret_cast<const char*>(p) + i);
    const uint64_t digits = swar::inRange(x, '0', '9');  // bytes >= 0x80 are in no range
    x = swar::lowerAscii(x);
    const uint64_t digit_bytes = (digits >> 7) * 0xff;
    x = (x & ~digit_bytes) | (('#' * kOnes) & digit_bytes);
    const uint64_t cont = digits & ((digits << 8) | prev_digit);  // digits right after a digit
    prev_digit = digits >> 56;
    size_t kept = 8;
    if (cont != 0) x = Squeeze::squeeze(x, cont, &kept);
    memcpy(base + w, &x, 8);  // w <= i: the 8 bytes fit, the next word overwrites the excess
    w += kept;
    i += 8;
  }
  uint8_t prev = prev_digit != 0;
  for (; i < n; ++i) {
    const unsigned char c = p[i];
    const uint8_t d = kUaTables.digit[c];
    base[w] = kUaTables.out[c];
    w += 1u - (d & prev);
    prev = d;
  }
  return w;
}

#if defined(__SSE2__)
// Byte i of kSqueezeMask[m] is 0xff when bit i of m is set: a movemask back to a byte mask.
struct SqueezeMasks {
  uint64_t mask[256];
  SqueezeMasks() {
    for (int m = 0; m < 256; m++) {
      mask[m] = 0;
      for (int b = 0; b < 8; b++)
        if (m & (1 << b)) mask[m] |= uint64_t{0xff} << (8 * b);
    }
  }
};
const SqueezeMasks kSqueezeMasks;
#endif

// Sixteen bytes at a time with SSE2 compares (bytes >= 0x80 are negative, so in no range), then
// the words above for the rest. A block without a digit run stores as is; one with runs squeezes
// each half with PEXT. (~3 instructions a byte with the word loop alone.)
__attribute__((target("bmi2,popcnt"))) size_t normalisePext(std::string_view ua, char* out) {
#if defined(__SSE2__)
  const auto* p = ua.data();
  const size_t n = ua.size();
  size_t i = 0, w = 0;
  unsigned prev = 0;  // 1 when the byte before the block was a digit
  const __m128i lo_digit = _mm_set1_epi8('0' - 1), hi_digit = _mm_set1_epi8('9' + 1);
  const __m128i lo_upper = _mm_set1_epi8('A' - 1), hi_upper = _mm_set1_epi8('Z' + 1);
  const __m128i case_bit = _mm_set1_epi8(0x20), hash = _mm_set1_epi8('#');
  while (i + 16 <= n) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, lo_digit), _mm_cmpgt_epi8(hi_digit, v));
    const __m128i upper = _mm_and_si128(_mm_cmpgt_epi8(v, lo_upper), _mm_cmpgt_epi8(hi_upper, v));
    v = _mm_or_si128(v, _mm_and_si128(upper, case_bit));
    v = _mm_or_si128(_mm_andnot_si128(digit, v), _mm_and_si128(digit, hash));
    const unsigned d = static_cast<unsigned>(_mm_movemask_epi8(digit));
    const unsigned cont = d & ((d << 1) | prev);  // digits right after a digit
    prev = d >> 15;
    if (cont == 0) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + w), v);  // w <= i: fits
      w += 16;
    } else {
      uint64_t lo = static_cast<uint64_t>(_mm_cvtsi128_si64(v));
      uint64_t hi = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)));
      lo = __builtin_ia32_pext_di(lo, ~kSqueezeMasks.mask[cont & 0xff]);
      memcpy(out + w, &lo, 8);
      w += 8 - static_cast<size_t>(__builtin_popcount(cont & 0xff));
      hi = __builtin_ia32_pext_di(hi, ~kSqueezeMasks.mask[cont >> 8]);
      memcpy(out + w, &hi, 8);
      w += 8 - static_cast<size_t>(__builtin_popcount(cont >> 8));
    }
    i += 16;
  }
  return normaliseWords<PextSqueeze>(ua, out, i, w, prev ? 0x80 : 0);
#else
  return normaliseWords<PextSqueeze>(ua, out);
#endif
}
size_t normaliseShift(std::string_view ua, char* out) { return normaliseWords<ShiftSqueeze>(ua, out); }

// Writes the normalised UA to out (room for ua.size() bytes), returns its length.
using NormaliseFn = size_t (*)(std::string_view, char*);
const NormaliseFn kNormalise = [] {
  __builtin_cpu_init();  // a static initialiser may run before libgcc's
  return __builtin_cpu_supports("bmi2") ? normalisePext : normaliseShift;
}();

}  // namespace

void normaliseUserAgent(std::string_view ua, std::string* out) {
  out->resize(ua.size());
  out->resize(kNormalise(ua, out->data()));
}
void normaliseUserAgentPortable(std::string_view ua, std::string* out) {
  out->resize(ua.size());
  out->resize(normaliseShift(ua, out->data()));
}

namespace {

// A few thousand distinct User-Agents make up nearly all traffic, and normalising one costs
// ~13 instructions a byte; hashing the raw bytes costs under one. So each worker remembers the
// normalised key of the UAs it saw last, direct-mapped by the raw hash. A colliding raw hash
// (64 bits) could only map a UA to another UA's bucket, which a client choosing its UA can do
// anyway.
struct UaKeyCache {
  static constexpr size_t kSlots = 4096;
  struct Slot {
    uint64_t raw = 0;
    uint64_t key = 0;
  };
  Slot slots[kSlots];
};

}  // namespace

uint64_t userAgentKey(std::string_view ua) {
  thread_local UaKeyCache cache;
  thread_local std::string norm;  // only grows: no clearing of the bytes about to be written
  uint64_t raw = hash64(ua, 0x75612d726177ULL) | 1;  // never 0: 0 marks an empty slot
  auto& slot = cache.slots[raw & (UaKeyCache::kSlots - 1)];
  if (slot.raw == raw) return slot.key;
  if (norm.size() < ua.size()) norm.resize(ua.size());
  const size_t len = kNormalise(ua, norm.data());
  slot.raw = raw;
  slot.key = hash64(std::string_view(norm.data(), len));
  return slot.key;
}

bool matchDefaultItemPath(std::string_view path, std::string_view* id) {
  // ^/(?:api/)?items?/([^/?]+) without a regex engine: the pattern every default item key uses.
  if (path.starts_with("/api/")) path.remove_prefix(4);
  if (!path.starts_with("/item")) return false;
  path.remove_prefix(5);
  if (!path.empty() && path.front() == 's') path.remove_prefix(1);
  if (path.empty() || path.front() != '/') return false;
  size_t end = 1;
  while (end < path.size() && path[end] != '/' && path[end] != '?') end++;
  *id = path.substr(1, end - 1);
  return !id->empty();
}

LimitSet::LimitSet(const Config& config, const LimitSet* previous) {
  if (config.hot_items.enabled) {
    hot_items_config_ = config.hot_items;
    if (previous && previous->hot_items_ && sameHotParams(previous->hot_items_config_, config.hot_items)) {
      hot_items_ = previous->hot_items_;  // the hot list survives a reload
    } else {
      limiter::HeavyHitterParams p;
      p.window = config.hot_items.window;
      p.subWindows = config.hot_items.sub_windows;
      p.hotRate = config.hot_items.hot_rate;
      p.topK = config.hot_items.top_k;
      hot_items_ = std::make_shared<limiter::HeavyHitterSketch>(p);
    }
  }
  if (config.jwt.verify() || !config.jwt.token_source.empty()) {
    JwtKeys keys{config.jwt.hs256_secret, config.jwt.rs256_public_key_pem};
    jwt_ = std::make_shared<JwtVerifier>(keys);
  }
  // A cluster-scope rule's local limiter is its fail-open fallback: this instance's share
  // (limit / redis.expected_instances) of the global budget (docs/cluster.md).
  uint64_t instances = config.redis ? std::max<uint32_t>(1, config.redis->expected_instances) : 1;
  for (const auto& rc_in : config.limit_rules) {
    const LimitRuleConfig* rcp = &rc_in;
    if (rc_in.cluster_scope && instances > 1) {
      auto share = std::make_unique<LimitRuleConfig>(rc_in);
      share->requests = std::max<uint64_t>(1, rc_in.requests / instances);
      share->burst = static_cast<uint32_t>(rc_in.burst / instances);
      share->limit = std::max<uint64_t>(1, rc_in.limit / instances);
      share->max_active = static_cast<uint32_t>(std::max<uint64_t>(1, rc_in.max_active / instances));
      share_configs_.push_back(std::move(share));
      rcp = share_configs_.back().get();
    }
    const LimitRuleConfig& rc = *rcp;
    auto rt = std::make_unique<LimitRuleRuntime>();
    rt->config = &rc_in;
    rt->mode_override = Controls::ruleMode(rc.id);
    const LimitRuleRuntime* old = findPrevious(previous, rc);
    switch (rc.algorithm) {
      case LimitAlgorithm::kLeakyBucket: {
        auto params = gcraParams(rc);
        rt->gcra_table = limiter::GcraLimiter::reuseOrCreateTable(
            old ? old->gcra_table : nullptr, params, rc.memory);
        rt->gcra = std::make_shared<limiter::GcraLimiter>(params, rt->gcra_table);
        rt->rate = rt->gcra;
        for (const auto& o : rc.items) {
          auto ip = params;
          ip.requests = o.requests;
          ip.period = o.period;
          ip.burst = o.burst;
          // An item's own numbers on the rule's table: its keys already differ by item.
          if (ip.validate() == nullptr)
            rt->item_limits.push_back({hash64(o.item), std::make_shared<limiter::GcraLimiter>(ip, rt->gcra_table)});
        }
        break;
      }
      case LimitAlgorithm::kSlidingWindow: {
        auto params = windowParams(rc);
        rt->window_table = limiter::SlidingWindowLimiter::reuseOrCreateTable(
            old ? old->window_table : nullptr, old ? old->config->window : 0, params, rc.memory);
        rt->window = std::make_shared<limiter::SlidingWindowLimiter>(params, rt->window_table);
        rt->rate = rt->window;
        for (const auto& o : rc.items) {
          auto ip = params;
          ip.limit = o.limit;
          if (ip.validate() == nullptr)
            rt->item_limits.push_back({hash64(o.item), std::make_shared<limiter::SlidingWindowLimiter>(ip, rt->window_table)});
        }
        break;
      }
      case LimitAlgorithm::kConcurrency:
        if (old && old->concurrency && old->config->memory == rc.memory) {
          // In-flight counts must stay exact: the same object, with the new limit.
          rt->concurrency = old->concurrency;
          rt->concurrency->setLimit(rc.max_active);
        } else {
          rt->concurrency =
              std::make_shared<limiter::KeyedConcurrencyLimiter>(rc.max_active, rc.memory);
        }
        break;
      case LimitAlgorithm::kCircuitBreaker: {
        limiter::CircuitBreakerParams p;
        p.strategy = rc.breaker.slow_calls ? limiter::BreakerStrategy::kSlowCallRatio
                                           : limiter::BreakerStrategy::kErrorRatio;
        p.threshold = rc.breaker.threshold;
        p.slowCallThreshold = rc.breaker.slow_call;
        p.minRequests = rc.breaker.min_requests;
        p.statWindow = rc.breaker.window;
        p.cooldown = rc.breaker.cooldown;
        p.halfOpenProbes = rc.breaker.half_open_probes;
        size_t n = rc.key[0].kind == LimitKeyKind::kUpstream ? config.upstreams.size() : config.routes.size();
        for (size_t i = 0; i < n; i++) rt->breakers.push_back(std::make_unique<limiter::CircuitBreaker>(p));
        break;
      }
    }
    rules_.push_back(std::move(rt));
  }
}

size_t LimitRuleRuntime::liveKeys(Nanos now) const {
  if (gcra) return gcra->activeKeys(now);
  if (window) return window->activeKeys(now);
  if (concurrency) return concurrency->keysInFlight();
  return 0;
}

limiter::KeyTableStats LimitRuleRuntime::tableStats() const {
  if (gcra_table) return gcra_table->entries.stats();
  if (window_table) return window_table->entries.stats();
  if (concurrency) return concurrency->table().stats();
  return {};
}

bool LimitSet::sourceValue(const LimitKeyPart& part, const LimitRequestView& req, std::string_view* out) {
  const std::string& s = part.source;
  // Several rules usually read the same source (the item id, the member cookie): look each up
  // once per request.
  for (uint8_t i = 0; i < req.cached; i++) {
    const auto& c = req.cache[i];
    if (c.source == std::string_view(s)) {
      *out = c.value;
      return c.found;
    }
  }
  bool found = sourceValueUncached(part, req, out);
  if (req.cached < LimitRequestView::kCacheSlots && !std::string_view(s).starts_with("jwt:"))  // claims live in scratch
    req.cache[req.cached++] = {s, *out, found};
  return found;
}

bool LimitSet::sourceValueUncached(const LimitKeyPart& part, const LimitRequestView& req,
                                   std::string_view* out) {
  const std::string_view s = part.source;
  std::string_view path, query;
  if (part.default_item) {  // the item id: every item rule and hot-item detection, first
    splitTarget(req.target, &path, &query);
    return matchDefaultItemPath(path, out);
  }
  if (s.starts_with("header:")) return req.headers->get(s.substr(7), out) && !out->empty();
  if (s.starts_with("cookie:")) return findCookie(*req.headers, s.substr(7), out) && !out->empty();
  if (s.starts_with("lua:")) {
    if (!req.lua_keys) return false;
    const std::string_view name = s.substr(4);
    for (const auto& [k, v] : *req.lua_keys)
      if (k == name) {
        *out = v;
        return !out->empty();
      }
    return false;
  }
  if (s.starts_with("jwt:")) {
    if (!req.jwt || !req.jwt_config) return false;
    if (req.jwt_state == 0) {
      std::string_view token;
      bool ok = jwtToken(*req.jwt_config, *req.headers, &token) &&
                req.jwt->decode(token, req.now_unix, req.jwt_config->leeway / kSeconds, &req.jwt_claims);
      req.jwt_state = ok ? 1 : -1;
    }
    if (req.jwt_state < 0 || !jwtClaim(req.jwt_claims, s.substr(4), &req.scratch)) return false;
    *out = req.scratch;
    return !out->empty();
  }
  splitTarget(req.target, &path, &query);
  if (s.starts_with("query:")) return findQueryArg(query, s.substr(6), out) && !out->empty();
  if (part.path_regex) {
    re2::StringPiece capture;
    if (!RE2::PartialMatch(re2::StringPiece(path.data(), path.size()), *part.path_regex, &capture))
      return false;
    *out = std::string_view(capture.data(), capture.size());
    return !out->empty();
  }
  return false;
}

bool LimitSet::keyFor(const LimitRuleConfig& rule, const LimitRequestView& req, uint64_t* key,
                      uint64_t* item_hash) {
  uint64_t h = 0x5b1ce;
  if (item_hash) *item_hash = 0;
  for (const auto& part : rule.key) {
    switch (part.kind) {
      case LimitKeyKind::kIp: {
        IpAddress ip = *req.client_ip;
        if (!ip.v4) {
          // Group IPv6 clients by prefix: one host usually owns a whole /64.
          for (int i = 0; i < 16; i++) {
            int keep = rule.ipv6_prefix - i * 8;
            if (keep >= 8) continue;
            ip.bytes[i] &= keep <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - keep));
          }
        }
        h = hash64(std::string_view(reinterpret_cast<const char*>(ip.bytes.data()), 16), h);
        break;
      }
      case LimitKeyKind::kUserAgent:
        h = mix64(h ^ (userAgentKey(req.headers->getOr("user-agent")) + 0x9e3779b97f4a7c15ULL));
        break;
      case LimitKeyKind::kRoute:
        h = hash64(req.route, h);
        break;
      case LimitKeyKind::kGlobal:
        h = hash64("*", h);
        break;
      case LimitKeyKind::kUpstream:
        h = hash64(req.upstream, h);
        break;
      default: {
        std::string_view v;
        if (!sourceValue(part, req, &v)) {
          if (rule.skip_missing) return false;
          v = rule.fallback_key;
        } else if (item_hash && part.kind == LimitKeyKind::kItem) {
          *item_hash = hash64(v);
        }
        // Oversized values are hashed like any other: nothing of the key is stored.
        h = hash64(v, h);
        break;
      }
    }
  }
  *key = h;
  return true;
}

}  // namespace sluice
