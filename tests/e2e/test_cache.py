"""The micro-cache through the binary (docs/caching.md): 1,000 concurrent misses for one cold key
cause exactly one upstream request; X-Cache HIT / MISS / COALESCED / STALE; TTL expiry; the key
ignores cookies it does not name; Set-Cookie responses are never served to another member; stale
answers when the upstream is down, and not after max_stale; degrade-from-cache; hot-only routes;
purge by key and prefix through the admin API."""
import json
import selectors
import socket
import time
import unittest

from harness import (CannedUpstream, ProxyTestCase, admin_call, admin_json, demo_counter, header,
                     http_get, upstream_yaml, wait_until)


def cached_route(cache_yaml, name="items", prefix="/api/items/", limits=None, extra=""):
    s = ("- name: %s\n  match: { path: { prefix: %s } }\n  upstream: storefront\n"
         "  cache: %s\n" % (name, prefix, cache_yaml))
    if limits:
        s += "  limits: [%s]\n" % ", ".join(limits)
    return s + extra + "- name: rest\n  match: { path: { prefix: / } }\n  upstream: storefront\n"


def concurrent_gets(port, path, n, timeout=20.0):
    """n requests for `path` on n connections, all sent before any answer is read; the statuses
    and X-Cache values in arrival order."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    req = ("GET %s HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n" % path).encode()
    for s in socks:
        s.sendall(req)
        sel.register(s, selectors.EVENT_READ, bytearray())
    results = []
    deadline = time.time() + timeout
    while len(results) < n and time.time() < deadline:
        for key, _ in sel.select(timeout=1.0):
            chunk = key.fileobj.recv(65536)
            if chunk:
                key.data.extend(chunk)
                continue
            data = bytes(key.data)
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            xcache = next((l.split(":", 1)[1].strip() for l in head[1:]
                           if l.lower().startswith("x-cache:")), None)
            results.append((int(head[0].split()[1]), xcache))
            sel.unregister(key.fileobj)
            key.fileobj.close()
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    return results


class CacheTest(ProxyTestCase):
    def start(self, routes, extra="", demo=True):
        self.demo = self.start_demo(threads=2) if demo else None
        ups = upstream_yaml("storefront", [self.demo.address]) if demo else None
        self.s = self.start_sluice(ups, routes, extra)
        return self.s

    def get(self, path, **kw):
        return http_get(self.s.port, path, **kw)

    def test_thousand_concurrent_misses_cause_one_upstream_request(self):
        # The upstream takes 500 ms: every request arrives while the leader is in flight.
        self.start(cached_route("{ttl: 5s}", name="slow", prefix="/api/slow"))
        before = demo_counter(self.demo)
        results = concurrent_gets(self.s.port, "/api/slow?ms=500", 1000)
        self.assertEqual(len(results), 1000)
        self.assertTrue(all(st == 200 for st, _ in results), set(results))
        self.assertEqual(demo_counter(self.demo) - before, 1)
        kinds = {x for _, x in results}
        self.assertLessEqual(kinds, {"MISS", "COALESCED", "HIT"})
        self.assertEqual(sum(1 for _, x in results if x == "MISS"), 1)
        stats = admin_json(self.s, "/cache")
        self.assertEqual(stats["entries"], 1)

    def test_hit_after_miss_then_expiry_after_ttl(self):
        self.start(cached_route("{ttl: 300ms}"))
        status, h1, b1 = self.get("/api/items/1")
        self.assertEqual((status, header(h1, "x-cache")), (200, "MISS"))
        before = demo_counter(self.demo)
        status, h2, b2 = self.get("/api/items/1")
        self.assertEqual((status, header(h2, "x-cache"), b2), (200, "HIT", b1))
        self.assertIsNotNone(header(h2, "age"))
        self.assertNotEqual(header(h2, "x-request-id"), header(h1, "x-request-id"))
        self.assertEqual(demo_counter(self.demo), before)
        # HEAD is answered from the GET entry, without a body.
        status, h3, b3 = self.get("/api/items/1", method="HEAD")
        self.assertEqual((status, header(h3, "x-cache"), b3), (200, "HIT", b""))
        time.sleep(0.4)
        self.assertEqual(header(self.get("/api/items/1")[1], "x-cache"), "MISS")
        # Other query args are other keys; unnamed cookies are not part of the key.
        self.assertEqual(header(self.get("/api/items/1?a=1")[1], "x-cache"), "MISS")
        self.assertEqual(header(self.get("/api/items/1", headers={"Cookie": "session=x"})[1],
                                "x-cache"), "HIT")

    def test_set_cookie_is_never_served_to_another_member(self):
        up = CannedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: sid=secret\r\n\r\nok")
        self.addCleanup(up.stop)
        routes = cached_route("{ttl: 5s}")
        self.s = self.start_sluice(upstream_yaml("storefront", [up.address]), routes)
        for member in ("a", "b"):
            status, h, _ = self.get("/api/items/1", headers={"Cookie": "member=%s" % member})
            self.assertEqual(header(h, "set-cookie"), "sid=secret")  # each from the upstream
            self.assertEqual(header(h, "x-cache"), "MISS")
        self.assertEqual(len(up.requests), 2)
        self.assertEqual(admin_json(self.s, "/cache")["entries"], 0)

    def test_stale_served_when_the_upstream_is_down_and_not_after_max_stale(self):
        # max_stale is generous: stopping the demo can take a second on a loaded machine, and the
        # entry must still be within its window when the refresh fails.
        self.start(cached_route("{ttl: 200ms, max_stale: 4s}"))
        stored = time.monotonic()
        status, _, body = self.get("/api/items/3")
        self.assertEqual(status, 200)
        self.demo.stop()
        time.sleep(0.3)  # past the TTL: a refresh is due, and fails
        status, h, stale = self.get("/api/items/3")
        self.assertLess(time.monotonic() - stored, 4.2)
        self.assertEqual((status, header(h, "x-cache"), stale), (200, "STALE", body))
        time.sleep(max(0.0, stored + 4.4 - time.monotonic()))  # past ttl + max_stale
        self.assertEqual(self.get("/api/items/3")[0], 502)

    def test_stale_served_instead_of_an_upstream_5xx(self):
        up = CannedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        self.addCleanup(up.stop)
        self.s = self.start_sluice(upstream_yaml("storefront", [up.address]),
                                   cached_route("{ttl: 100ms, max_stale: 3s}"))
        stored = time.monotonic()
        self.assertEqual(self.get("/api/items/4")[2], b"fresh")
        up.response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        time.sleep(0.2)
        status, h, body = self.get("/api/items/4")
        self.assertEqual((status, header(h, "x-cache"), body), (200, "STALE", b"fresh"))
        self.assertEqual(self.get("/api/items/4")[0], 200)  # the connection pool is still sound
        self.assertLess(time.monotonic() - stored, 3.0)
        time.sleep(max(0.0, stored + 3.4 - time.monotonic()))  # past max_stale: the 503 goes through
        self.assertEqual(self.get("/api/items/4")[:3:2], (503, b"busy"))

    def test_degrade_answers_from_the_cache(self):
        rules = ("limits:\n  rules:\n    - {id: storm, key: global, rate: 1r/m, nodelay: true, "
                 "action: degrade, degrade_from_cache: 30s, body: '{\"degraded\":true}'}\n")
        # max_stale keeps entries in memory past their TTL; the rule's 30 s bounds their age.
        self.start(cached_route("{ttl: 100ms, max_stale: 60s}", limits=["storm"]), rules)
        status, _, body = self.get("/api/items/5")
        self.assertEqual(status, 200)
        time.sleep(0.2)  # the entry is no longer fresh, but within the rule's 30 s
        status, h, again = self.get("/api/items/5")
        self.assertEqual((status, header(h, "x-cache"), again), (200, "STALE", body))
        # Nothing cached for another item: the rule's fallback body.
        status, _, fallback = self.get("/api/items/6")
        self.assertEqual((status, json.loads(fallback)), (200, {"degraded": True}))

    def test_hot_only_caches_hot_items_only(self):
        extra = "limits:\n  hot_items: {window: 2s, sub_windows: 4, hot_rate: 20}\n"
        self.start(cached_route("{ttl: 5s, hot_only: true}"), extra)
        self.get("/api/items/8")
        self.assertIsNone(header(self.get("/api/items/8")[1], "x-cache"))  # cold: not cached
        for _ in range(60):
            self.get("/api/items/9")
        self.assertEqual(header(self.get("/api/items/9")[1], "x-cache"), "HIT")

    def test_purge_by_key_and_prefix(self):
        self.start(cached_route("{ttl: 60s}"))
        for i in (1, 2, 3):
            self.get("/api/items/%d" % i)
        self.assertEqual(admin_json(self.s, "/cache")["entries"], 3)
        host = "127.0.0.1:%d" % self.s.port  # http_get's Host: the key starts with it
        code, _, body = admin_call(self.s, "POST", "/cache/purge",
                                   body=json.dumps({"key": host + "/api/items/1"}).encode())
        self.assertEqual((code, body), (200, {"purged": 1}))
        code, _, body = admin_call(self.s, "POST", "/cache/purge",
                                   body=json.dumps({"prefix": host + "/api/items/"}).encode())
        self.assertEqual((code, body), (200, {"purged": 2}))
        self.assertEqual(admin_json(self.s, "/cache")["entries"], 0)
        self.assertEqual(header(self.get("/api/items/1")[1], "x-cache"), "MISS")
        code, _, _ = admin_call(self.s, "POST", "/cache/purge", body=b'{"nothing":1}')
        self.assertEqual(code, 400)
        code, _, _ = admin_call(self.s, "POST", "/cache/purge", token="wrong", body=b'{"key":"x"}')
        self.assertEqual(code, 401)


if __name__ == "__main__":
    unittest.main()
