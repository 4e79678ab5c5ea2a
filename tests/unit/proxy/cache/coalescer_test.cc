#include "proxy/cache/coalescer.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "proxy/cache/cache_policy.h"
#include "proxy/cache/micro_cache.h"

namespace sluice::cache {
namespace {

CacheKey keyOf(std::string_view target, std::string vary = "") {
  CacheKeySpec spec;
  CacheKey k;
  HeaderMap none;
  buildCacheKey(spec, CacheRequestView{"shop", target, &none}, &k);
  k.vary = std::move(vary);
  return k;
}

CachedResponsePtr response(std::string body) {
  HeaderMap h;
  return CachedResponse::make(200, h, std::move(body), 0, kSeconds, 0, "");
}

// Records every delivery; the proxy's waiter would post to its loop instead.
struct RecordingWaiter : CacheWaiter {
  std::atomic<int> calls{0};
  FillOutcome outcome = FillOutcome::kFailed;
  CachedResponsePtr response;
  void onFilled(const FillResult& r) override {
    outcome = r.outcome;
    response = r.response;
    calls.fetch_add(1, std::memory_order_release);
  }
};

TEST_CASE("coalescer: first miss leads, later ones wait and get the same response", "[cache]") {
  Coalescer c;
  auto k = keyOf("/items/1");
  RecordingWaiter w1, w2;
  auto lead = c.join(k, nullptr);
  REQUIRE(lead.role == JoinRole::kLeader);
  auto j1 = c.join(k, &w1);
  auto j2 = c.join(k, &w2);
  REQUIRE(j1.role == JoinRole::kWaiter);
  REQUIRE(j2.role == JoinRole::kWaiter);
  CHECK(c.stats().in_flight == 1);
  auto r = response("body");
  lead.lease.publish(r);
  CHECK(w1.calls == 1);
  CHECK(w2.calls == 1);
  CHECK(w1.outcome == FillOutcome::kFilled);
  CHECK(w1.response == r);
  CHECK(w2.response == r);
  CHECK_FALSE(lead.lease.active());
  CHECK_FALSE(j1.ticket.cancel());  // already delivered
  CHECK(w1.calls == 1);
  // The flight is over: the next miss leads again.
  CHECK(c.join(k, nullptr).role == JoinRole::kLeader);
  auto s = c.stats();
  CHECK(s.leaders == 2);
  CHECK(s.waiters == 2);
  CHECK(s.coalesced == 2);
  CHECK(s.in_flight == 0);  // the second lease was dropped at the end of the statement
}

TEST_CASE("coalescer: different keys and different vary values never share a flight", "[cache]") {
  Coalescer c;
  auto a = c.join(keyOf("/a"), nullptr);
  auto b = c.join(keyOf("/b"), nullptr);
  auto gz = c.join(keyOf("/a", "accept-encoding=gzip\n"), nullptr);
  CHECK(a.role == JoinRole::kLeader);
  CHECK(b.role == JoinRole::kLeader);
  CHECK(gz.role == JoinRole::kLeader);
  auto forged = keyOf("/z");
  forged.hash = keyOf("/a").hash;  // a 64-bit collision goes alone, never merges
  RecordingWaiter w;
  CHECK(c.join(forged, &w).role == JoinRole::kNoFlight);
}

TEST_CASE("coalescer: a leader that fails or goes away releases its waiters", "[cache]") {
  Coalescer c;
  auto k = keyOf("/p");
  RecordingWaiter w1, w2;
  JoinResult w1j, w2j;
  {
    auto lead = c.join(k, nullptr);
    w1j = c.join(k, &w1);
    lead.lease.fail();
    CHECK(w1.calls == 1);
    CHECK(w1.outcome == FillOutcome::kFailed);
    CHECK(w1.response == nullptr);
  }
  {
    auto lead = c.join(k, nullptr);
    REQUIRE(lead.role == JoinRole::kLeader);
    w2j = c.join(k, &w2);
    // The leader's exchange is destroyed without publishing (client gone, bug, timeout).
  }
  CHECK(w2.calls == 1);
  CHECK(w2.outcome == FillOutcome::kFailed);
  CHECK(c.stats().in_flight == 0);
  CHECK(c.stats().released == 2);
}

TEST_CASE("coalescer: an uncacheable leader response releases waiters to go upstream", "[cache]") {
  Coalescer c;
  auto k = keyOf("/me");
  RecordingWaiter w;
  auto lead = c.join(k, nullptr);
  auto wj = c.join(k, &w);
  lead.lease.releaseUncacheable();
  CHECK(w.calls == 1);
  CHECK(w.outcome == FillOutcome::kUncacheable);
  CHECK(w.response == nullptr);  // the private response is never handed out
  lead.lease.publish(response("late"));  // a second end is a no-op
  CHECK(w.calls == 1);
}

TEST_CASE("coalescer: Set-Cookie leader response is never served to another member", "[cache]") {
  // The proxy's path on a leader's response: decideStore, then publish or release.
  CachePolicy policy;
  CacheKeySpec spec;  // no member cookie in the key
  spec.normalize();
  HeaderMap req_a, req_b;
  req_a.add("Cookie", "member=1");
  req_b.add("Cookie", "member=2");
  CacheKey ka, kb;
  buildCacheKey(spec, CacheRequestView{"shop", "/cart-count", &req_a}, &ka);
  buildCacheKey(spec, CacheRequestView{"shop", "/cart-count", &req_b}, &kb);
  REQUIRE(ka.canonical == kb.canonical);  // same key: only the policy protects member 2

  MicroCache cache;
  RecordingWaiter member_b;
  auto a = cache.lookupOrJoin(ka, 0, nullptr);
  REQUIRE(a.join.role == JoinRole::kLeader);
  auto b = cache.lookupOrJoin(kb, 0, &member_b);
  REQUIRE(b.join.role == JoinRole::kWaiter);

  HeaderMap upstream;
  upstream.add("Set-Cookie", "session=member-1-secret");
  auto d = decideStore(policy, spec, ka, classifyRequest(policy, "GET", req_a), 200, upstream, 3);
  REQUIRE_FALSE(d.store);
  a.join.lease.releaseUncacheable();
  CHECK(member_b.outcome == FillOutcome::kUncacheable);
  CHECK(member_b.response == nullptr);
  CHECK(cache.lookup(kb, 1).state == CacheState::kMiss);
  CHECK(cache.lookupStale(kb, 1) == nullptr);

  // With allow_set_cookie and the member cookie in the key, each member has its own entry.
  policy.allow_set_cookie = true;
  spec.cookies = {"member"};
  spec.normalize();
  buildCacheKey(spec, CacheRequestView{"shop", "/cart-count", &req_a}, &ka);
  buildCacheKey(spec, CacheRequestView{"shop", "/cart-count", &req_b}, &kb);
  d = decideStore(policy, spec, ka, classifyRequest(policy, "GET", req_a), 200, upstream, 3);
  REQUIRE(d.store);
  cache.store(ka, CachedResponse::make(200, upstream, "a", 0, d.fresh_for, d.stale_for, ka.vary), 0);
  CHECK(cache.lookup(ka, 1).state == CacheState::kFresh);
  CHECK(cache.lookup(kb, 1).state == CacheState::kMiss);
  CHECK(cache.lookupStale(kb, 1) == nullptr);
}

TEST_CASE("coalescer: a cancelled waiter is never called", "[cache]") {
  Coalescer c;
  auto k = keyOf("/p");
  RecordingWaiter w1, w2, w3;
  auto lead = c.join(k, nullptr);
  auto j1 = c.join(k, &w1);
  auto j2 = c.join(k, &w2);
  auto j3 = c.join(k, &w3);
  CHECK(j1.ticket.cancel());        // timer fired: go upstream yourself
  CHECK_FALSE(j1.ticket.cancel());  // idempotent
  { JoinResult gone = std::move(j3); }  // the ticket's destructor cancels (client went away)
  lead.lease.publish(response("x"));
  CHECK(w1.calls == 0);
  CHECK(w2.calls == 1);
  CHECK(w3.calls == 0);
  CHECK(c.stats().cancelled == 2);
  CHECK(c.stats().coalesced == 1);
}

TEST_CASE("coalescer: wait-only and lead-only modes", "[cache]") {
  Coalescer c;
  auto k = keyOf("/p");
  RecordingWaiter head;
  CHECK(c.join(k, &head, JoinMode::kWaitOnly).role == JoinRole::kNoFlight);
  auto lead = c.join(k, nullptr, JoinMode::kLeadOnly);
  REQUIRE(lead.role == JoinRole::kLeader);
  CHECK(c.join(k, nullptr, JoinMode::kLeadOnly).role == JoinRole::kBusy);
  auto hj = c.join(k, &head, JoinMode::kWaitOnly);
  CHECK(hj.role == JoinRole::kWaiter);
  lead.lease.publish(response("x"));
  CHECK(head.calls == 1);
}

TEST_CASE("coalescer: cancel racing a delivery returns only after onFilled returned", "[cache]") {
  // The waiter's onFilled is slow; cancel on another thread must block until it is done, and
  // must report "delivered".
  struct SlowWaiter : CacheWaiter {
    std::atomic<bool> entered{false};
    std::atomic<bool> finished{false};
    void onFilled(const FillResult&) override {
      entered = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      finished = true;
    }
  };
  Coalescer c;
  auto k = keyOf("/slow");
  SlowWaiter w;
  auto lead = c.join(k, nullptr);
  auto wj = c.join(k, &w);
  std::thread leader([&] { lead.lease.publish(response("x")); });
  while (!w.entered) std::this_thread::yield();
  bool removed = wj.ticket.cancel();
  CHECK_FALSE(removed);
  CHECK(w.finished);
  leader.join();
}

TEST_CASE("coalescer: a waiter may cancel itself from inside onFilled without deadlock", "[cache]") {
  struct SelfCancel : CacheWaiter {
    WaitTicket* ticket = nullptr;
    int calls = 0;
    bool cancel_result = true;
    void onFilled(const FillResult&) override {
      calls++;
      cancel_result = ticket->cancel();
    }
  };
  Coalescer c;
  auto k = keyOf("/self");
  SelfCancel w;
  auto lead = c.join(k, nullptr);
  auto wj = c.join(k, &w);
  w.ticket = &wj.ticket;
  lead.lease.publish(response("x"));
  CHECK(w.calls == 1);
  CHECK_FALSE(w.cancel_result);
}

TEST_CASE("coalescer: 1,000 concurrent joins on one cold key make exactly one leader", "[cache]") {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 125;
  MicroCache cache;
  auto k = keyOf("/hot/item");
  std::vector<std::unique_ptr<RecordingWaiter>> waiters(kThreads * kPerThread);
  for (auto& w : waiters) w = std::make_unique<RecordingWaiter>();
  std::vector<CacheAccess> results(kThreads * kPerThread);
  std::atomic<int> leaders{0};
  std::atomic<int> ready{0};
  std::atomic<int> joined{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      for (int i = 0; i < kPerThread; i++) {
        int idx = t * kPerThread + i;
        results[idx] = cache.lookupOrJoin(k, 0, waiters[idx].get());
        if (results[idx].join.role == JoinRole::kLeader) leaders.fetch_add(1);
        joined.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(joined == 1000);
  REQUIRE(leaders == 1);
  int leader_idx = -1;
  for (int i = 0; i < 1000; i++) {
    if (results[i].join.role == JoinRole::kLeader) leader_idx = i;
    else REQUIRE(results[i].join.role == JoinRole::kWaiter);
  }
  auto r = response("the page");
  cache.store(k, r, 0);
  results[leader_idx].join.lease.publish(r);
  for (int i = 0; i < 1000; i++) {
    if (i == leader_idx) continue;
    REQUIRE(waiters[i]->calls.load(std::memory_order_acquire) == 1);
    REQUIRE(waiters[i]->response == r);
  }
  auto s = cache.stats();
  CHECK(s.coalescing.leaders == 1);
  CHECK(s.coalescing.coalesced == 999);
}

TEST_CASE("coalescer: joins, publishes and cancels from many threads, each waiter called at most once", "[cache]") {
  // Rounds of: one leader thread publishing while other threads join and some cancel; every
  // waiter is either delivered once or cancelled (true), never both, never twice.
  Coalescer c;
  constexpr int kThreads = 4;
  constexpr int kRounds = 300;
  std::atomic<int> double_calls{0};
  std::atomic<int> lost{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; round++) {
        auto k = keyOf("/k/" + std::to_string(round % 7));
        auto w = std::make_unique<RecordingWaiter>();
        auto j = c.join(k, w.get());
        if (j.role == JoinRole::kLeader) {
          std::this_thread::yield();
          if (round % 3 == 0) j.lease.fail();
          else j.lease.publish(response("r"));
          continue;
        }
        if (j.role != JoinRole::kWaiter) lost++;  // Catch assertions are not thread-safe
        bool cancelled = false;
        if ((round + t) % 2 == 0) {
          cancelled = j.ticket.cancel();
        } else {
          // Bounded wait, then cancel: the proxy's timer.
          for (int spin = 0; spin < 2000 && w->calls.load() == 0; spin++) std::this_thread::yield();
          cancelled = j.ticket.cancel();
        }
        int calls = w->calls.load(std::memory_order_acquire);
        if (calls > 1) double_calls++;
        if (cancelled && calls != 0) double_calls++;
        if (!cancelled && calls != 1) lost++;
        // w is freed here: a late call would be a use-after-free (ASan/TSan builds catch it).
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(double_calls == 0);
  CHECK(lost == 0);
  CHECK(c.stats().in_flight == 0);
}

}  // namespace
}  // namespace sluice::cache
