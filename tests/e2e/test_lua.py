"""Lua policies through the real binary (issue 5): aggregation (item_page) with a slow part, a
down part and a client that goes away mid-fan-out; access policies that answer or add a header;
policy errors and runaway loops; `sluice -t` on a Lua syntax error; 100 reloads alternating
valid and broken Lua and YAML under load with zero failed requests and a stable RSS."""
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest

from harness import (ROOT, SLUICE_BIN, ProxyTestCase, RawClient, RssSampler, admin_call,
                     admin_reload, free_port, http_get, wait_until, write_config)

ITEM_PAGE = os.path.join(ROOT, "conf", "policies", "item_page.lua")

GATE = """
return {
  name = "gate", priority = 10,
  schema = { header = { type = "string", default = "X-Lua" } },
  phases = {
    access = function(conf, ctx)
      if sluice.req.get_header("x-block") then
        return sluice.resp.exit(403, "blocked by policy\\n", { ["X-Policy"] = "gate" })
      end
      sluice.req.set_header(conf.header, "seen " .. sluice.var.request_id)
    end,
  },
}
"""

BOOM = """
local function explode()
  error("boom")
end
return {
  name = "boom",
  phases = { access = function(conf, ctx) explode() end },
}
"""

LOOP = """
return {
  name = "loop",
  phases = { access = function(conf, ctx) local n = 0 while true do n = n + 1 end end },
}
"""

NAP = """
return {
  name = "nap",
  phases = {
    aggregate = function(conf, ctx)
      sluice.sleep(0.02)
      sluice.sleep(0.02)
      return sluice.resp.exit(200, "rested\\n")
    end,
  },
}
"""

# Two parts answer at once, two hang: a client abort or a reload finds the list of sub-requests
# in flight half done (parts removed from its middle, the rest cancelled together).
MIXED = """
return {
  name = "mixed",
  phases = {
    aggregate = function(conf, ctx)
      local rs = sluice.http.multi({
        { pool = "fast", path = "/api/items/1" },
        { pool = "hang", path = "/b", timeout = %d },
        { pool = "fast", path = "/api/items/2" },
        { pool = "hang", path = "/d", timeout = %d },
      }, { total_timeout = 9000 })
      local out = { "%s" }
      for i, r in ipairs(rs) do out[#out + 1] = r.err or tostring(r.status) end
      return sluice.resp.exit(200, table.concat(out, " "))
    end,
  },
}
"""

MIXED_ROUTES = ("  - name: mixed\n    match: { path: { prefix: /mixed } }\n    aggregate: mixed\n"
                "  - name: plain\n    match: { path: { prefix: / } }\n    upstream: fast\n")

FANOUT = """
return {
  name = "fanout",
  phases = {
    aggregate = function(conf, ctx)
      local rs = sluice.http.multi({
        { pool = "hang", path = "/a", timeout = 8000 },
        { pool = "hang", path = "/b", timeout = 8000 },
        { pool = "hang", path = "/c", timeout = 8000 },
      }, { total_timeout = 9000 })
      return sluice.resp.exit(200, "done")
    end,
  },
}
"""


class HangServer:
    """Accepts connections, reads the request, never answers; records when each peer closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self.lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        with self.lock:
            self.closed += 1
        c.close()

    def stop(self):
        self._stop = True
        self.sock.close()


def lua_config(port, admin, upstreams, routes, lua_extra=""):
    return (
        "workers: 2\n"
        "listeners:\n  - address: 127.0.0.1:%d\n"
        "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
        "log:\n  level: info\n  access: off\n"
        "lua:\n  policies_dir: policies\n  time_budget: 50ms\n%s"
        "upstreams:\n%s"
        "routes:\n%s" % (port, admin, lua_extra, upstreams, routes))


def pools(items, prices, stock, extra=""):
    out = ""
    for name, addr in (("items", items), ("prices", prices), ("stock", stock)):
        out += "  %s:\n    servers: [{ address: %s }]\n    connect_timeout: 300ms\n" % (name, addr)
    return out + extra


ITEM_ROUTE = """\
  - name: item_page
    match: { path: { regex: "^/api/items/[^/]+/page$" } }
    aggregate: item_page
    policies:
      - name: item_page
        config: { timeout_ms: 300, total_timeout_ms: 800 }
"""


class LuaTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.policies = os.path.join(self.tmp, "policies")
        os.makedirs(self.policies)
        shutil.copy(ITEM_PAGE, self.policies)

    def policy(self, name, text):
        with open(os.path.join(self.policies, name), "w") as f:
            f.write(text)

    def start(self, upstreams, routes, lua_extra=""):
        port, admin = free_port(), free_port()
        return self.start_sluice_text(lua_config(port, admin, upstreams, routes, lua_extra),
                                      port, admin)

    # ---- aggregation

    def test_item_page_merges_three_parts(self):
        demo = self.start_demo()
        s = self.start(pools(demo.address, demo.address, demo.address), ITEM_ROUTE)
        status, _, body = http_get(s.port, "/api/items/42/page")
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["id"], "42")
        self.assertFalse(doc["partial"])
        self.assertEqual(doc["item"]["id"], "42")
        self.assertIn("price", doc["price"])
        self.assertIn("stock", doc["stock"])
        status, _, lua = admin_call(s, "GET", "/lua")
        self.assertEqual(status, 200)
        self.assertEqual([p["name"] for p in lua["policies"]], ["item_page"])
        self.assertGreater(lua["memory_bytes"], 0)

    def test_optional_part_slow_is_null_and_flagged(self):
        demo = self.start_demo()
        hang = HangServer()
        self.addCleanup(hang.stop)
        s = self.start(pools(demo.address, "127.0.0.1:%d" % hang.port, demo.address), ITEM_ROUTE)
        t0 = time.time()
        status, _, body = http_get(s.port, "/api/items/7/page")
        elapsed = time.time() - t0
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertIsNone(doc["price"])
        self.assertTrue(doc["partial"])
        self.assertEqual(doc["missing"], ["price"])
        self.assertIsNotNone(doc["stock"])
        self.assertLess(elapsed, 2.0)  # the part's 300 ms deadline, not the upstream's 30 s

    def test_required_part_down_is_502(self):
        demo = self.start_demo()
        s = self.start(pools("127.0.0.1:%d" % free_port(), demo.address, demo.address), ITEM_ROUTE)
        status, headers, body = http_get(s.port, "/api/items/7/page")
        self.assertEqual(status, 502, body)
        rid = dict((k.lower(), v) for k, v in headers)["x-request-id"]
        self.assertIn(rid, body.decode())

    def test_client_abort_cancels_subrequests(self):
        hang = HangServer()
        self.addCleanup(hang.stop)
        self.policy("fanout.lua", FANOUT)
        s = self.start("  hang:\n    servers: [{ address: 127.0.0.1:%d }]\n" % hang.port,
                       "  - name: fan\n    match: { path: { prefix: /fan } }\n    aggregate: fanout\n")
        c = RawClient(s.port)
        c.send("GET /fan HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: hang.accepted >= 3, timeout=5, message="three sub-requests started")
        # Gone for good (RST), not a half-close: a FIN after a whole request still gets its answer.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        # Every sub-request's upstream connection is closed by sluice right away, long before
        # the parts' 8 s deadline: nothing completes after the client left.
        wait_until(lambda: hang.closed >= 3, timeout=2, message="sub-requests cancelled")
        self.assertTrue(s.alive())
        status, _, lua = admin_call(s, "GET", "/lua")
        self.assertEqual(status, 200)

    def test_resume_from_a_timer_is_not_left_waiting_for_io(self):
        # Resumes run from the loop's check phase; one scheduled from the timer phase
        # (sluice.sleep here, a part's deadline in item_page) must not wait in poll for the next
        # I/O or the 1 s sweep timer. Sequential requests on an otherwise idle worker.
        self.policy("nap.lua", NAP)
        s = self.start("  none:\n    servers: [{ address: 127.0.0.1:%d }]\n" % free_port(),
                       "  - name: nap\n    match: { path: { prefix: /nap } }\n    aggregate: nap\n")
        for _ in range(5):
            t0 = time.time()
            status, _, body = http_get(s.port, "/nap")
            elapsed = time.time() - t0
            self.assertEqual((status, body), (200, b"rested\n"))
            self.assertLess(elapsed, 0.5)

    def mixed_upstreams(self, hang, demo):
        return ("  fast:\n    servers: [{ address: %s }]\n"
                "  hang:\n    servers: [{ address: 127.0.0.1:%d }]\n" % (demo.address, hang.port))

    def test_client_abort_with_some_parts_done_cancels_the_rest(self):
        demo = self.start_demo()
        hang = HangServer()
        self.addCleanup(hang.stop)
        self.policy("mixed.lua", MIXED % (8000, 8000, "v1"))
        s = self.start(self.mixed_upstreams(hang, demo), MIXED_ROUTES)
        for _ in range(3):
            before = hang.closed
            c = RawClient(s.port)
            c.send("GET /mixed HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda: hang.accepted >= before + 2, timeout=5, message="hanging parts started")
            time.sleep(0.2)  # the two fast parts are back by now
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            wait_until(lambda: hang.closed >= before + 2, timeout=2, message="hanging parts cancelled")
        self.assertTrue(s.alive())
        status, _, _ = http_get(s.port, "/api/items/3")
        self.assertEqual(status, 200)

    def test_reload_mid_multi_finishes_on_the_old_generation(self):
        demo = self.start_demo()
        hang = HangServer()
        self.addCleanup(hang.stop)
        self.policy("mixed.lua", MIXED % (600, 600, "v1"))
        s = self.start(self.mixed_upstreams(hang, demo), MIXED_ROUTES)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=http_get(s.port, "/mixed", timeout=10)))
        t.start()
        wait_until(lambda: hang.accepted >= 2, timeout=5, message="hanging parts started")
        self.policy("mixed.lua", MIXED % (600, 600, "v2"))
        status, reply = admin_reload(s)
        self.assertEqual(status, 200, reply)
        self.assertTrue(reply["ok"], reply)
        t.join(10)
        status, _, body = result["r"]
        # Started on v1, finished on v1: the fast parts' answers and the hanging parts' deadlines.
        self.assertEqual((status, body), (200, b"v1 200 timeout 200 timeout"))
        status, _, body = http_get(s.port, "/mixed", timeout=10)
        self.assertEqual((status, body), (200, b"v2 200 timeout 200 timeout"))
        self.assertTrue(s.alive())

    # ---- access policies

    def test_access_policy_answers_or_adds_a_header(self):
        demo = self.start_demo()
        self.policy("gate.lua", GATE)
        s = self.start("  storefront:\n    servers: [{ address: %s }]\n" % demo.address,
                       "  - name: echo\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
                       "    policies: [gate]\n")
        status, headers, body = http_get(s.port, "/__demo/echo", headers={"X-Block": "1"})
        self.assertEqual(status, 403)
        self.assertEqual(body, b"blocked by policy\n")
        self.assertIn(("X-Policy", "gate"), headers)
        status, headers, body = http_get(s.port, "/__demo/echo")
        self.assertEqual(status, 200, body)
        rid = dict((k.lower(), v) for k, v in headers)["x-request-id"]
        seen = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        self.assertEqual(seen["x-lua"], "seen " + rid)

    def test_policy_error_is_500_with_request_id_and_traceback(self):
        demo = self.start_demo()
        self.policy("boom.lua", BOOM)
        s = self.start("  storefront:\n    servers: [{ address: %s }]\n" % demo.address,
                       "  - name: all\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
                       "    policies: [boom]\n")
        status, headers, body = http_get(s.port, "/api/items/1")
        self.assertEqual(status, 500)
        rid = dict((k.lower(), v) for k, v in headers)["x-request-id"]
        self.assertIn(rid, body.decode())
        log = wait_until(lambda: "boom.lua:3" in s.output() and s.output(), message="error logged")
        self.assertIn(rid, log)
        self.assertIn("traceback", log)
        self.assertTrue(s.alive())

    def test_runaway_loop_is_stopped(self):
        demo = self.start_demo()
        self.policy("loop.lua", LOOP)
        s = self.start("  storefront:\n    servers: [{ address: %s }]\n" % demo.address,
                       "  - name: all\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
                       "    policies: [loop]\n")
        t0 = time.time()
        status, _, _ = http_get(s.port, "/api/items/1", timeout=5)
        self.assertEqual(status, 500)
        self.assertLess(time.time() - t0, 2.0)
        # The worker is not wedged: further requests are answered promptly too.
        for _ in range(4):
            status, _, _ = http_get(s.port, "/api/items/1", timeout=5)
            self.assertIn(status, (200, 500))
        self.assertTrue(s.alive())
        # Workers publish VM statistics once a second.
        def counted():
            p = [x for x in admin_call(s, "GET", "/lua")[2]["policies"] if x["name"] == "loop"][0]
            return p["errors"] >= 1 and p["disabled_workers"] >= 1
        wait_until(counted, timeout=3, message="overruns counted and the policy disabled")

    # ---- validation

    def test_check_reports_lua_syntax_error_with_file_and_line(self):
        self.policy("bad.lua", "local x = 1\nreturn { name = 'bad' phases = {} }\n")
        path = os.path.join(self.tmp, "sluice.yaml")
        with open(path, "w") as f:
            f.write(lua_config(free_port(), free_port(),
                               "  sf:\n    servers: [{ address: 127.0.0.1:9 }]\n",
                               "  - name: all\n    match: { path: { prefix: / } }\n    upstream: sf\n"))
        p = subprocess.run([SLUICE_BIN, "-t", "-c", path], capture_output=True, text=True,
                           cwd=self.tmp, timeout=20)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("policies/bad.lua:2:", p.stderr)

    # ---- reload

    def test_100_reloads_valid_and_broken_under_load(self):
        demo = self.start_demo(threads=2)
        self.policy("gate.lua", GATE)
        routes = ITEM_ROUTE + ("  - name: echo\n    match: { path: { prefix: / } }\n"
                               "    upstream: items\n    policies: [gate]\n")
        ups = pools(demo.address, demo.address, demo.address)
        s = self.start(ups, routes)
        good_yaml = open(s.config_path).read()
        stop = threading.Event()
        failures = []
        counts = [0]

        def load():
            c = RawClient(s.port)
            paths = ["/api/items/3/page", "/api/items/3"]
            i = 0
            while not stop.is_set():
                p = paths[i % 2]
                i += 1
                try:
                    c.send("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p)
                    status, _, body = c.read_response()
                    if status != 200:
                        failures.append((p, status, body[:200]))
                    counts[0] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append((p, "exception", repr(e)))
                    c = RawClient(s.port)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        rss = []
        ok = failed = 0
        try:
            for i in range(100):
                kind = i % 4
                if kind == 0:  # valid Lua change: new VMs on every worker
                    self.policy("gate.lua", GATE + "\n-- revision %d\n" % i)
                    write_config(s, good_yaml)
                elif kind == 1:  # broken Lua
                    self.policy("gate.lua", "return { name = 'gate', phases = { access = function( } }\n")
                elif kind == 2:  # valid again, config changed too
                    self.policy("gate.lua", GATE + "\n-- revision %d\n" % i)
                    write_config(s, good_yaml + "# %d\n" % i)
                else:  # broken YAML
                    write_config(s, good_yaml + "routes: [\n")
                status, reply = admin_reload(s)
                if reply and reply.get("ok"):
                    ok += 1
                else:
                    failed += 1
                if kind in (1, 3):
                    self.assertFalse(reply["ok"], reply)
                if kind == 1:
                    self.assertIn("policies/gate.lua:1:", reply["message"])
                if i % 20 == 19:
                    rss.append(s.rss_kb())
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(failures, [])
        self.assertGreater(counts[0], 100)
        self.assertEqual(ok, 50)
        self.assertEqual(failed, 50)
        _, _, status = admin_call(s, "GET", "/status")
        # Stable memory: the last samples within a few MB of the first (old VMs are freed).
        # Not under a sanitizer: ASan's quarantine holds freed memory back on purpose (it grew
        # ~70 MB over the 100 reloads in make test-asan), so RSS says nothing there.
        if not os.environ.get("SLUICE_SANITIZER"):
            self.assertLess(rss[-1] - rss[0], 8 * 1024, rss)
        _, _, lua = admin_call(s, "GET", "/lua")
        self.assertLessEqual(lua["retired_vms"], 2 * 3)


if __name__ == "__main__":
    unittest.main()
