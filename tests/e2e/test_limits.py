"""The limit phase end to end (docs/limiting.md "Wiring"): every key dimension (IP with trusted
X-Forwarded-For, User-Agent, member cookie with skip / fallback, item from the path, composite
member + item, route, header), concurrency slots (released when the request ends, on a client
abort and on an upstream timeout), every action (reject with Retry-After and RateLimit headers,
delay, max_delay, degrade without calling the upstream, shadow), uncharge on reject,
count_rejected, state across reloads and the access-log fields."""
import hashlib
import json
import socket
import struct
import threading
import time
import unittest

from harness import (ProxyTestCase, RawClient, admin_reload, default_config, demo_counter,
                     free_port, header, http_get, upstream_yaml, wait_until, write_config)


def rules_yaml(*rules, trusted=False):
    """The top-level `limits:` section (plus trusted_proxies for X-Forwarded-For tests); each
    rule is the inside of a YAML flow mapping."""
    s = "trusted_proxies: [127.0.0.1/32]\n" if trusted else ""
    s += "limits:\n  rules:\n"
    for r in rules:
        s += "    - {%s}\n" % r
    return s


def route(name, limits, prefix=None, regex=None, exact=None, extra=""):
    if regex:
        path = "{ regex: \"%s\" }" % regex
    elif exact:
        path = "{ exact: %s }" % exact
    else:
        path = "{ prefix: %s }" % (prefix or "/")
    s = "- name: %s\n  match:\n    path: %s\n  upstream: storefront\n" % (name, path)
    if limits:
        s += "  limits: [%s]\n" % ", ".join(limits)
    return s + extra


def log_lines_for(sluice, pred, count=1, timeout=3.0):
    """Waits for at least `count` access-log lines matching `pred` (the log flushes every 100 ms)."""
    return wait_until(lambda: (lambda ls: ls if len(ls) >= count else None)(
        [l for l in sluice.access_log() if pred(l)]), timeout=timeout,
        message="%d access-log lines" % count)


class LimitsTestCase(ProxyTestCase):
    def start(self, routes, extra, demo_threads=1):
        self.demo = self.start_demo(threads=demo_threads)
        self.ups = upstream_yaml("storefront", [self.demo.address])
        self.s = self.start_sluice(self.ups, routes, extra)
        return self.s

    def get(self, path, ip=None, ua=None, cookie=None, method="GET", headers=None, **kw):
        h = dict(headers or {})
        if ip:
            h["X-Forwarded-For"] = ip
        if ua:
            h["User-Agent"] = ua
        if cookie:
            h["Cookie"] = cookie
        body = "" if method == "POST" else None
        return http_get(self.s.port, path, headers=h, method=method, body=body, **kw)

    def status(self, path, **kw):
        return self.get(path, **kw)[0]

    def statuses(self, n, path, **kw):
        return [self.status(path, **kw) for _ in range(n)]


class DimensionsTest(LimitsTestCase):
    def test_ip_burst_then_429_with_headers_and_request_id(self):
        s = self.start(route("all", ["per-ip"]),
                       rules_yaml("id: per-ip, key: ip, rate: 1r/m, burst: 2, nodelay: true"))
        self.assertEqual(self.statuses(3, "/api/items/1"), [200, 200, 200])
        status, hdrs, body = self.get("/api/items/1")
        self.assertEqual(status, 429)
        # Three requests spent at 1 per minute: the next one fits in a minute.
        retry = int(header(hdrs, "Retry-After"))
        self.assertTrue(55 <= retry <= 60, retry)
        self.assertEqual(header(hdrs, "RateLimit-Policy"), '"per-ip";q=3;w=180')
        rl = header(hdrs, "RateLimit")
        self.assertTrue(rl.startswith('"per-ip";r=0;t='), rl)
        self.assertTrue(175 <= int(rl.rsplit("=", 1)[1]) <= 180, rl)
        self.assertEqual(header(hdrs, "Content-Type"), "application/json")
        doc = json.loads(body)
        self.assertEqual(doc["rule"], "per-ip")
        self.assertEqual(doc["request_id"], header(hdrs, "X-Request-Id"))
        self.assertEqual(len(doc["request_id"]), 32)
        # The access log names the rule and the action; allowed lines carry no decision.
        lines = log_lines_for(s, lambda l: l.get("status") == 429)
        self.assertEqual(lines[0]["limit"], {"rule": "per-ip", "action": "reject"})
        self.assertEqual(lines[0]["request_id"], doc["request_id"])
        self.assertTrue(all("limit" not in l for l in s.access_log() if l["status"] == 200))

    def test_trusted_forwarded_for_clients_get_their_own_buckets(self):
        self.start(route("all", ["per-ip"]),
                   rules_yaml("id: per-ip, key: ip, rate: 1r/m, nodelay: true", trusted=True))
        self.assertEqual(self.statuses(2, "/", ip="203.0.113.1"), [200, 429])
        self.assertEqual(self.statuses(2, "/", ip="203.0.113.2"), [200, 429])
        # The proxy itself (the TCP peer) is yet another client.
        self.assertEqual(self.statuses(2, "/"), [200, 429])

    def test_untrusted_forwarded_for_is_ignored(self):
        self.start(route("all", ["per-ip"]),
                   rules_yaml("id: per-ip, key: ip, rate: 1r/m, nodelay: true"))
        self.assertEqual(self.status("/", ip="203.0.113.1"), 200)
        self.assertEqual(self.status("/", ip="203.0.113.2"), 429)  # all 127.0.0.1

    def test_user_agent_versions_share_a_bucket(self):
        self.start(route("all", ["ua"]),
                   rules_yaml("id: ua, key: user_agent, rate: 1r/m, burst: 1, nodelay: true"))
        self.assertEqual(self.status("/", ua="Scalper/1.0 (X11)"), 200)
        self.assertEqual(self.status("/", ua="Scalper/2.17 (X64)"), 200)
        self.assertEqual(self.status("/", ua="SCALPER/3.99 (x86)"), 429)
        self.assertEqual(self.status("/", ua="Mozilla/5.0 Firefox/121.0"), 200)

    def test_member_cookie_separate_members_skip_or_fallback_when_missing(self):
        routes = (route("skip", ["member-skip"], prefix="/api/items/") +
                  route("fallback", ["member-fb"], prefix="/item/"))
        self.start(routes, rules_yaml(
            "id: member-skip, key: member, rate: 1r/m, nodelay: true",
            "id: member-fb, key: member, rate: 1r/m, nodelay: true, missing_key: \"fallback:anon\""))
        self.assertEqual(self.statuses(2, "/api/items/1", cookie="member=alice"), [200, 429])
        self.assertEqual(self.status("/api/items/1", cookie="a=b; member=bob"), 200)
        # No member cookie: the rule is skipped, nothing limits these.
        self.assertEqual(self.statuses(4, "/api/items/1"), [200] * 4)
        self.assertEqual(self.statuses(2, "/api/items/1", cookie="session=x"), [200, 200])
        # With a fallback key every anonymous request shares one bucket, members keep theirs.
        self.assertEqual(self.status("/item/1"), 200)
        self.assertEqual(self.status("/item/1", cookie="session=x"), 429)
        self.assertEqual(self.status("/item/1", cookie="member=alice"), 200)

    def test_items_from_the_path_and_composite_member_item(self):
        routes = (route("checkout", ["member-item"], regex="^/api/items/[^/]+/checkout$") +
                  route("items", ["per-item"], prefix="/api/items/"))
        self.start(routes, rules_yaml(
            "id: per-item, key: item, rate: 1r/m, nodelay: true",
            "id: member-item, key: [member, item], rate: 1r/m, nodelay: true"))
        self.assertEqual(self.statuses(2, "/api/items/1"), [200, 429])
        self.assertEqual(self.status("/api/items/1/price"), 429)  # same item, same bucket
        self.assertEqual(self.status("/api/items/2"), 200)
        # Composite: one checkout per member per item.
        co = "/api/items/%s/checkout"
        self.assertEqual(self.status(co % "7", method="POST", cookie="member=alice"), 200)
        self.assertEqual(self.status(co % "7", method="POST", cookie="member=alice"), 429)
        self.assertEqual(self.status(co % "8", method="POST", cookie="member=alice"), 200)
        self.assertEqual(self.status(co % "7", method="POST", cookie="member=bob"), 200)
        # The item bucket of the other rule is another table: checkouts did not touch it.
        self.assertEqual(self.status("/api/items/7"), 200)

    def test_route_key_and_header_key(self):
        routes = (route("search", ["per-route"], prefix="/api/items/") +
                  route("pages", ["per-route", "api-key"], prefix="/"))
        self.start(routes, rules_yaml(
            "id: per-route, key: route, rate: 1r/m, burst: 2, nodelay: true",
            "id: api-key, key: \"header:X-Api-Key\", rate: 1r/m, nodelay: true", trusted=True))
        # One bucket per route, whoever calls.
        self.assertEqual(self.status("/api/items/1", ip="203.0.113.1"), 200)
        self.assertEqual(self.status("/api/items/1", ip="203.0.113.2"), 200)
        self.assertEqual(self.status("/api/items/1", ip="203.0.113.3"), 200)
        self.assertEqual(self.status("/api/items/1", ip="203.0.113.4"), 429)
        # The other route has its own bucket; its header rule: one per key, missing skipped.
        self.assertEqual(self.status("/", headers={"X-Api-Key": "k1"}), 200)
        self.assertEqual(self.status("/", headers={"X-Api-Key": "k1"}), 429)
        self.assertEqual(self.status("/", headers={"X-Api-Key": "k2"}), 200)
        # The api-key refusal gave back the route charge it had taken: k1, k2 and k3 passed.
        self.assertEqual(self.status("/", headers={"X-Api-Key": "k3"}), 200)
        status, hdrs, body = self.get("/", headers={"X-Api-Key": "k4"})
        self.assertEqual(status, 429)
        self.assertEqual(json.loads(body)["rule"], "per-route")


class ConcurrencyTest(LimitsTestCase):
    def setUp(self):
        super().setUp()
        routes = route("slow", ["active"], prefix="/api/slow", extra="  read_timeout: 400ms\n")
        self.start(routes, rules_yaml("id: active, key: route, algorithm: concurrency, max_active: 1"),
                   demo_threads=2)

    def in_background(self, path):
        out = {}

        def run():
            try:
                out["resp"] = self.get(path)
            except Exception as e:  # noqa: BLE001 - reported by the test
                out["error"] = e
        t = threading.Thread(target=run)
        t.start()
        return t, out

    def wait_in_flight(self):
        """Until the proxy holds the slot: a probe is refused. (A short pause first, so a probe
        cannot take the slot before the request under test arrives.)"""
        time.sleep(0.15)
        wait_until(lambda: self.status("/api/slow?ms=1") == 429, timeout=3.0,
                   message="the first request in flight")

    def test_second_concurrent_request_is_refused_then_the_slot_is_free(self):
        t, out = self.in_background("/api/slow?ms=300")
        self.wait_in_flight()
        status, hdrs, body = self.get("/api/slow?ms=1")
        self.assertEqual(status, 429)
        self.assertEqual(header(hdrs, "Retry-After"), "1")
        self.assertIsNone(header(hdrs, "RateLimit"))  # no quota to describe
        self.assertEqual(json.loads(body)["rule"], "active")
        t.join()
        self.assertEqual(out["resp"][0], 200)
        self.assertEqual(self.status("/api/slow?ms=1"), 200)
        self.assertEqual(self.status("/api/slow?ms=1"), 200)

    def test_slot_released_when_the_client_aborts(self):
        c = RawClient(self.s.port)
        c.send("GET /api/slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.wait_in_flight()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # reset mid-request
        wait_until(lambda: self.status("/api/slow?ms=1") == 200, timeout=2.0,
                   message="slot released after the client abort")

    def test_slot_released_on_upstream_timeout(self):
        t, out = self.in_background("/api/slow?ms=3000")
        self.wait_in_flight()
        t.join(timeout=5)
        self.assertEqual(out["resp"][0], 504)
        self.assertEqual(self.status("/api/slow?ms=1"), 200)

    def test_slot_released_on_upstream_timeout_with_keep_alive(self):
        # The client keeps its connection open after the 504: the slot must not wait for it.
        c = RawClient(self.s.port)
        try:
            c.send("GET /api/slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response()[0], 504)
            self.assertEqual(self.status("/api/slow?ms=1"), 200)
        finally:
            c.close()


class ActionsTest(LimitsTestCase):
    def concurrent(self, n, path, **kw):
        """n requests at once, each on its own connection: [(status, finished_at, response)]."""
        results = [None] * n
        start = threading.Barrier(n)

        def run(i):
            start.wait()
            resp = self.get(path, **kw)
            results[i] = (resp[0], time.monotonic(), resp)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def test_delay_spaces_requests_by_the_rate(self):
        s = self.start(route("all", ["spaced"]),
                       rules_yaml("id: spaced, key: ip, rate: 5r/s, burst: 10"))
        t0 = time.monotonic()
        results = self.concurrent(5, "/api/items/1")
        self.assertEqual([r[0] for r in results], [200] * 5)
        done = sorted(r[1] - t0 for r in results)
        # nginx limit_req without nodelay: one now, then one every 200 ms.
        self.assertLess(done[0], 0.15, done)
        for i in range(1, 5):
            self.assertAlmostEqual(done[i] - done[i - 1], 0.2, delta=0.08, msg=done)
        lines = log_lines_for(s, lambda l: "limit" in l, count=4)
        self.assertEqual({l["limit"]["action"] for l in lines}, {"delay"})
        delays = sorted(l["limit"]["delay_ms"] for l in lines)
        for i, d in enumerate(delays):
            self.assertAlmostEqual(d, 200 * (i + 1), delta=60, msg=delays)

    def test_delayed_request_keeps_its_body(self):
        self.start(route("all", ["spaced"]), rules_yaml("id: spaced, key: ip, rate: 5r/s, burst: 5"))
        self.assertEqual(self.status("/api/items/1"), 200)
        body = bytes(range(256)) * 1200  # 300 KB: more than the read watermark, held meanwhile
        t0 = time.monotonic()
        status, _, resp = http_get(self.s.port, "/__demo/echo", method="POST", body=body)
        self.assertGreater(time.monotonic() - t0, 0.12)
        self.assertEqual(status, 200)
        echo = json.loads(resp)
        self.assertEqual(echo["body_bytes"], len(body))
        self.assertEqual(echo["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_client_leaving_during_a_delay_frees_its_slot(self):
        self.start(route("all", ["per-key", "one-at-a-time"]), rules_yaml(
            "id: per-key, key: \"header:X-K\", rate: 1r/5s, burst: 5, max_delay: 10s",
            "id: one-at-a-time, key: route, algorithm: concurrency, max_active: 1"))
        self.assertEqual(self.status("/", headers={"X-K": "a"}), 200)
        c = RawClient(self.s.port)
        c.send("GET / HTTP/1.1\r\nHost: x\r\nX-K: a\r\n\r\n")  # held for 5 s, with the slot
        time.sleep(0.15)
        self.assertEqual(self.status("/", headers={"X-K": "b"}), 429)
        # A reset (a plain FIN is a half-close: the request would still be answered, after the
        # delay, like any request whose client half-closes).
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        wait_until(lambda: self.status("/", headers={"X-K": "b"}) == 200, timeout=1.5,
                   message="slot freed by the client that left")
        self.assertTrue(self.s.alive())

    def test_delay_past_max_delay_is_refused_without_charging(self):
        self.start(route("all", ["spaced"]),
                   rules_yaml("id: spaced, key: ip, rate: 2r/s, burst: 10, max_delay: 600ms"))
        t0 = time.monotonic()
        results = self.concurrent(6, "/api/items/1")
        statuses = sorted(r[0] for r in results)
        # Delays 0, 500 ms pass; 1 s and more are past max_delay.
        self.assertEqual(statuses, [200, 200, 429, 429, 429, 429])
        status, hdrs, body = [r[2] for r in results if r[0] == 429][0]
        self.assertIsNotNone(header(hdrs, "Retry-After"))
        self.assertEqual(json.loads(body)["rule"], "spaced")
        # The refused requests were not charged: two passed, so the bucket is 1 s deep at t0
        # and a request at t0 + 700 ms is delayed by 300 ms, inside max_delay. (Had the refusals
        # been charged it would be several seconds deep and this one refused too.)
        time.sleep(max(0, t0 + 0.7 - time.monotonic()))
        self.assertEqual(self.status("/api/items/1"), 200)

    def test_degrade_answers_the_fallback_without_calling_the_upstream(self):
        s = self.start(route("all", ["switch"]), rules_yaml(
            "id: switch, key: global, rate: 1r/m, nodelay: true, action: degrade, "
            "body: '{\"items\":[],\"degraded\":true}'"))
        self.assertEqual(self.status("/api/items"), 200)
        before = demo_counter(self.demo)
        for _ in range(3):
            status, hdrs, body = self.get("/api/items")
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body), {"items": [], "degraded": True})
            self.assertEqual(header(hdrs, "Content-Type"), "application/json")
            self.assertIsNone(header(hdrs, "Retry-After"))
            self.assertIsNone(header(hdrs, "X-Served-By"))
        self.assertEqual(demo_counter(self.demo), before)
        lines = log_lines_for(s, lambda l: "limit" in l, count=3)
        self.assertEqual(lines[0]["limit"], {"rule": "switch", "action": "degrade"})
        self.assertEqual(lines[0]["status"], 200)

    def test_shadow_never_rejects_and_logs(self):
        s = self.start(route("all", ["trial"]), rules_yaml(
            "id: trial, key: ip, rate: 1r/m, nodelay: true, action: shadow"))
        self.assertEqual(self.statuses(4, "/api/items/1"), [200] * 4)
        lines = log_lines_for(s, lambda l: True, count=4)
        self.assertNotIn("limit_shadow", lines[0])
        for l in lines[1:]:
            self.assertEqual(l["limit_shadow"], ["trial"])
            self.assertNotIn("limit", l)
            self.assertEqual(l["status"], 200)

    def test_reject_with_custom_status_body_and_no_ratelimit_headers(self):
        self.start(route("all", ["busy"]), rules_yaml(
            "id: busy, key: ip, rate: 1r/m, nodelay: true, status: 503, body: \"busy\\n\", "
            "content_type: text/plain, rate_limit_headers: false"))
        self.assertEqual(self.status("/"), 200)
        status, hdrs, body = self.get("/")
        self.assertEqual((status, body), (503, b"busy\n"))
        self.assertEqual(header(hdrs, "Content-Type"), "text/plain")
        self.assertIsNotNone(header(hdrs, "Retry-After"))
        self.assertIsNone(header(hdrs, "RateLimit-Policy"))
        self.assertIsNone(header(hdrs, "RateLimit"))

    def test_sliding_window_quota(self):
        self.start(route("all", ["quota"]), rules_yaml(
            "id: quota, key: member, algorithm: sliding_window, limit: 3, window: 1m"))
        self.assertEqual(self.statuses(4, "/", cookie="member=alice"), [200, 200, 200, 429])
        status, hdrs, _ = self.get("/", cookie="member=alice")
        self.assertEqual(header(hdrs, "RateLimit-Policy"), '"quota";q=3;w=60')
        self.assertEqual(self.status("/", cookie="member=bob"), 200)


class ChargingTest(LimitsTestCase):
    def test_uncharge_on_reject(self):
        # The member may make 3 calls a minute from anywhere; each IP 1.
        self.start(route("all", ["per-member", "per-ip"]), rules_yaml(
            "id: per-member, key: member, rate: 1r/m, burst: 2, nodelay: true",
            "id: per-ip, key: ip, rate: 1r/m, nodelay: true", trusted=True))
        alice = "member=alice"
        self.assertEqual(self.status("/", ip="203.0.113.1", cookie=alice), 200)
        for _ in range(5):
            status, _, body = self.get("/", ip="203.0.113.1", cookie=alice)
            self.assertEqual((status, json.loads(body)["rule"]), (429, "per-ip"))
        # Those five never reached the member's bucket: two more calls from other addresses pass.
        self.assertEqual(self.status("/", ip="203.0.113.2", cookie=alice), 200)
        self.assertEqual(self.status("/", ip="203.0.113.3", cookie=alice), 200)
        status, _, body = self.get("/", ip="203.0.113.4", cookie=alice)
        self.assertEqual((status, json.loads(body)["rule"]), (429, "per-member"))
        # ...and the member rule's refusal did not charge the fresh IP either.
        self.assertEqual(self.status("/", ip="203.0.113.4", cookie="member=bob"), 200)

    def test_count_rejected(self):
        # 2 r/s: one request, then rejected ones for 400 ms, then one at +600 ms.
        routes = route("lenient", ["free"], prefix="/api/items/") + route("strict", ["penal"], prefix="/")
        self.start(routes, rules_yaml(
            "id: free, key: ip, rate: 2r/s, nodelay: true",
            "id: penal, key: ip, rate: 2r/s, nodelay: true, count_rejected: true"))
        for path in ("/api/items/1", "/item/1"):
            t0 = time.monotonic()
            self.assertEqual(self.status(path), 200)
            self.assertEqual(set(self.statuses(4, path)), {429})
            self.assertLess(time.monotonic() - t0, 0.45)
            time.sleep(max(0, t0 + 0.6 - time.monotonic()))
            # Without count_rejected the refusals cost nothing: the bucket drained at +500 ms.
            # With it each refusal added 500 ms of debt.
            self.assertEqual(self.status(path), 200 if path.startswith("/api") else 429, path)


class ReloadTest(LimitsTestCase):
    def config(self, rule, extra_route=""):
        return default_config(self.port, self.admin_port, self.ups,
                              extra_route + route("all", ["per-ip"]), rules_yaml(rule))

    def test_reload_keeps_state_unless_the_key_changes(self):
        self.demo = self.start_demo()
        self.ups = upstream_yaml("storefront", [self.demo.address])
        self.port, self.admin_port = free_port(), free_port()
        rule = "id: per-ip, key: ip, rate: 1r/m, nodelay: true"
        self.s = self.start_sluice_text(self.config(rule), self.port, self.admin_port)
        self.assertEqual(self.statuses(2, "/"), [200, 429])

        # Another route added, the rule untouched (a new burst too): the bucket is still spent.
        extra = ("- name: extra\n  match:\n    path: { exact: /extra }\n"
                 "  direct_response: { status: 200, body: \"extra\" }\n")
        write_config(self.s, self.config(rule, extra))
        code, body = admin_reload(self.s)
        self.assertEqual(code, 200, body)
        self.assertEqual(self.get("/extra")[2], b"extra")
        self.assertEqual(self.status("/"), 429)
        write_config(self.s, self.config(rule + ", burst: 1", extra))
        self.assertEqual(admin_reload(self.s)[0], 200)
        self.assertEqual(self.statuses(2, "/"), [200, 429])

        # The key definition changes: fresh state.
        write_config(self.s, self.config("id: per-ip, key: [ip, user_agent], rate: 1r/m, nodelay: true",
                                         extra))
        self.assertEqual(admin_reload(self.s)[0], 200)
        self.assertEqual(self.statuses(2, "/"), [200, 429])


if __name__ == "__main__":
    unittest.main()
