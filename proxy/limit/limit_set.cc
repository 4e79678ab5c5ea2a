#include "proxy/limit/limit_set.h"

#include <re2/re2.h>

#include "core/hash.h"
#include "core/strings.h"
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

// The value of a "header:X" / "cookie:X" / "query:X" / "path:RE" source; false if absent.
bool sourceValue(const LimitKeyPart& part, const LimitRequestView& req, std::string_view* out) {
  const std::string& s = part.source;
  if (s.rfind("header:", 0) == 0) return req.headers->get(std::string_view(s).substr(7), out) && !out->empty();
  if (s.rfind("cookie:", 0) == 0) return findCookie(*req.headers, std::string_view(s).substr(7), out) && !out->empty();
  std::string_view path, query;
  splitTarget(req.target, &path, &query);
  if (s.rfind("query:", 0) == 0) return findQueryArg(query, std::string_view(s).substr(6), out) && !out->empty();
  if (part.path_regex) {
    re2::StringPiece capture;
    if (!RE2::PartialMatch(re2::StringPiece(path.data(), path.size()), *part.path_regex, &capture))
      return false;
    *out = std::string_view(capture.data(), capture.size());
    return !out->empty();
  }
  return false;
}

}  // namespace

void normaliseUserAgent(std::string_view ua, std::string* out) {
  out->clear();
  out->reserve(ua.size());
  bool in_digits = false;
  for (char c : ua) {
    if (c >= '0' && c <= '9') {
      if (!in_digits) out->push_back('#');
      in_digits = true;
      continue;
    }
    in_digits = false;
    out->push_back(asciiLower(c));
  }
}

LimitSet::LimitSet(const Config& config, const LimitSet* previous) {
  for (const auto& rc : config.limit_rules) {
    auto rt = std::make_unique<LimitRuleRuntime>();
    rt->config = &rc;
    const LimitRuleRuntime* old = findPrevious(previous, rc);
    switch (rc.algorithm) {
      case LimitAlgorithm::kLeakyBucket: {
        auto params = gcraParams(rc);
        rt->gcra_table = limiter::GcraLimiter::reuseOrCreateTable(
            old ? old->gcra_table : nullptr, params, rc.memory);
        rt->rate = std::make_shared<limiter::GcraLimiter>(params, rt->gcra_table);
        break;
      }
      case LimitAlgorithm::kSlidingWindow: {
        auto params = windowParams(rc);
        rt->window_table = limiter::SlidingWindowLimiter::reuseOrCreateTable(
            old ? old->window_table : nullptr, old ? old->config->window : 0, params, rc.memory);
        rt->rate = std::make_shared<limiter::SlidingWindowLimiter>(params, rt->window_table);
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
    }
    rules_.push_back(std::move(rt));
  }
}

bool LimitSet::keyFor(const LimitRuleConfig& rule, const LimitRequestView& req, uint64_t* key) {
  uint64_t h = 0x5b1ce;
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
      case LimitKeyKind::kUserAgent: {
        thread_local std::string norm;
        normaliseUserAgent(req.headers->getOr("user-agent"), &norm);
        h = hash64(norm, h);
        break;
      }
      case LimitKeyKind::kRoute:
        h = hash64(req.route, h);
        break;
      case LimitKeyKind::kGlobal:
        h = hash64("*", h);
        break;
      default: {
        std::string_view v;
        if (!sourceValue(part, req, &v)) {
          if (rule.skip_missing) return false;
          v = rule.fallback_key;
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
