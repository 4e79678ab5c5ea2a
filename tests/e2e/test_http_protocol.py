"""HTTP/1.x protocol behaviour through the proxy, checked on the wire with real clients.

Every test starts its own demo storefront and sluice; the raw-socket client sees exactly the bytes
sluice sends, and the demo's /__demo/echo shows exactly what reached the upstream.
"""
import base64
import hashlib
import json
import os
import re
import socket
import time

from harness import (CannedUpstream, ProxyTestCase, RawClient, curl, demo_counter, header,
                     read_until_close, upstream_yaml, wait_until)

HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def pattern(n):
    """The body /__demo/bytes?n=N serves: byte i is 'a' + i % 26."""
    return bytes(ord("a") + i % 26 for i in range(n))


def req(method, path, headers=(), body=b"", version="HTTP/1.1", host="sluice.test"):
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def names(headers):
    return [k.lower() for k, _ in headers]


def values(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


class ProtocolTestCase(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        super().tearDown()

    def start(self, extra="", name="sf"):
        self.demo = self.start_demo(name)
        self.sluice = self.start_sluice(upstream_yaml("storefront", [self.demo.address]), extra=extra)
        return self.sluice

    def client(self, port=None):
        c = RawClient(port or self.sluice.port, timeout=8.0)
        self.clients.append(c)
        return c

    def echo(self, c, headers=(), body=b"", method="GET", path="/__demo/echo"):
        """One request to the demo's echo on client `c`; returns (status, headers, echo json)."""
        c.send(req(method, path, headers, body))
        status, h, b = c.read_response()
        self.assertEqual(status, 200, b)
        return status, h, json.loads(b)


class KeepAliveAndPipelining(ProtocolTestCase):
    def test_keepalive_reuses_one_connection(self):
        s = self.start(name="ka-sf")
        before = demo_counter(self.demo)
        c = self.client()
        for i in range(4):
            c.send(req("GET", "/api/items/ka%d" % i))
            status, h, body = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual(header(h, "X-Served-By"), "ka-sf")
            self.assertNotEqual((header(h, "Connection") or "").lower(), "close")
            self.assertEqual(json.loads(body)["id"], "ka%d" % i)
        self.assertEqual(c.buf, b"", "no stray bytes between responses")
        self.assertFalse(c.closed(timeout=0.3), "keep-alive connection closed early")
        self.assertEqual(demo_counter(self.demo), before + 4, "upstream saw every request")

    def test_pipelined_requests_answered_in_order(self):
        self.start()
        c = self.client()
        paths = ["/__demo/echo?n=%d" % i for i in range(5)]
        # Mix a slow one in the middle: its answer must still come third.
        paths[2] = "/api/slow?ms=150"
        c.send(b"".join(req("GET", p) for p in paths))
        for i, p in enumerate(paths):
            status, h, body = c.read_response()
            self.assertEqual(status, 200, "response %d" % i)
            doc = json.loads(body)
            if p.startswith("/api/slow"):
                self.assertEqual(doc, {"slept_ms": 150})
            else:
                self.assertEqual(doc["path"], p, "response %d out of order" % i)
        c.send(req("GET", "/api/items/after"))
        status, _, body = c.read_response()
        self.assertEqual(json.loads(body)["id"], "after")


class Http10(ProtocolTestCase):
    def test_http10_response_not_chunked_and_closed(self):
        self.start()
        c = self.client()
        # A chunked upstream response must be re-framed for a 1.0 client (no chunked coding).
        c.send(req("GET", "/__demo/bytes?n=5000&chunked=1", version="HTTP/1.0", host=None))
        data, closed = read_until_close(c)
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertRegex(head.split(b"\r\n")[0], rb"^HTTP/1\.[01] 200 ")
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertEqual(body, pattern(5000))
        self.assertTrue(closed, "1.0 connection without keep-alive must close")

    def test_http10_content_length_and_close(self):
        self.start()
        c = self.client()
        c.send(req("GET", "/api/items/old", version="HTTP/1.0", host=None))
        status, h, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertIsNone(header(h, "Transfer-Encoding"))
        self.assertEqual(int(header(h, "Content-Length")), len(body))
        self.assertEqual(json.loads(body)["id"], "old")
        self.assertTrue(c.closed(timeout=3), "HTTP/1.0 without keep-alive closes")

    def test_http10_keepalive(self):
        self.start()
        c = self.client()
        for i in range(3):
            c.send(req("GET", "/api/items/k%d" % i, [("Connection", "keep-alive")],
                       version="HTTP/1.0", host=None))
            status, h, body = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual((header(h, "Connection") or "").lower(), "keep-alive")
            self.assertIsNone(header(h, "Transfer-Encoding"))
            self.assertEqual(json.loads(body)["id"], "k%d" % i)
        self.assertFalse(c.closed(timeout=0.3))
        # The upstream is spoken to in HTTP/1.1 with a Host header.
        c.send(req("GET", "/__demo/echo", [("Connection", "keep-alive")], version="HTTP/1.0",
                   host=None))
        status, h, body = c.read_response()
        doc = json.loads(body)
        self.assertEqual(doc["version"], "1.1")
        self.assertEqual(len(values(doc["headers"], "host")), 1)


class BodiesAndFraming(ProtocolTestCase):
    def test_chunked_request_body(self):
        self.start()
        c = self.client()
        chunks = [b"hello ", b"chunked ", os.urandom(3000), b"world"]
        body = b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in chunks) + b"0\r\n\r\n"
        _, _, doc = self.echo(c, [("Transfer-Encoding", "chunked")], body, method="POST")
        whole = b"".join(chunks)
        self.assertEqual(doc["body_bytes"], len(whole))
        self.assertEqual(doc["body_sha256"], hashlib.sha256(whole).hexdigest())
        self.assertEqual(values(doc["headers"], "transfer-encoding"), ["chunked"])
        self.assertEqual(values(doc["headers"], "content-length"), [])
        # The connection stays usable after a chunked body.
        _, _, doc = self.echo(c)
        self.assertEqual(doc["body_bytes"], 0)

    def test_chunked_upload_with_curl(self):
        s = self.start()
        data = os.urandom(300 * 1024)
        path = os.path.join(self.tmp, "upload.bin")
        with open(path, "wb") as f:
            f.write(data)
        rc, out, err = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@" + path,
                            s.url("/__demo/echo"))
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["body_bytes"], len(data))
        self.assertEqual(doc["body_sha256"], hashlib.sha256(data).hexdigest())

    def test_chunked_response_reframed(self):
        self.start()
        c = self.client()
        c.send(req("GET", "/__demo/bytes?n=100000&chunked=1&chunk=7000"))
        status, h, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(header(h, "Transfer-Encoding"), "chunked")
        self.assertIsNone(header(h, "Content-Length"))
        self.assertEqual(body, pattern(100000))
        # Exactly one terminating chunk: the next response parses cleanly.
        c.send(req("GET", "/__demo/bytes?n=0&chunked=1"))
        status, h, body = c.read_response()
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(c.buf, b"")

    def test_content_length_both_ways(self):
        self.start()
        c = self.client()
        payload = os.urandom(20000)
        _, h, doc = self.echo(c, [("Content-Length", str(len(payload)))], payload, method="PUT")
        self.assertEqual(doc["method"], "PUT")
        self.assertEqual(values(doc["headers"], "content-length"), [str(len(payload))])
        self.assertEqual(values(doc["headers"], "transfer-encoding"), [])
        self.assertEqual(doc["body_sha256"], hashlib.sha256(payload).hexdigest())
        c.send(req("GET", "/__demo/bytes?n=12345"))
        status, h, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(header(h, "Content-Length"), "12345")
        self.assertIsNone(header(h, "Transfer-Encoding"))
        self.assertEqual(body, pattern(12345))

    def test_head_has_no_body_but_keeps_content_length(self):
        self.start()
        c = self.client()
        c.send(req("HEAD", "/__demo/bytes?n=5000"))
        status, h, body = c.read_response(head_request=True)
        self.assertEqual(status, 200)
        self.assertEqual(header(h, "Content-Length"), "5000")
        self.assertIsNone(header(h, "Transfer-Encoding"))
        # No body bytes follow the head: the next response starts right away.
        c.send(req("GET", "/api/items/afterhead"))
        status, h, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["id"], "afterhead")

    def test_204_and_304_have_no_body_and_connection_reusable(self):
        self.start()
        c = self.client()
        for code in (204, 304, 204):
            c.send(req("GET", "/__demo/status/%d" % code))
            status, h, body = c.read_response()
            self.assertEqual(status, code)
            self.assertIsNone(header(h, "Transfer-Encoding"), "status %d" % code)
            c.send(req("GET", "/api/items/after%d" % code))
            status, h, body = c.read_response()
            self.assertEqual(status, 200, "connection unusable after %d" % code)
            self.assertEqual(json.loads(body)["id"], "after%d" % code)
        self.assertEqual(c.buf, b"")


class InterimResponses(ProtocolTestCase):
    def test_expect_100_continue(self):
        self.start()
        c = self.client()
        body = b"expect-body-" * 100
        c.send(req("POST", "/__demo/echo", [("Content-Length", str(len(body))),
                                             ("Expect", "100-continue")]))
        status, h, _ = c.read_response()
        self.assertEqual(status, 100, "client must get 100 Continue before sending the body")
        c.send(body)
        status, h, raw = c.read_response()
        self.assertEqual(status, 200)
        doc = json.loads(raw)
        self.assertEqual(doc["body_sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(values(doc["headers"], "expect"), [], "upstream must not see Expect")
        # Only one interim response: the connection carries on cleanly.
        c.send(req("GET", "/api/items/next"))
        status, _, raw = c.read_response()
        self.assertEqual((status, json.loads(raw)["id"]), (200, "next"))

    def test_expect_100_continue_with_curl(self):
        s = self.start()
        data = os.urandom(2 * 1024 * 1024)
        path = os.path.join(self.tmp, "up.bin")
        with open(path, "wb") as f:
            f.write(data)
        # curl sends Expect: 100-continue for a large body and waits up to 1 s for the 100.
        rc, out, err = curl("-v", "--expect100-timeout", "5", "--data-binary", "@" + path,
                            s.url("/__demo/echo"))
        self.assertEqual(rc, 0, err)
        self.assertIn("Expect: 100-continue", err)
        self.assertIn("HTTP/1.1 100", err)
        doc = json.loads(out)
        self.assertEqual(doc["body_sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(values(doc["headers"], "expect"), [])

    def test_103_early_hints_forwarded_before_200(self):
        self.start()
        c = self.client()
        c.send(req("GET", "/__demo/early-hints?ms=600"))
        t0 = time.monotonic()
        status, h, _ = c.read_response()
        hint_time = time.monotonic() - t0
        self.assertEqual(status, 103)
        self.assertIn("rel=preload", header(h, "Link") or "")
        self.assertLess(hint_time, 0.5, "103 held back until the final response")
        status, h, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertIn(b"early hints", body)

    def test_no_1xx_to_http10_client(self):
        self.start()
        c = self.client()
        c.send(req("GET", "/__demo/early-hints", version="HTTP/1.0", host=None))
        data, _ = read_until_close(c)
        self.assertNotIn(b" 103 ", data.split(b"\r\n")[0])
        self.assertEqual(data.count(b"HTTP/1."), 1, data[:300])


class HopByHop(ProtocolTestCase):
    def test_hop_by_hop_removed_toward_upstream(self):
        self.start()
        c = self.client()
        _, _, doc = self.echo(c, [("Connection", "keep-alive, X-Hop-Secret"),
                                  ("X-Hop-Secret", "do-not-forward"),
                                  ("Keep-Alive", "timeout=5"),
                                  ("TE", "trailers"),
                                  ("Proxy-Connection", "keep-alive"),
                                  ("Trailer", "X-Foo"),
                                  ("X-End-To-End", "kept")])
        seen = names(doc["headers"])
        for hop in ("x-hop-secret", "keep-alive", "te", "proxy-connection", "trailer"):
            self.assertNotIn(hop, seen, "%s reached the upstream" % hop)
        self.assertNotIn("X-Hop-Secret", values(doc["headers"], "connection"))
        for v in values(doc["headers"], "connection"):
            self.assertNotIn("x-hop-secret", v.lower())
        self.assertEqual(values(doc["headers"], "x-end-to-end"), ["kept"])

    def test_hop_by_hop_removed_toward_client(self):
        up = CannedUpstream(b"HTTP/1.1 200 OK\r\n"
                            b"Connection: X-Up-Hop\r\n"
                            b"X-Up-Hop: private\r\n"
                            b"Keep-Alive: timeout=5, max=100\r\n"
                            b"Proxy-Connection: keep-alive\r\n"
                            b"X-Up-Kept: public\r\n"
                            b"Content-Length: 2\r\n\r\nok")
        self.addCleanup(up.stop)
        s = self.start_sluice(upstream_yaml("storefront", [up.address]))
        c = RawClient(s.port)
        self.clients.append(c)
        for _ in range(2):
            c.send(req("GET", "/hop"))
            status, h, body = c.read_response()
            self.assertEqual((status, body), (200, b"ok"))
            seen = names(h)
            for hop in ("x-up-hop", "keep-alive", "proxy-connection"):
                self.assertNotIn(hop, seen, "%s reached the client" % hop)
            for v in values(h, "connection"):
                self.assertNotIn("x-up-hop", v.lower())
            self.assertEqual(header(h, "X-Up-Kept"), "public")


    def test_obs_fold_after_interim_response_rejected(self):
        # Regression: the obs-fold screen stopped at the first blank line of a read, so a final
        # response arriving in the same read as a 100 slipped a folded header through.
        up = CannedUpstream(b"HTTP/1.1 100 Continue\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\n"
                            b"X-A: one\r\n two\r\n"
                            b"Content-Length: 2\r\n\r\nok")
        self.addCleanup(up.stop)
        s = self.start_sluice(upstream_yaml("storefront", [up.address]))
        c = RawClient(s.port)
        self.clients.append(c)
        c.send(req("GET", "/fold"))
        status, h, body = c.read_response()
        self.assertEqual(status, 502)
        self.assertIsNone(header(h, "X-A"))

class ClientIdentity(ProtocolTestCase):
    def test_forwarded_headers_set(self):
        self.start()
        c = self.client()
        _, _, doc = self.echo(c)
        hs = doc["headers"]
        self.assertEqual(values(hs, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(values(hs, "x-real-ip"), ["127.0.0.1"])
        self.assertEqual(values(hs, "x-forwarded-proto"), ["http"])

    def test_spoofed_forwarded_headers_from_untrusted_peer_dropped(self):
        self.start()  # default test config: no trusted_proxies
        c = self.client()
        _, _, doc = self.echo(c, [("X-Forwarded-For", "203.0.113.9"),
                                  ("X-Real-IP", "203.0.113.7"),
                                  ("X-Forwarded-Proto", "https")])
        hs = doc["headers"]
        self.assertEqual(values(hs, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(values(hs, "x-real-ip"), ["127.0.0.1"])
        self.assertEqual(values(hs, "x-forwarded-proto"), ["http"])
        self.assertNotIn("203.0.113", json.dumps(hs))

    def test_forwarded_for_from_trusted_proxy(self):
        self.start(extra="trusted_proxies: [127.0.0.1/32]\n")
        c = self.client()
        _, h, doc = self.echo(c, [("X-Forwarded-For", "203.0.113.9")])
        hs = doc["headers"]
        self.assertEqual(values(hs, "x-real-ip"), ["203.0.113.9"])
        self.assertEqual(values(hs, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"])
        rid = header(h, "X-Request-Id")
        line = wait_until(lambda: [e for e in self.sluice.access_log() if e["request_id"] == rid],
                          message="access log line")[0]
        self.assertEqual(line["client_ip"], "203.0.113.9")


class RequestIdAndTracing(ProtocolTestCase):
    def test_request_id_generated_when_absent(self):
        self.start()
        c = self.client()
        _, h, doc = self.echo(c)
        rid = header(h, "X-Request-Id")
        self.assertRegex(rid or "", HEX32)
        self.assertEqual(values(doc["headers"], "x-request-id"), [rid])
        _, h2, _ = self.echo(c)
        self.assertNotEqual(header(h2, "X-Request-Id"), rid, "ids are per request")

    def test_request_id_propagated(self):
        self.start()
        c = self.client()
        _, h, doc = self.echo(c, [("X-Request-Id", "order-7f3a-2024_01.x")])
        self.assertEqual(values(doc["headers"], "x-request-id"), ["order-7f3a-2024_01.x"])
        self.assertEqual(values(h, "x-request-id"), ["order-7f3a-2024_01.x"])

    def test_invalid_request_id_replaced(self):
        self.start()
        c = self.client()
        for bad in ("has spaces in it", "<script>", "x" * 300, "quo\"te"):
            _, h, doc = self.echo(c, [("X-Request-Id", bad)])
            rid = header(h, "X-Request-Id")
            self.assertRegex(rid or "", HEX32, "invalid id %r not replaced" % bad[:20])
            self.assertEqual(values(doc["headers"], "x-request-id"), [rid])

    def test_traceparent_propagated_when_valid(self):
        self.start()
        c = self.client()
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        _, _, doc = self.echo(c, [("traceparent", tp)])
        self.assertEqual(values(doc["headers"], "traceparent"), [tp])
        # Without start_traces, none is invented, and an invalid one is not passed on.
        _, _, doc = self.echo(c)
        self.assertEqual(values(doc["headers"], "traceparent"), [])
        _, _, doc = self.echo(c, [("traceparent", "00-zzzz-bad-01")])
        self.assertEqual(values(doc["headers"], "traceparent"), [])

    def test_traceparent_started_when_configured(self):
        self.start(extra="tracing:\n  start_traces: true\n")
        c = self.client()
        _, _, doc = self.echo(c)
        tps = values(doc["headers"], "traceparent")
        self.assertEqual(len(tps), 1)
        self.assertRegex(tps[0], TRACEPARENT)
        self.assertNotEqual(TRACEPARENT.match(tps[0]).group(1), "0" * 32)
        # A valid incoming one is kept as is, an invalid one replaced by a fresh trace.
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        _, _, doc = self.echo(c, [("traceparent", tp)])
        self.assertEqual(values(doc["headers"], "traceparent"), [tp])
        _, _, doc = self.echo(c, [("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")])
        tps = values(doc["headers"], "traceparent")
        self.assertEqual(len(tps), 1)
        self.assertRegex(tps[0], TRACEPARENT)
        self.assertNotIn("0" * 32, tps[0])


class WebSocket(ProtocolTestCase):
    def test_websocket_upgrade_tunnelled(self):
        self.start()
        c = self.client()
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(req("GET", "/__demo/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", key),
                                         ("Sec-WebSocket-Version", "13")]))
        status, h, _ = c.read_response()
        self.assertEqual(status, 101)
        self.assertEqual((header(h, "Upgrade") or "").lower(), "websocket")
        self.assertIn("upgrade", (header(h, "Connection") or "").lower())
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.assertEqual(header(h, "Sec-WebSocket-Accept"), want)
        # The demo echoes every tunnel byte; raw, binary, several rounds, both directions.
        for msg in (b"\x81\x05hello", bytes(range(256)), b"GET / HTTP/1.1\r\n\r\n", os.urandom(100000)):
            c.send(msg)
            got = b""
            c.sock.settimeout(5)
            while len(got) < len(msg):
                got += c.buf
                c.buf = b""
                if len(got) < len(msg):
                    c._fill()
            self.assertEqual(got, msg)
        # Closing our side ends the tunnel: the proxy closes toward us too.
        c.sock.shutdown(1)
        self.assertTrue(c.closed(timeout=5))

    def test_tunnel_bytes_and_the_clients_eof_in_one_read_reach_the_upstream(self):
        # Regression: the tunnel's half-close shut the upstream socket down before the bytes
        # read with it, which waited for the end of the loop turn (WriteBatch), were written.
        self.start()
        for i in range(10):
            c = self.client()
            c.send(req("GET", "/__demo/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                             ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
                                             ("Sec-WebSocket-Version", "13")]))
            status, _, _ = c.read_response()
            self.assertEqual(status, 101)
            # Exactly one read buffer (64 KiB): libuv reads on after a full buffer and finds the
            # EOF in the same turn; after a short read it would leave the EOF to the next turn.
            msg = (b"last words %d " % i).ljust(64 * 1024, b".")
            c.sock.sendall(msg)
            c.sock.shutdown(socket.SHUT_WR)
            data, closed = read_until_close(c, timeout=5)
            self.assertEqual(data, msg, "round %d" % i)
            self.assertTrue(closed)


class HalfClose(ProtocolTestCase):
    def test_answer_made_in_the_turn_of_the_clients_eof_leaves_before_the_close(self):
        # Regression: an answer the proxy made at once (here the admin's /status) waited for the
        # end of the loop turn (WriteBatch), and the client's EOF read in the same turn closed the
        # connection first: the client got nothing. closeNow() now writes what flush() left.
        s = self.start()
        for i in range(20):
            c = self.client(s.admin_port)
            # Exactly one read buffer (64 KiB) with the body: libuv reads on after a full buffer
            # and finds the EOF in the same turn.
            head = b"GET /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: %05d\r\n\r\n"
            n = 64 * 1024 - len(head % 0)
            c.sock.sendall(head % n + b"x" * n)
            c.sock.shutdown(socket.SHUT_WR)
            status, _, body = c.read_response()
            self.assertEqual(status, 200, "round %d: %r" % (i, body[:200]))
            self.assertIn(b"version", body)


class HeaderOrderAndCase(ProtocolTestCase):
    def test_header_order_and_case_preserved_upstream(self):
        self.start()
        c = self.client()
        sent = [("User-Agent", "order-test/1"), ("x-lower-case", "1"), ("X-UPPER-CASE", "2"),
                ("Accept", "*/*"), ("X-MiXeD-CaSe", "3"), ("Cookie", "member=m1; device=d1"),
                ("aCCept-LANGuage", "en")]
        _, _, doc = self.echo(c, sent)
        forwarded = [(k, v) for k, v in doc["headers"] if k in {n for n, _ in sent}]
        self.assertEqual(forwarded, sent)
        # Host stays first, as the client sent it.
        self.assertEqual(doc["headers"][0], ["Host", "sluice.test"])


class AccessLog(ProtocolTestCase):
    def test_access_log_line_fields(self):
        s = self.start()
        c = self.client()
        body = b"x" * 1234
        rid = "access-log-check-1"
        c.send(req("POST", "/__demo/echo?q=1", [("X-Request-Id", rid),
                                                ("Content-Length", str(len(body)))], body))
        status, h, resp_body = c.read_response()
        self.assertEqual(status, 200)
        line = wait_until(lambda: [e for e in s.access_log() if e.get("request_id") == rid],
                          message="access log line")[0]
        for field in ("time", "request_id", "client_ip", "method", "path", "status", "bytes_in",
                      "bytes_out", "upstream", "upstream_time", "total_time"):
            self.assertIn(field, line)
        self.assertEqual(line["client_ip"], "127.0.0.1")
        self.assertEqual(line["method"], "POST")
        self.assertEqual(line["path"], "/__demo/echo?q=1")
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["bytes_in"], len(body))
        self.assertEqual(line["bytes_out"], len(resp_body))
        self.assertEqual(line["upstream"], self.demo.address)
        self.assertIsInstance(line["upstream_time"], float)
        self.assertGreaterEqual(line["upstream_time"], 0)
        self.assertGreaterEqual(line["total_time"], line["upstream_time"])
        self.assertLess(line["total_time"], 10)
        # A locally answered error is logged too, with no upstream.
        c2 = self.client()
        c2.send(b"BROKEN\r\n\r\n")
        status, h, err_body = c2.read_response()
        self.assertEqual(status, 400)
        rid2 = header(h, "X-Request-Id")
        self.assertRegex(rid2 or "", HEX32)
        self.assertIn(("request_id: %s" % rid2).encode(), err_body)
        line = wait_until(lambda: [e for e in s.access_log() if e.get("request_id") == rid2],
                          message="access log line for the 400")[0]
        self.assertEqual(line["status"], 400)
        self.assertIsNone(line["upstream"])


if __name__ == "__main__":
    import unittest
    unittest.main()
