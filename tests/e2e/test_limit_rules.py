"""Limit features beyond the basic dimensions (docs/limiting.md): hot-item detection with hot-only
rules and GET /limits/hot-items, per-item limits, JWT member ids (HS256 verified), circuit
breakers (open -> degrade -> half-open probe -> closed), the redirect action, the legacy
RateLimit-* headers, and the per-rule counters in GET /limits and /metrics surviving a reload."""
import base64
import hashlib
import hmac
import json
import re
import time
import unittest

from harness import (CannedUpstream, ProxyTestCase, admin_json, header, admin_reload, default_config, free_port, http_get,
                     upstream_yaml, wait_until, write_config)
from test_limits import LimitsTestCase, log_lines_for, route, rules_yaml


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims, secret):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64url(sig))


def metric(text, name, **labels):
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        m = re.match(r'^%s(?:\{(.*)\})? (\S+)$' % re.escape(name), line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


class HotItemsTest(LimitsTestCase):
    def test_hot_only_rule_applies_once_the_item_turns_hot(self):
        extra = rules_yaml("id: hot-item, key: item, rate: 1r/m, nodelay: true, only_hot: true")
        extra += "  hot_items: {window: 2s, sub_windows: 4, hot_rate: 20}\n"
        self.start(route("all", ["hot-item"]), extra)
        # Cold items are not limited by a hot-only rule at all.
        self.assertEqual(self.statuses(3, "/api/items/8"), [200, 200, 200])
        # 100 requests in well under a second: far above 20 r/s over the 2 s window.
        statuses = self.statuses(100, "/api/items/7")
        self.assertIn(429, statuses)
        first_429 = statuses.index(429)
        self.assertGreater(first_429, 0)  # it passed while it was still cold
        self.assertTrue(all(s == 429 for s in statuses[first_429 + 1:]), statuses)
        self.assertEqual(self.status("/api/items/8"), 200)
        hot = admin_json(self.s, "/limits/hot-items")
        self.assertTrue(hot["enabled"])
        self.assertEqual([h["item"] for h in hot["hot"]], ["7"])
        self.assertGreaterEqual(hot["hot"][0]["rate"], 20)
        # Once the window slides past the burst the item cools down and passes again.
        wait_until(lambda: not admin_json(self.s, "/limits/hot-items")["hot"], timeout=6,
                   message="item 7 cooling down")
        self.assertEqual(self.status("/api/items/7"), 200)

    def test_hot_items_endpoint_without_detection(self):
        self.start(route("all", []), "")
        self.assertEqual(admin_json(self.s, "/limits/hot-items"),
                         {"enabled": False, "hot": [], "candidates": []})


class ItemLimitsTest(LimitsTestCase):
    def test_items_listed_get_their_own_limit(self):
        self.start(route("all", ["per-item"]),
                   rules_yaml('id: per-item, key: item, rate: 1r/m, nodelay: true, '
                              'items: {"42": {rate: 1r/m, burst: 3}}'))
        self.assertEqual(self.statuses(2, "/api/items/1"), [200, 429])
        self.assertEqual(self.statuses(5, "/api/items/42"), [200, 200, 200, 200, 429])
        self.assertEqual(self.statuses(2, "/api/items/2/price"), [200, 429])


class JwtMemberTest(LimitsTestCase):
    def test_member_from_a_verified_jwt_claim(self):
        extra = "jwt:\n  hs256_secret: e2e-secret\n" + rules_yaml(
            'id: per-member, key: "member=jwt:sub", rate: 1r/m, nodelay: true, '
            'missing_key: "fallback:anonymous"')
        self.start(route("all", ["per-member"]), extra)
        now = int(time.time())
        alice = {"Authorization": "Bearer " + hs256({"sub": "alice", "exp": now + 600}, "e2e-secret")}
        bob = {"Authorization": "Bearer " + hs256({"sub": "bob", "exp": now + 600}, "e2e-secret")}
        self.assertEqual(self.status("/api/items/1", headers=alice), 200)
        self.assertEqual(self.status("/api/items/1", headers=alice), 429)
        self.assertEqual(self.status("/api/items/1", headers=bob), 200)
        # A forged signature, an expired token and no token at all are one anonymous client:
        # a scalper cannot mint member ids to get fresh buckets.
        forged = {"Authorization": "Bearer " + hs256({"sub": "carol"}, "guessed")}
        expired = {"Authorization": "Bearer " + hs256({"sub": "dave", "exp": now - 3600}, "e2e-secret")}
        self.assertEqual(self.status("/api/items/1", headers=forged), 200)
        self.assertEqual(self.status("/api/items/1", headers=expired), 429)
        self.assertEqual(self.status("/api/items/1"), 429)
        self.assertEqual(self.status("/api/items/1", headers={"Authorization": "Bearer garbage"}), 429)


class BreakerTest(LimitsTestCase):
    def test_breaker_opens_on_errors_degrades_then_probes_and_closes(self):
        rule = ('id: api-breaker, key: route, algorithm: circuit_breaker, threshold: 0.5, '
                'min_requests: 4, window: 10s, cooldown: 1s, action: degrade, '
                'body: "{\\"degraded\\":true}"')
        self.start(route("api", ["api-breaker"]), rules_yaml(rule))
        self.assertEqual(self.statuses(4, "/api/fail"), [500] * 4)
        # Open: answered at the edge, the upstream is not called.
        status, _, body = self.get("/api/items/1")
        self.assertEqual((status, json.loads(body)), (200, {"degraded": True}))
        self.assertEqual(self.get("/api/fail")[0], 200)
        time.sleep(1.2)
        # Half-open: one probe goes through; it succeeds, so the breaker closes.
        status, _, body = self.get("/api/items/1")
        self.assertEqual(status, 200)
        self.assertNotIn(b"degraded", body)
        self.assertEqual(self.statuses(3, "/api/items/2"), [200, 200, 200])
        self.assertEqual(self.get("/api/fail")[0], 500)
        degraded = log_lines_for(self.s, lambda l: l.get("limit", {}).get("action") == "degrade", count=2)
        self.assertEqual({l["limit"]["rule"] for l in degraded}, {"api-breaker"})

    def test_breaker_per_upstream_rejects_with_503_by_default(self):
        rule = ('id: pool-breaker, key: upstream, algorithm: circuit_breaker, threshold: 1.0, '
                'min_requests: 2, cooldown: 30s')
        self.start(route("api", ["pool-breaker"]), rules_yaml(rule))
        self.assertEqual(self.statuses(2, "/api/fail"), [500, 500])
        status, headers, body = self.get("/api/items/1")
        self.assertEqual(status, 503)
        self.assertEqual(header(headers, "retry-after"), "30")


class ResponsesTest(LimitsTestCase):
    def test_redirect_action(self):
        self.start(route("all", ["queue"]),
                   rules_yaml('id: queue, key: ip, rate: 1r/m, nodelay: true, action: redirect, '
                              'location: "https://shop.example/queue?from=sale"'))
        self.assertEqual(self.status("/api/items/1"), 200)
        status, headers, _ = self.get("/api/items/1")
        self.assertEqual(status, 302)
        self.assertEqual(header(headers, "location"), "https://shop.example/queue?from=sale")

    def test_legacy_ratelimit_headers(self):
        self.start(route("all", ["per-ip"]),
                   rules_yaml("id: per-ip, key: ip, rate: 1r/m, burst: 2, nodelay: true, "
                              "rate_limit_headers: legacy"))
        self.assertEqual(self.statuses(3, "/"), [200, 200, 200])
        status, headers, _ = self.get("/")
        self.assertEqual(status, 429)
        self.assertEqual(header(headers, "ratelimit-limit"), "3")
        self.assertEqual(header(headers, "ratelimit-remaining"), "0")
        self.assertIn(int(header(headers, "ratelimit-reset")), range(175, 181))
        self.assertIsNone(header(headers, "ratelimit-policy"))


class CountersTest(LimitsTestCase):
    def scrape(self):
        status, _, body = http_get(self.s.admin_port, "/metrics")
        self.assertEqual(status, 200)
        return body.decode()

    def test_limits_endpoint_and_metrics_count_across_a_reload(self):
        self.demo = self.start_demo()
        self.ups = upstream_yaml("storefront", [self.demo.address])
        port, admin_port = free_port(), free_port()
        rules = rules_yaml("id: per-ip, key: ip, rate: 1r/m, nodelay: true",
                           "id: shadow-ua, key: user_agent, rate: 1r/m, nodelay: true, action: shadow")
        config = default_config(port, admin_port, self.ups, route("all", ["per-ip", "shadow-ua"]), rules)
        self.s = self.start_sluice_text(config, port, admin_port)
        self.assertEqual(self.statuses(3, "/"), [200, 429, 429])
        rules_json = {r["id"]: r for r in admin_json(self.s, "/limits")["rules"]}
        self.assertEqual(rules_json["per-ip"]["decisions"]["allowed"], 1)
        self.assertEqual(rules_json["per-ip"]["decisions"]["rejected"], 2)
        self.assertEqual(rules_json["per-ip"]["live_keys"], 1)
        self.assertEqual(rules_json["per-ip"]["algorithm"], "leaky_bucket")
        self.assertEqual(rules_json["shadow-ua"]["action"], "shadow")
        # The shadow rule only saw the request the IP rule let through.
        self.assertEqual(rules_json["shadow-ua"]["decisions"]["allowed"], 1)
        text = self.scrape()
        self.assertEqual(metric(text, "sluice_limit_decisions_total", rule="per-ip", action="rejected"), 2)
        self.assertEqual(metric(text, "sluice_limit_live_keys", rule="per-ip"), 1)

        write_config(self.s, config.replace("id: per-ip, key: ip, rate: 1r/m", "id: per-ip, key: ip, rate: 2r/m"))
        code, body = admin_reload(self.s)
        self.assertEqual(code, 200, body)
        self.assertEqual(self.status("/"), 429)
        text = self.scrape()
        # Counters are cumulative over the process, not per generation.
        self.assertEqual(metric(text, "sluice_limit_decisions_total", rule="per-ip", action="rejected"), 3)
        self.assertEqual(admin_json(self.s, "/limits")["rules"][0]["decisions"]["rejected"], 3)


class PoolGateTest(ProxyTestCase):
    def test_max_active_refuses_the_request_over_the_cap_with_503(self):
        demo = self.start_demo(threads=2)
        s = self.start_sluice(upstream_yaml("storefront", [demo.address], "max_active: 1\n"))
        import threading
        results = []
        slow = threading.Thread(target=lambda: results.append(http_get(s.port, "/api/slow?ms=800")[0]))
        slow.start()
        wait_until(lambda: metric(http_get(s.admin_port, "/metrics")[2].decode(),
                                  "sluice_upstream_in_flight", upstream="storefront") == 1,
                   message="the slow request in flight")
        status, headers, body = http_get(s.port, "/api/items/1")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["reason"], "max_active")
        self.assertEqual(header(headers, "retry-after"), "1")
        slow.join()
        self.assertEqual(results, [200])
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 200)
        text = http_get(s.admin_port, "/metrics")[2].decode()
        self.assertEqual(metric(text, "sluice_upstream_refused_total", upstream="storefront",
                                reason="max_active"), 1)

    def routes(self):
        return ("- name: low\n  match: { path: { prefix: /low } }\n  upstream: storefront\n  priority: low\n"
                "- name: crit\n  match: { path: { prefix: /crit } }\n  upstream: storefront\n  priority: critical\n"
                "- name: normal\n  match: { path: { prefix: / } }\n  upstream: storefront\n")

    def test_saturation_reported_by_responses_sheds_low_priority_first(self):
        busy = CannedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Busy-Threads: 90\r\n\r\nok")
        self.addCleanup(busy.stop)
        s = self.start_sluice(upstream_yaml("storefront", [busy.address],
                                            "saturation: {header: X-Busy-Threads, capacity: 100, "
                                            "shed_low: 0.8, shed_normal: 0.95, hold: 5s}\n"),
                              self.routes())
        self.assertEqual(http_get(s.port, "/low/1")[0], 200)  # no report yet
        status, _, body = http_get(s.port, "/low/2")            # 90 of 100 busy: low goes
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["reason"], "saturated")
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 200)  # normal stays under 0.95
        self.assertEqual(http_get(s.port, "/crit/1")[0], 200)
        text = http_get(s.admin_port, "/metrics")[2].decode()
        self.assertEqual(metric(text, "sluice_upstream_saturation_ratio", upstream="storefront"), 0.9)

    def test_saturation_from_health_probes_alone(self):
        busy = CannedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Busy-Threads: 99\r\n\r\nok")
        self.addCleanup(busy.stop)
        s = self.start_sluice(upstream_yaml("storefront", [busy.address],
                                            "saturation: {header: x-busy-threads, capacity: 100}\n"
                                            "health_check: {path: /status, interval: 100ms}\n"),
                              self.routes())
        wait_until(lambda: metric(http_get(s.admin_port, "/metrics")[2].decode(),
                                  "sluice_upstream_saturation_ratio", upstream="storefront") == 0.99,
                   message="a probe's saturation report")
        self.assertEqual(http_get(s.port, "/low/1")[0], 503)
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 503)  # 0.99 >= 0.95: normal too
        self.assertEqual(http_get(s.port, "/crit/1")[0], 200)

    def test_adaptive_concurrency_starts_at_its_floor(self):
        demo = self.start_demo()
        s = self.start_sluice(upstream_yaml("storefront", [demo.address],
                                            "adaptive_concurrency: {floor: 5, ceiling: 50}\n"))
        for i in range(20):
            self.assertEqual(http_get(s.port, "/api/items/%d" % i)[0], 200)
        text = http_get(s.admin_port, "/metrics")[2].decode()
        limit = metric(text, "sluice_upstream_adaptive_limit", upstream="storefront")
        self.assertIsNotNone(limit)
        self.assertGreaterEqual(limit, 5)
        self.assertLessEqual(limit, 50)


if __name__ == "__main__":
    unittest.main()
