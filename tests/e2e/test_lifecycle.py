"""Process lifecycle end to end: SIGTERM/SIGQUIT drain and its timeout, the command line
(`-t`, `--version`), PROXY protocol v1/v2 listeners, and several workers on one port."""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

from harness import (SLUICE_BIN, ProxyTestCase, RawClient, default_config, free_port, http_get,
                     tcp_sockets, upstream_servers, upstream_yaml, wait_port, wait_until)


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def curl_in_thread(url, result, timeout=20):
    def run():
        p = subprocess.run(["curl", "-sS", "-i", "--max-time", str(timeout), url],
                           capture_output=True, timeout=timeout + 10)
        result["rc"] = p.returncode
        result["out"] = p.stdout
        result["err"] = p.stderr.decode("utf-8", "replace")
        result["done_at"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class DrainTest(ProxyTestCase):
    def start(self, drain_timeout):
        demo = self.start_demo("sf1")
        s = self.start_sluice(upstream_yaml("storefront", [demo.address]),
                              extra="drain_timeout: %s\n" % drain_timeout)
        return demo, s

    def wait_in_flight(self, s, n=1):
        wait_until(lambda: sum(x["active"] for x in upstream_servers(s).values()) == n,
                   timeout=5, message="%d request(s) in flight" % n)

    def test_sigterm_lets_the_in_flight_request_finish(self):
        demo, s = self.start("5s")
        # An idle keep-alive connection: drain closes it at once.
        idle = RawClient(s.port)
        self.addCleanup(idle.close)
        idle.send("GET /api/items/1 HTTP/1.1\r\nHost: shop\r\n\r\n")
        self.assertEqual(idle.read_response()[0], 200)

        result = {}
        t = curl_in_thread(s.url("/api/slow?ms=1500"), result)
        self.wait_in_flight(s)
        t_sig = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)

        # New connections are refused while the in-flight request is still running.
        wait_until(lambda: refused(s.port), timeout=1.0, message="listener closed")
        refused_after = time.monotonic() - t_sig
        self.assertTrue(t.is_alive(), "the slow request finished before the listener closed")
        for _ in range(5):
            self.assertTrue(refused(s.port))
        self.assertTrue(idle.closed(timeout=1.0), "idle keep-alive connection left open")

        t.join(timeout=10)
        self.assertEqual(result.get("rc"), 0, result.get("err"))
        head, body = result["out"].split(b"\r\n\r\n", 1)
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(json.loads(body)["slept_ms"], 1500)

        rc = s.proc.wait(timeout=6)
        exited_after = time.monotonic() - t_sig
        self.assertEqual(rc, 0, s.output()[-2000:])
        # It waited for the request (~1.5s) but not for the whole 5s drain timeout.
        self.assertGreater(exited_after, 1.2)
        self.assertLess(exited_after, 4.0)
        self.assertLessEqual(result["done_at"] - t_sig, exited_after + 0.05)
        log = [e for e in s.access_log() if e["path"] == "/api/slow?ms=1500"]
        self.assertEqual([e["status"] for e in log], [200])
        print("\n  drain: listener refused after %.0fms, request done after %.2fs, exit after %.2fs"
              % (refused_after * 1000, result["done_at"] - t_sig, exited_after))

    def test_drain_timeout_cuts_long_requests(self):
        demo, s = self.start("1s")
        result = {}
        t = curl_in_thread(s.url("/api/slow?ms=5000"), result)
        self.wait_in_flight(s)
        t_sig = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        rc = s.proc.wait(timeout=5)
        exited_after = time.monotonic() - t_sig
        self.assertEqual(rc, 0, s.output()[-2000:])
        self.assertGreater(exited_after, 0.9)
        self.assertLess(exited_after, 2.5)
        t.join(timeout=5)
        self.assertNotEqual(result.get("rc"), 0, "the 5s request cannot have completed")
        self.assertNotIn(b"slept_ms", result.get("out", b""))
        self.assertIn("drain timeout", s.output())
        print("\n  drain timeout 1s: exit after %.2fs" % exited_after)

    def test_sigquit_drains_too(self):
        demo, s = self.start("5s")
        result = {}
        t = curl_in_thread(s.url("/api/slow?ms=800"), result)
        self.wait_in_flight(s)
        s.proc.send_signal(signal.SIGQUIT)
        rc = s.proc.wait(timeout=5)
        self.assertEqual(rc, 0)
        t.join(timeout=5)
        self.assertEqual(result.get("rc"), 0, result.get("err"))
        self.assertIn(b" 200 ", result["out"].split(b"\r\n")[0])

    def test_idle_sluice_stops_promptly(self):
        demo, s = self.start("10s")
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 200)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        self.assertEqual(s.proc.wait(timeout=5), 0)
        self.assertLess(time.monotonic() - t0, 2.0)


class CommandLineTest(ProxyTestCase):
    def run_sluice(self, *args):
        p = subprocess.run([SLUICE_BIN] + list(args), capture_output=True, text=True, timeout=20,
                           cwd=self.tmp)
        return p.returncode, p.stdout, p.stderr

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version(self):
        for flag in ("--version", "-v"):
            rc, out, err = self.run_sluice(flag)
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"^sluice \d+\.\d+\.\d+")

    def test_check_good_config(self):
        port, admin = free_port(), free_port()
        path = self.write("good.yaml", default_config(port, admin, upstream_yaml("storefront", ["127.0.0.1:9080"])))
        t0 = time.monotonic()
        rc, out, err = self.run_sluice("-t", "-c", path)
        self.assertEqual(rc, 0, err)
        self.assertIn("configuration is valid", out)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(refused(port), "-t must not start listening")
        # The long forms too.
        rc, _, err = self.run_sluice("--test", "--config", path)
        self.assertEqual(rc, 0, err)

    def test_check_bad_config_prints_every_error_with_position(self):
        path = self.write("bad.yaml", (
            "workers: 1\n"                           # 1
            "listeners:\n"                           # 2
            "  - address: 127.0.0.1:18080\n"         # 3
            "client:\n"                              # 4
            "  header_timeout: 5\n"                  # 5: bare number, no unit
            "upstreams:\n"                           # 6
            "  sf:\n"                                # 7
            "    servers:\n"                         # 8
            "      - address: 127.0.0.1:9080\n"      # 9
            "    read_timout: 1s\n"                  # 10: typo
            "    connect_timeout: 2parsecs\n"        # 11: bad unit
            "routes:\n"                              # 12
            "  - name: all\n"                        # 13
            "    upstream: sf\n"))                   # 14
        rc, out, err = self.run_sluice("-t", "-c", path)
        self.assertEqual(rc, 1, (out, err))
        lines = [l for l in err.splitlines() if l.strip()]
        pos = re.compile(r"^%s:(\d+):(\d+): (.+)$" % re.escape(path))
        parsed = []
        for l in lines:
            m = pos.match(l)
            self.assertIsNotNone(m, "not FILE:LINE:COL: message: %r" % l)
            parsed.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        self.assertEqual([(l, c) for l, c, _ in parsed], [(5, 19), (10, 5), (11, 22)], err)
        self.assertIn("duration", parsed[0][2])
        self.assertIn("unknown key 'read_timout'", parsed[1][2])
        self.assertIn("did you mean 'read_timeout'", parsed[1][2])
        self.assertIn("duration", parsed[2][2])
        # Running (not just checking) a bad config fails the same way, before listening.
        rc, out, err2 = self.run_sluice("-c", path)
        self.assertEqual(rc, 1)
        self.assertEqual(err2, err)

    def test_missing_file_and_unknown_argument(self):
        rc, _, err = self.run_sluice("-t", "-c", os.path.join(self.tmp, "nope.yaml"))
        self.assertEqual(rc, 1)
        self.assertIn("nope.yaml", err)
        rc, _, err = self.run_sluice("--frobnicate")
        self.assertEqual(rc, 2)
        self.assertIn("unknown argument", err)
        self.assertIn("usage:", err)


# PROXY protocol v2 signature and helpers.
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src, dst, sport, dport, tlvs=b"", command=0x21):
    if command == 0x20:  # LOCAL
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        fam = 0x21
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    else:
        fam = 0x11
        addrs = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    block = addrs + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([command, fam]) + struct.pack("!H", len(block)) + block


class ProxyProtocolTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.demo = self.start_demo("sf1")
        port, admin, self.pport = free_port(), free_port(), free_port()
        text = default_config(port, admin, upstream_yaml("storefront", [self.demo.address]))
        plain = "listeners:\n  - address: 127.0.0.1:%d\n" % port
        self.assertIn(plain, text)
        text = text.replace(plain, plain + "  - address: 127.0.0.1:%d\n    proxy_protocol: true\n" % self.pport)
        self.s = self.start_sluice_text(text, port, admin)
        wait_port(self.pport, proc=self.s.proc)

    def echo(self, preface, extra_headers="", chunks=None):
        c = RawClient(self.pport)
        self.addCleanup(c.close)
        req = ("GET /__demo/echo HTTP/1.1\r\nHost: shop\r\n%s\r\n" % extra_headers).encode()
        if chunks:
            for part in chunks(preface + req):
                c.send(part)
                time.sleep(0.05)
        else:
            c.send(preface + req)
        status, headers, body = c.read_response()
        self.assertEqual(status, 200, body)
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        return c, seen

    def test_v1_tcp4_source_becomes_the_client_ip(self):
        c, seen = self.echo(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n",
                            extra_headers="X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n")
        self.assertEqual(seen["x-real-ip"], "203.0.113.7")
        # An untrusted client's own forwarding headers never reach the storefront.
        self.assertEqual(seen["x-forwarded-for"], "203.0.113.7")
        # The PROXY header comes once per connection; the next request keeps its address.
        c.send("GET /__demo/echo HTTP/1.1\r\nHost: shop\r\n\r\n")
        status, _, body = c.read_response()
        self.assertEqual(status, 200)
        seen2 = {k.lower(): v for k, v in json.loads(body)["headers"]}
        self.assertEqual(seen2["x-real-ip"], "203.0.113.7")
        ips = wait_until(lambda: [e["client_ip"] for e in self.s.access_log()
                                  if e["path"] == "/__demo/echo"], message="access log")
        self.assertIn("203.0.113.7", ips)

    def test_v1_tcp6(self):
        _, seen = self.echo(b"PROXY TCP6 2001:db8::7 ::1 51234 8080\r\n")
        self.assertEqual(seen["x-real-ip"], "2001:db8::7")

    def test_v1_unknown_keeps_the_peer(self):
        _, seen = self.echo(b"PROXY UNKNOWN\r\n")
        self.assertEqual(seen["x-real-ip"], "127.0.0.1")

    def test_v2_ipv4_with_tlv_and_split_across_packets(self):
        tlv = b"\x02" + struct.pack("!H", 9) + b"shop.test"  # PP2_TYPE_AUTHORITY, skipped
        pre = proxy_v2("198.51.100.23", "127.0.0.1", 40000, 443, tlvs=tlv)
        _, seen = self.echo(pre, chunks=lambda b: [b[:7], b[7:20], b[20:]])
        self.assertEqual(seen["x-real-ip"], "198.51.100.23")

    def test_v2_ipv6(self):
        _, seen = self.echo(proxy_v2("2001:db8:1::42", "2001:db8::1", 40000, 443))
        self.assertEqual(seen["x-real-ip"], "2001:db8:1::42")

    def test_v2_local_keeps_the_peer(self):
        _, seen = self.echo(proxy_v2(None, None, 0, 0, command=0x20))
        self.assertEqual(seen["x-real-ip"], "127.0.0.1")

    def test_connection_without_proxy_header_is_closed(self):
        for data in (b"GET /__demo/echo HTTP/1.1\r\nHost: shop\r\n\r\n",
                     b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: shop\r\n\r\n",
                     V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12):  # version 3
            c = RawClient(self.pport)
            self.addCleanup(c.close)
            c.send(data)
            self.assertTrue(c.closed(timeout=3), data)
            self.assertEqual(c.buf, b"", "no response may be sent: %r" % c.buf[:100])
        counter = json.loads(http_get(self.demo.port, "/__demo/counter")[2])["requests"]
        self.assertEqual(counter, 0, "nothing may reach the upstream")

    def test_plain_listener_does_not_read_proxy_headers(self):
        c = RawClient(self.s.port)
        self.addCleanup(c.close)
        c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\nHost: shop\r\n\r\n")
        status, _, _ = c.read_response()
        self.assertEqual(status, 400)
        _, headers, body = http_get(self.s.port, "/__demo/echo")
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        self.assertEqual(seen["x-real-ip"], "127.0.0.1")


class WorkersTest(ProxyTestCase):
    def test_two_workers_both_serve(self):
        demo = self.start_demo("sf1", threads=2)
        port, admin = free_port(), free_port()
        text = default_config(port, admin, upstream_yaml("storefront", [demo.address]))
        self.assertTrue(text.startswith("workers: 1\n"))
        s = self.start_sluice_text(text.replace("workers: 1\n", "workers: 2\n", 1), port, admin)
        status, _, body = http_get(admin, "/status")
        self.assertEqual(json.loads(body)["workers"], 2)
        t0 = time.monotonic()
        for i in range(200):
            # A new connection each time: SO_REUSEPORT hashes each to one worker's socket.
            status, _, body = http_get(port, "/api/items/%d" % i, timeout=5)
            self.assertEqual(status, 200, body)
        elapsed = time.monotonic() - t0
        # Upstream keep-alive pools are per worker and the requests were sequential, so each
        # worker that served holds exactly one connection to the demo.
        upstream_conns = {c[3] for c in tcp_sockets(demo.port)
                          if c[0] == "ESTAB" and c[4].endswith(":%d" % demo.port)}
        self.assertEqual(len(upstream_conns), 2, tcp_sockets(demo.port))
        self.assertGreaterEqual(len(os.listdir("/proc/%d/task" % s.pid)), 3)
        self.assertEqual(upstream_servers(s)[demo.address]["requests"], 200)
        print("\n  2 workers: 200 new connections in %.2fs" % elapsed)


    def test_second_sluice_on_a_busy_port_refuses_to_start(self):
        # Regression: with SO_REUSEPORT a second (or stale) sluice bound the same port and
        # silently took half of the first one's connections.
        demo = self.start_demo("sf1")
        port, admin = free_port(), free_port()
        self.start_sluice_text(default_config(port, admin, upstream_yaml("storefront", [demo.address])),
                               port, admin)
        other_admin = free_port()
        path = os.path.join(self.tmp, "second.yaml")
        with open(path, "w") as f:
            f.write(default_config(port, other_admin, upstream_yaml("storefront", [demo.address])))
        p = subprocess.run([SLUICE_BIN, "-c", path], capture_output=True, text=True, timeout=20,
                           cwd=self.tmp)
        self.assertEqual(p.returncode, 1)
        self.assertIn("Address already in use", p.stdout + p.stderr)

if __name__ == "__main__":
    unittest.main()
