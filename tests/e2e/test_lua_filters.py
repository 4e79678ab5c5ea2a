"""Lua response filters through the real binary: header_filter reading the upstream status and
headers and changing the head; body_filter rewriting chunked and Content-Length bodies (framing
re-chosen, keep-alive intact), a 20 MB body streamed through a filter in bounded memory, filter
errors and a yield attempt (logged with file:line, the connection handled sanely), HTTP/1.0
clients, HEAD, local (aggregate) answers and cache hits."""
import hashlib
import os
import shutil
import subprocess
import time
import unittest

from harness import (ProxyTestCase, RawClient, RssSampler, admin_call, free_port, header,
                     http_get, wait_until)

MB = 1024 * 1024
RSS_GROWTH_LIMIT_KB = 16 * 1024
if os.environ.get("SLUICE_SANITIZER"):
    RSS_GROWTH_LIMIT_KB = 64 * 1024  # ASan's quarantine holds freed buffers back

# /__demo/bytes serves byte i = 'a' + i % 26; the filter below upper-cases it.
_UPPER = bytes(range(ord("A"), ord("A") + 26))


def upper_pattern(n):
    return (_UPPER * (n // 26 + 1))[:n]


def upper_sha256(n):
    h = hashlib.sha256()
    block = _UPPER * (MB // 26)
    while n >= len(block):
        h.update(block)
        n -= len(block)
    h.update(block[:n])
    return h.hexdigest()


HEADERS = """
return {
  name = "headers",
  phases = {
    header_filter = function(conf, ctx)
      local st = sluice.resp.get_status()
      sluice.resp.set_header("X-Upstream-Status", tostring(st))
      sluice.resp.set_header("X-Upstream-Type", sluice.resp.get_header("content-type") or "none")
      local all = sluice.resp.get_headers()
      sluice.resp.set_header("X-Had-Served-By", all["x-served-by"] and "yes" or "no")
      sluice.resp.set_header("X-Served-By", nil)
      sluice.resp.set_header("Content-Length", "1")  -- framing is the proxy's: ignored
      if st == 404 then sluice.resp.set_status(410) end
    end,
  },
}
"""

UPPER = """
return {
  name = "upper",
  phases = {
    header_filter = function(conf, ctx) ctx.chunks = 0 end,
    body_filter = function(conf, ctx, chunk, eof)
      ctx.chunks = ctx.chunks + 1
      if eof then return chunk:upper() .. "<END>" end
      return chunk:upper()
    end,
  },
}
"""

# Upper-cases without a marker, for the byte-exact large body.
UPPER_ONLY = """
return {
  name = "upper_only",
  phases = { body_filter = function(conf, ctx, chunk, eof) return chunk:upper() end },
}
"""

BREAKS = """
return {
  name = "breaks",
  phases = {
    body_filter = function(conf, ctx, chunk, eof)
      ctx.n = (ctx.n or 0) + 1
      if ctx.n == 3 then
        error("filter broke")
      end
      return chunk
    end,
  },
}
"""

YIELDS = """
return {
  name = "yields",
  phases = {
    header_filter = function(conf, ctx)
      sluice.resp.set_header("X-Before-Yield", "1")
      coroutine.yield()
    end,
  },
}
"""

HELLO = """
return {
  name = "hello",
  phases = {
    aggregate = function(conf, ctx) return sluice.resp.exit(200, "hello world", { ["X-Agg"] = "1" }) end,
  },
}
"""

LOCAL_BREAKS = """
return {
  name = "local_breaks",
  phases = { body_filter = function(conf, ctx, chunk, eof) error("no " .. #chunk) end },
}
"""

ACCESS_HEADER = """
return {
  name = "access_header",
  phases = { access = function(conf, ctx) sluice.resp.set_header("X-From-Access", "yes") end },
}
"""


def config(port, admin, demo, routes, extra=""):
    return ("workers: 1\n"
            "listeners:\n  - address: 127.0.0.1:%d\n"
            "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
            "log:\n  level: info\n  access: off\n"
            "lua:\n  policies_dir: policies\n  time_budget: 200ms\n%s"
            "upstreams:\n  sf:\n    servers: [{ address: %s }]\n"
            "routes:\n%s" % (port, admin, extra, demo, routes))


def route(name, prefix, policies, extra=""):
    return ("  - name: %s\n    match: { path: { prefix: %s } }\n    upstream: sf\n"
            "    policies: [%s]\n%s" % (name, prefix, policies, extra))


class LuaFiltersTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.policies = os.path.join(self.tmp, "policies")
        os.makedirs(self.policies)
        for name, text in (("headers.lua", HEADERS), ("upper.lua", UPPER),
                           ("upper_only.lua", UPPER_ONLY), ("breaks.lua", BREAKS),
                           ("yields.lua", YIELDS), ("hello.lua", HELLO),
                           ("local_breaks.lua", LOCAL_BREAKS),
                           ("access_header.lua", ACCESS_HEADER)):
            with open(os.path.join(self.policies, name), "w") as f:
                f.write(text)

    def start(self, routes, extra=""):
        demo = self.start_demo()
        port, admin = free_port(), free_port()
        s = self.start_sluice_text(config(port, admin, demo.address, routes, extra), port, admin)
        return demo, s

    def policy_errors(self, s, name):
        def get():
            for p in admin_call(s, "GET", "/lua")[2]["policies"]:
                if p["name"] == name:
                    return p["errors"]
            return 0
        return get

    # ---- header_filter

    def test_header_filter_reads_upstream_and_changes_the_head(self):
        _, s = self.start(route("h", "/", "headers"))
        c = RawClient(s.port)
        c.send("GET /__demo/bytes?n=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(body, b"abcdefghij")
        self.assertEqual(header(headers, "x-upstream-status"), "200")
        self.assertEqual(header(headers, "x-upstream-type"), "application/octet-stream")
        self.assertEqual(header(headers, "x-had-served-by"), "yes")
        self.assertIsNone(header(headers, "x-served-by"))
        self.assertEqual(header(headers, "content-length"), "10")  # set_header ignored
        self.assertIsNotNone(header(headers, "x-request-id"))
        # Same connection: the status is read and changed too.
        c.send("GET /__demo/status/404 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = c.read_response()
        self.assertEqual(status, 410)
        self.assertEqual(header(headers, "x-upstream-status"), "404")
        c.close()

    def test_resp_set_header_from_access_reaches_proxied_responses(self):
        _, s = self.start(route("a", "/", "access_header"))
        status, headers, _ = http_get(s.port, "/__demo/bytes?n=3")
        self.assertEqual(status, 200)
        self.assertEqual(header(headers, "x-from-access"), "yes")

    def test_yield_in_header_filter_is_an_error_naming_the_phase(self):
        _, s = self.start(route("y", "/", "yields"))
        status, headers, body = http_get(s.port, "/__demo/bytes?n=5")
        # The response goes on as it was before the phase: the change before the yield is gone.
        self.assertEqual(status, 200)
        self.assertEqual(body, b"abcde")
        self.assertIsNone(header(headers, "x-before-yield"))
        log = wait_until(lambda: "yields.lua:" in s.output() and s.output(), message="logged")
        self.assertIn("phase 'header_filter' may not yield", log)
        wait_until(lambda: self.policy_errors(s, "yields")() >= 1, timeout=3, message="counted")
        self.assertTrue(s.alive())

    # ---- body_filter

    def test_body_filter_rewrites_chunked_and_length_bodies_keep_alive(self):
        _, s = self.start(route("u", "/", "upper"))
        c = RawClient(s.port)
        for target in ("/__demo/bytes?n=100&chunked=1&chunk=7", "/__demo/bytes?n=100",
                       "/__demo/bytes?n=0"):
            c.send("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            status, headers, body = c.read_response()
            self.assertEqual(status, 200, target)
            self.assertIsNone(header(headers, "content-length"), target)
            self.assertEqual(header(headers, "transfer-encoding"), "chunked", target)
            n = int(target.split("n=")[1].split("&")[0])
            self.assertEqual(body, upper_pattern(n) + b"<END>", target)
        # HEAD: no body and no (now unknowable) length; the connection stays in step.
        c.send("HEAD /__demo/bytes?n=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = c.read_response(head_request=True)
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")
        self.assertIsNone(header(headers, "content-length"))
        c.send("GET /__demo/bytes?n=26 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = c.read_response()
        self.assertEqual(body, upper_pattern(26) + b"<END>")
        c.close()

    def test_http10_client_gets_a_close_delimited_filtered_body(self):
        _, s = self.start(route("u", "/", "upper"))
        c = RawClient(s.port)
        c.send("GET /__demo/bytes?n=52 HTTP/1.0\r\n\r\n")
        status, headers, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertIsNone(header(headers, "content-length"))
        self.assertIsNone(header(headers, "transfer-encoding"))
        self.assertEqual(header(headers, "connection"), "close")
        self.assertEqual(body, upper_pattern(52) + b"<END>")
        c.close()

    def test_20mb_through_body_filter_in_bounded_memory(self):
        _, s = self.start(route("u", "/", "upper_only"))
        n = 20 * MB
        sampler = RssSampler(s.pid)
        baseline = sampler.read()
        sha = hashlib.sha256()
        got = 0
        with sampler:
            # A reader at 8 MB/s while the demo can send much faster: without backpressure the
            # body would pile up in sluice.
            with subprocess.Popen(["curl", "-sS", "--fail", "--max-time", "60", "--limit-rate", "8M",
                                   s.url("/__demo/bytes?n=%d" % n)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
                while True:
                    block = p.stdout.read(MB)
                    if not block:
                        break
                    sha.update(block)
                    got += len(block)
                err = p.stderr.read()
                rc = p.wait(timeout=60)
        if os.environ.get("SLUICE_E2E_VERBOSE"):
            print("20 MB filtered: RSS peak +%d kB" % (sampler.peak_kb - baseline))
        self.assertEqual(rc, 0, err)  # curl checks the chunked framing
        self.assertEqual(got, n)
        self.assertEqual(sha.hexdigest(), upper_sha256(n))
        self.assertLess(sampler.peak_kb - baseline, RSS_GROWTH_LIMIT_KB,
                        "peak %d kB over a baseline of %d kB" % (sampler.peak_kb, baseline))

    def test_body_filter_error_cuts_the_response_and_is_logged(self):
        _, s = self.start(route("b", "/", "breaks"))
        c = RawClient(s.port)
        c.send("GET /__demo/bytes?n=100&chunked=1&chunk=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Headers went out before the third chunk failed: the body ends short, without the
        # last chunk, and the connection closes.
        self.assertTrue(c.closed(timeout=5))
        raw = c.buf
        self.assertTrue(raw.startswith(b"HTTP/1.1 200"), raw[:100])
        self.assertIn(b"transfer-encoding: chunked", raw.lower())
        self.assertNotIn(b"\r\n0\r\n\r\n", raw)
        c.close()
        log = wait_until(lambda: "breaks.lua:8" in s.output() and s.output(), message="logged")
        self.assertIn("filter broke", log)
        wait_until(lambda: self.policy_errors(s, "breaks")() >= 1, timeout=3, message="counted")
        # The worker goes on: a short body (two chunks at most) passes.
        status, _, body = http_get(s.port, "/__demo/bytes?n=5")
        self.assertEqual((status, body), (200, b"abcde"))
        self.assertTrue(s.alive())

    # ---- local answers and cache hits

    def test_filters_on_local_answers_keep_an_exact_length(self):
        routes = ("  - name: agg\n    match: { path: { prefix: /agg } }\n    aggregate: hello\n"
                  "    policies: [hello, upper, headers]\n"
                  "  - name: bad\n    match: { path: { prefix: /bad } }\n    aggregate: hello\n"
                  "    policies: [hello, local_breaks]\n")
        _, s = self.start(routes)
        for version in ("1.1", "1.0"):
            c = RawClient(s.port)
            req = "GET /agg HTTP/%s\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" % version
            c.send(req)
            status, headers, body = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual(body, b"HELLO WORLD<END>")
            self.assertEqual(header(headers, "content-length"), str(len(body)))
            self.assertEqual(header(headers, "x-agg"), "1")
            self.assertEqual(header(headers, "x-upstream-type"), "text/plain; charset=utf-8")
            if version == "1.0":
                self.assertEqual(header(headers, "connection"), "keep-alive")
            c.send(req)  # still usable
            self.assertEqual(c.read_response()[2], b"HELLO WORLD<END>")
            c.close()
        # A failing body_filter on a whole body: nothing was sent yet, so a plain 500.
        status, headers, body = http_get(s.port, "/bad")
        self.assertEqual(status, 500)
        self.assertIn(header(headers, "x-request-id"), body.decode())
        wait_until(lambda: "local_breaks.lua:" in s.output(), message="logged")

    def test_cache_stores_the_upstream_bytes_filters_run_per_delivery(self):
        _, s = self.start(route("c", "/", "upper", "    cache: {ttl: 30s}\n"))
        seen = []
        for _ in range(3):
            status, headers, body = http_get(s.port, "/__demo/bytes?n=30")
            self.assertEqual(status, 200)
            self.assertEqual(body, upper_pattern(30) + b"<END>")  # filtered once per delivery
            seen.append(header(headers, "x-cache"))
        self.assertIn("HIT", seen[1:], seen)


if __name__ == "__main__":
    unittest.main()
