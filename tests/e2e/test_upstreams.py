"""Upstream behaviour end to end: errors (502/504), retries, passive and active health, the three
balancers, and upstream keep-alive reuse. Real sluice, real demo storefronts, real clients."""
import collections
import json
import os
import signal
import socket
import threading
import time
import unittest

from harness import (ProxyTestCase, ScriptedUpstream, curl, free_port, header, http_get,
                     serve_normally, tcp_sockets, upstream_servers, upstream_yaml, wait_until)


def served_by(resp):
    return header(resp[1], "X-Served-By")


def far_ends(port):
    """The other end of every socket (any state, TIME-WAIT included) that touches `port`."""
    out = set()
    for cols in tcp_sockets(port):
        local, remote = cols[3], cols[4]
        out.add(remote if local.endswith(":%d" % port) else local)
    return out


class Blackhole:
    """A server whose SYNs go unanswered: listen backlog 0, filled by our own connections, never
    accepted. Connecting to it hangs until the proxy's connect_timeout."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.1)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


class FlakyKeepAliveUpstream(ScriptedUpstream):
    """A scripted upstream that answers the first request on each connection with a keep-alive
    response, then closes the connection without a word when a second request arrives on it:
    the race where a server drops an idle keep-alive connection just as the proxy reuses it."""

    def __init__(self):
        self.answered = 0
        self.dropped = 0
        super().__init__(self._script)

    def _script(self, c):
        c.read_request()
        body = b"conn %d\n" % c.index
        # Count before sending: the client may read the answer and assert on the count before
        # this thread runs again.
        with self._lock:
            self.answered += 1
        c.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Served-By: flaky\r\n\r\n%s"
               % (len(body), body))
        c.read_request()
        with self._lock:
            self.dropped += 1
        # Returning closes the connection without answering.


class UpstreamErrorsTest(ProxyTestCase):
    def test_upstream_down_is_502_naming_the_request_id(self):
        dead = free_port()  # nothing listens there
        s = self.start_sluice(upstream_yaml("storefront", ["127.0.0.1:%d" % dead]))
        for method, path in (("GET", "/api/items/1"), ("POST", "/api/cart")):
            rc, out, err = curl("-i", "-X", method, "-H", "X-Request-Id: e2e-down-%s" % method,
                                *(["-d", "{}"] if method == "POST" else []), s.url(path))
            self.assertEqual(rc, 0, err)
            head, body = out.split(b"\r\n\r\n", 1)
            self.assertIn(b" 502 ", head.split(b"\r\n")[0], (method, out))
            self.assertIn(b"request_id: e2e-down-%s" % method.encode(), body)
            self.assertIn(b"X-Request-Id: e2e-down-%s" % method.encode(), head)
        # A generated id is named too.
        status, headers, body = http_get(s.port, "/api/items/2")
        self.assertEqual(status, 502, body)
        rid = header(headers, "X-Request-Id")
        self.assertTrue(rid)
        self.assertIn(("request_id: %s" % rid).encode(), body)
        log = wait_until(lambda: [e for e in s.access_log() if e["request_id"] == rid],
                         message="access log entry")
        self.assertEqual(log[0]["status"], 502)
        self.assertEqual(log[0]["upstream"], "127.0.0.1:%d" % dead)

    def test_slow_upstream_is_504_after_read_timeout(self):
        demo = self.start_demo("sf1")
        upstreams = (upstream_yaml("storefront", [demo.address]) +
                     upstream_yaml("tight", [demo.address], "read_timeout: 1s\n"))
        routes = ("- name: route-timeout\n  match:\n    host: route.test\n  upstream: storefront\n"
                  "  read_timeout: 1s\n"
                  "- name: upstream-timeout\n  match:\n    host: upstream.test\n  upstream: tight\n"
                  "- name: all\n  upstream: storefront\n")
        s = self.start_sluice(upstreams, routes=routes)
        for host in ("route.test", "upstream.test"):
            t0 = time.monotonic()
            status, headers, body = http_get(s.port, "/api/slow?ms=3000", headers={"Host": host})
            elapsed = time.monotonic() - t0
            self.assertEqual(status, 504, (host, body))
            self.assertIn(b"request_id: ", body)
            self.assertGreater(elapsed, 0.9, host)
            self.assertLess(elapsed, 2.5, host)
        # Without the 1s timeouts the same slow answer goes through.
        status, _, body = http_get(s.port, "/api/slow?ms=1200", headers={"Host": "other.test"})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["slept_ms"], 1200)


class ConnectTimeoutTest(ProxyTestCase):
    def test_connect_timeout_is_504_and_retried_elsewhere(self):
        hole = Blackhole()
        self.addCleanup(hole.close)
        demo = self.start_demo("live")
        opts = "connect_timeout: 300ms\npassive_health: {max_fails: 1000, fail_timeout: 1s}\n"
        upstreams = (upstream_yaml("storefront", [hole.address, demo.address], opts) +
                     upstream_yaml("lonely", [hole.address], opts))
        routes = ("- name: lonely\n  match:\n    host: lonely.test\n  upstream: lonely\n"
                  "- name: all\n  upstream: storefront\n")
        s = self.start_sluice(upstreams, routes=routes)
        slow = 0
        for i in range(4):
            t0 = time.monotonic()
            resp = http_get(s.port, "/api/items/%d" % i)
            took = time.monotonic() - t0
            self.assertEqual(resp[0], 200, resp[2])
            self.assertEqual(served_by(resp), "live")
            slow += took >= 0.3
        # Round robin picked the black hole twice; each pick waited out connect_timeout.
        self.assertGreaterEqual(slow, 2)
        hole_state = upstream_servers(s)[hole.address]
        self.assertEqual((hole_state["requests"], hole_state["failures"]), (2, 2))
        statuses = sorted(http_get(s.port, "/api/cart", method="POST", body="{}")[0] for _ in range(2))
        self.assertEqual(statuses, [200, 504])
        t0 = time.monotonic()
        status, _, body = http_get(s.port, "/api/items/1", headers={"Host": "lonely.test"})
        took = time.monotonic() - t0
        self.assertEqual(status, 504, body)
        self.assertIn(b"request_id: ", body)
        self.assertGreaterEqual(took, 0.3)
        self.assertLess(took, 1.5)


class RetryTest(ProxyTestCase):
    def _start(self, retry, max_fails=1000):
        self.dead = free_port()
        self.demo = self.start_demo("live")
        extra = "retry: {attempts: %d}\npassive_health: {max_fails: %d, fail_timeout: 30s}\n" % (
            retry, max_fails)
        return self.start_sluice(upstream_yaml(
            "storefront", ["127.0.0.1:%d" % self.dead, self.demo.address], extra))

    def test_get_retried_on_second_server_post_not_retried(self):
        s = self._start(retry=1)
        for i in range(6):
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200, resp[2])
            self.assertEqual(served_by(resp), "live")
        servers = upstream_servers(s)
        # Round robin sent about half the first attempts to the dead server, each then retried.
        self.assertGreaterEqual(servers["127.0.0.1:%d" % self.dead]["failures"], 2)
        self.assertEqual(servers[self.demo.address]["requests"], 6)
        # POST is not idempotent: never retried, so the picks that land on the dead server fail.
        statuses = []
        for i in range(4):
            status, headers, body = http_get(s.port, "/api/cart", method="POST", body='{"n":%d}' % i)
            statuses.append(status)
            if status == 200:
                self.assertEqual(header(headers, "X-Served-By"), "live")
            else:
                self.assertIn(b"request_id: ", body)
        self.assertEqual(sorted(statuses), [200, 200, 502, 502], statuses)
        self.assertEqual(upstream_servers(s)[self.demo.address]["requests"], 8)

    def test_retry_attempts_zero_disables_retries(self):
        s = self._start(retry=0)
        statuses = collections.Counter(http_get(s.port, "/api/items/%d" % i)[0] for i in range(6))
        self.assertEqual(statuses, {200: 3, 502: 3})

    def test_passive_health_ejects_a_dead_server(self):
        self.dead = free_port()
        self.demo = self.start_demo("live")
        extra = "retry: {attempts: 0}\npassive_health: {max_fails: 1, fail_timeout: 5s}\n"
        s = self.start_sluice(upstream_yaml(
            "storefront", ["127.0.0.1:%d" % self.dead, self.demo.address], extra))
        dead_addr = "127.0.0.1:%d" % self.dead
        # Without retries the first pick of the dead server fails, and ejects it (max_fails: 1).
        statuses = [http_get(s.port, "/api/items/1")[0] for _ in range(2)]
        self.assertEqual(sorted(statuses), [200, 502])
        servers = upstream_servers(s)
        self.assertTrue(servers[dead_addr]["ejected"])
        self.assertFalse(servers[self.demo.address]["ejected"])
        self.assertEqual(servers[dead_addr]["failures"], 1)
        # Everything that follows goes to the live server, without a single error.
        for i in range(20):
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200, resp[2])
            self.assertEqual(served_by(resp), "live")
        servers = upstream_servers(s)
        self.assertEqual(servers[dead_addr]["requests"], 1)
        self.assertEqual(servers[dead_addr]["failures"], 1)
        self.assertTrue(servers[dead_addr]["ejected"])
        # After fail_timeout the server is given another chance.
        wait_until(lambda: not upstream_servers(s)[dead_addr]["ejected"], timeout=8,
                   interval=0.2, message="end of the ejection")


class ActiveHealthTest(ProxyTestCase):
    def test_health_checks_eject_and_restore_a_server(self):
        a = self.start_demo("a")
        b = self.start_demo("b")
        extra = "health_check: {path: /healthz, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n"
        s = self.start_sluice(upstream_yaml("storefront", [a.address, b.address], extra))
        seen = collections.Counter(served_by(http_get(s.port, "/api/items/1")) for _ in range(6))
        self.assertEqual(seen, {"a": 3, "b": 3})

        status, _, body = http_get(a.port, "/__demo/health?status=down", method="POST", body="")
        self.assertEqual(status, 200, body)
        t0 = time.monotonic()
        wait_until(lambda: not upstream_servers(s)[a.address]["healthy"], timeout=3,
                   message="server a marked unhealthy")
        down_after = time.monotonic() - t0
        self.assertLess(down_after, 1.5)
        self.assertTrue(upstream_servers(s)[b.address]["healthy"])
        for i in range(10):
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200, resp[2])
            self.assertEqual(served_by(resp), "b")

        status, _, _ = http_get(a.port, "/__demo/health?status=up", method="POST", body="")
        self.assertEqual(status, 200)
        t0 = time.monotonic()
        wait_until(lambda: upstream_servers(s)[a.address]["healthy"], timeout=3,
                   message="server a healthy again")
        up_after = time.monotonic() - t0
        self.assertLess(up_after, 1.5)
        seen = collections.Counter(served_by(http_get(s.port, "/api/items/1")) for _ in range(10))
        self.assertEqual(seen, {"a": 5, "b": 5})
        print("\n  health: marked down after %.0fms, up after %.0fms" % (down_after * 1000, up_after * 1000))


class BalancingTest(ProxyTestCase):
    def test_weighted_round_robin_is_exact(self):
        a = self.start_demo("heavy")
        b = self.start_demo("light")
        ups = ("storefront:\n  servers:\n    - address: %s\n      weight: 3\n"
               "    - address: %s\n      weight: 1\n" % (a.address, b.address))
        s = self.start_sluice(ups)
        order = [served_by(http_get(s.port, "/api/items/%d" % i)) for i in range(40)]
        self.assertEqual(collections.Counter(order), {"heavy": 30, "light": 10})
        # Smooth WRR interleaves: the light server's turns are spread, one in every four.
        for k in range(0, 40, 4):
            self.assertEqual(order[k:k + 4].count("light"), 1, order)

    def test_least_conn_avoids_the_busy_server(self):
        a = self.start_demo("a")
        b = self.start_demo("b")
        s = self.start_sluice(upstream_yaml("storefront", [a.address, b.address], "balance: least_conn\n"))
        results = []

        def slow():
            results.append(http_get(s.port, "/api/slow?ms=2500", timeout=15))

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
        active = wait_until(
            lambda: (lambda sv: sv if sum(x["active"] for x in sv.values()) == 3 else None)(
                upstream_servers(s)), timeout=3, message="3 slow requests in flight")
        busy = max(active.values(), key=lambda x: x["active"])
        idle = min(active.values(), key=lambda x: x["active"])
        self.assertEqual((busy["active"], idle["active"]), (2, 1))
        idle_name = "a" if idle["address"] == a.address else "b"
        # While the slow ones run, every new request goes to the less loaded server.
        for i in range(10):
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200)
            self.assertEqual(served_by(resp), idle_name)
        for t in threads:
            t.join()
        self.assertEqual(sorted(r[0] for r in results), [200, 200, 200])
        self.assertEqual(collections.Counter(served_by(r) for r in results)[idle_name], 1)
        # Idle again: ties spread over both.
        seen = collections.Counter(served_by(http_get(s.port, "/api/items/1")) for _ in range(10))
        self.assertEqual(set(seen), {"a", "b"})

    def test_consistent_hash_on_member_cookie(self):
        a = self.start_demo("a")
        b = self.start_demo("b")
        s = self.start_sluice(upstream_yaml("storefront", [a.address, b.address],
                                            "balance: hash\nhash_key: cookie:member\n"))
        placement = {}
        for m in range(24):
            member = "member-%d" % m
            servers = {served_by(http_get(s.port, "/api/items/%d" % k,
                                          headers={"Cookie": "device=d%d; member=%s" % (k, member)}))
                       for k in range(3)}
            self.assertEqual(len(servers), 1, (member, servers))
            placement[member] = servers.pop()
        counts = collections.Counter(placement.values())
        self.assertEqual(set(counts), {"a", "b"}, counts)
        # A server going away moves only its own members; the others stay put.
        a.stop()
        moved = 0
        for member, where in placement.items():
            resp = http_get(s.port, "/api/items/1", headers={"Cookie": "member=%s" % member})
            self.assertEqual(resp[0], 200, resp[2])
            self.assertEqual(served_by(resp), "b")
            moved += where == "a"
        self.assertEqual(moved, counts["a"])


class KeepAliveTest(ProxyTestCase):
    def test_upstream_connections_are_reused(self):
        demo = self.start_demo("sf1")
        s = self.start_sluice(upstream_yaml("storefront", [demo.address]))
        before = json.loads(http_get(demo.port, "/__demo/counter")[2])["requests"]
        earlier = far_ends(demo.port)  # our own probes of the demo
        established = set()
        for i in range(60):
            # A new client connection each time: reuse is per worker, not per client.
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200)
            if i % 10 == 0:
                established |= {c[3] for c in tcp_sockets(demo.port)
                                if c[0] == "ESTAB" and c[4].endswith(":%d" % demo.port)}
        # One upstream connection per request would leave ~60 sockets (TIME-WAIT) behind.
        proxied = far_ends(demo.port) - earlier
        after = json.loads(http_get(demo.port, "/__demo/counter")[2])["requests"]
        self.assertEqual(after - before, 60)
        self.assertEqual(len(proxied), 1, tcp_sockets(demo.port))
        self.assertEqual(established, proxied)

    def test_keepalive_settings(self):
        demo = self.start_demo("sf1")
        upstreams = (upstream_yaml("storefront", [demo.address], "keepalive: {max_idle: 0}\n") +
                     upstream_yaml("short", [demo.address], "keepalive: {idle_timeout: 300ms}\n"))
        routes = ("- name: short\n  match:\n    host: short.test\n  upstream: short\n"
                  "- name: all\n  upstream: storefront\n")
        s = self.start_sluice(upstreams, routes=routes)
        earlier = far_ends(demo.port)
        for i in range(10):
            self.assertEqual(http_get(s.port, "/api/items/%d" % i)[0], 200)
        # max_idle: 0 keeps nothing: one upstream connection per request.
        self.assertGreaterEqual(len(far_ends(demo.port) - earlier), 10)
        established = lambda: [c for c in tcp_sockets(demo.port)
                               if c[0] == "ESTAB" and c[4].endswith(":%d" % demo.port)]
        wait_until(lambda: not established(), timeout=2, message="no idle connection kept")
        # idle_timeout: 300ms closes the kept connection soon after.
        self.assertEqual(http_get(s.port, "/api/items/1", headers={"Host": "short.test"})[0], 200)
        self.assertEqual(len(established()), 1)
        t0 = time.monotonic()
        wait_until(lambda: not established(), timeout=3, message="idle timeout")
        self.assertLess(time.monotonic() - t0, 1.5)

    def test_upstream_idle_close_is_noticed(self):
        demo = self.start_demo_idle(port=free_port(), idle=1)
        s = self.start_sluice(upstream_yaml("storefront", [demo.address]))
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 200)
        established = lambda: [c for c in tcp_sockets(demo.port) if c[0] == "ESTAB"]
        wait_until(established, timeout=2, message="an upstream keep-alive connection")
        # The demo closes idle connections after 1s; sluice sees the FIN and drops its end.
        wait_until(lambda: not established(), timeout=5, message="idle connection closed")
        for i in range(3):
            resp = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(resp[0], 200, resp[2])

    def start_demo_idle(self, port, idle):
        from harness import Process, DEMO_BIN, wait_port
        import os
        d = Process([DEMO_BIN, "--port", str(port), "--name", "idle", "--idle-timeout", str(idle),
                     "--quiet"], os.path.join(self.tmp, "demo-idle.log"))
        d.port = port
        d.address = "127.0.0.1:%d" % port
        self._procs.append(d)
        wait_port(port, proc=d.proc)
        return d

    def test_early_answer_in_the_turn_of_the_last_body_bytes_is_not_reused(self):
        # Regression for the end-of-turn write batch: the body's last bytes wait in the
        # connection's output until the turn ends. When the upstream's early 413 is read in that
        # same turn, the connection must not go back to the pool with them unsent (they would
        # be lost, and the server would read the next request as the rest of this body).
        head_seen, answer_post, answered = threading.Event(), threading.Event(), threading.Event()

        def script(c):
            if c.index == 1:
                c.wait_head()  # the POST's head; its body is still coming
                head_seen.set()
                answer_post.wait(10)
                c.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
                answered.set()
                c.read_request()  # then the whole body, as a server keeping the connection must
            serve_normally(c)

        up = ScriptedUpstream(script)
        self.addCleanup(up.close)
        s = self.start_sluice(upstream_yaml("storefront", [up.address]))
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        self.addCleanup(c.close)
        body = b"x" * 4000
        c.sendall(b"POST /api/cart HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body[:-10]))
        self.assertTrue(head_seen.wait(10))
        time.sleep(0.2)  # the first part of the body reaches the upstream
        # Freeze the proxy; the client's last bytes and then the 413 become readable, in that
        # order, so one turn reads both: the body's end first, the answer second.
        os.kill(s.pid, signal.SIGSTOP)
        try:
            # SIGSTOP is asynchronous: a worker still running would read the bytes in a turn of
            # their own. Every thread must be stopped.
            def stopped():
                tasks = os.listdir("/proc/%d/task" % s.pid)
                return all(open("/proc/%d/task/%s/stat" % (s.pid, t)).read().rsplit(")", 1)[1].split()[0]
                           == "T" for t in tasks)
            wait_until(stopped, message="every sluice thread stopped")
            c.sendall(body[-10:])  # loopback: in the proxy's receive queue on return
            answer_post.set()
            self.assertTrue(answered.wait(10))
        finally:
            os.kill(s.pid, signal.SIGCONT)
        buf = b""
        while b"too large" not in buf:
            chunk = c.recv(65536)
            self.assertTrue(chunk, buf)
            buf += chunk
        self.assertIn(b" 413 ", buf.split(b"\r\n")[0])
        # The next request on the same client connection (same worker, same pool).
        c.sendall(b"GET /api/items/1 HTTP/1.1\r\nHost: shop\r\n\r\n")
        buf = b""
        while b"conn " not in buf:
            chunk = c.recv(65536)
            self.assertTrue(chunk, buf)
            buf += chunk
        self.assertIn(b" 200 ", buf.split(b"\r\n")[0], buf)
        # The POST's connection either got the whole body (then it could carry the GET) or was
        # closed with it unsent (the 413 had ended the exchange); never a GET read as body.
        seen = [r for conn in up.conns for r in conn.requests]
        for head, got in seen:
            if head.startswith("POST"):
                self.assertEqual(got, body, "the body arrived altered")
        self.assertEqual([h.split("\r\n")[0] for h, _ in seen if not h.startswith("POST")],
                         ["GET /api/items/1 HTTP/1.1"])

    def test_reused_connection_closed_by_upstream_is_retried(self):
        flaky = FlakyKeepAliveUpstream()
        self.addCleanup(flaky.close)
        s = self.start_sluice(upstream_yaml("storefront", [flaky.address],
                                            "passive_health: {max_fails: 1000, fail_timeout: 1s}\n"))
        for i in range(5):
            status, headers, body = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(status, 200, body)
            self.assertEqual(body, b"conn %d\n" % (i + 1))
        # Every request after the first found its reused connection dropped, and was replayed on
        # a fresh one without the client noticing.
        self.assertEqual(flaky.dropped, 4)
        self.assertEqual(flaky.answered, 5)
        # A POST is not replayed: the server might have acted on it.
        status, _, body = http_get(s.port, "/api/cart", method="POST", body="{}")
        self.assertEqual(status, 502, body)

    def test_reused_connection_retry_with_two_servers(self):
        flaky = FlakyKeepAliveUpstream()
        self.addCleanup(flaky.close)
        demo = self.start_demo("live")
        s = self.start_sluice(upstream_yaml("storefront", [flaky.address, demo.address],
                                            "passive_health: {max_fails: 1000, fail_timeout: 1s}\n"))
        for i in range(12):
            status, headers, body = http_get(s.port, "/api/items/%d" % i)
            self.assertEqual(status, 200, body)
        self.assertGreaterEqual(flaky.dropped, 1)


if __name__ == "__main__":
    unittest.main()
