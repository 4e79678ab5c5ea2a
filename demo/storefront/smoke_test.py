#!/usr/bin/env python3
"""Wire-level smoke test of the demo storefront (keep-alive, pipelining, framing, upgrade).

usage: smoke_test.py path/to/sluice-demo-storefront

Starts its own storefront on a free port, speaks raw HTTP/1.1 over sockets (so it sees exactly
what the server sends) and exits non-zero on the first failed check.
"""
import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time


class Reader:
    """Buffered reader that parses HTTP/1.1 responses off one socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, head=False):
        status_line = self.line().decode()
        m = re.match(r"HTTP/1\.1 (\d{3}) ", status_line)
        assert m, status_line
        status = int(m.group(1))
        headers = []
        while True:
            line = self.line()
            if not line:
                break
            name, value = line.decode().split(":", 1)
            headers.append((name, value.strip()))
        h = {n.lower(): v for n, v in headers}
        body = b""
        if head or status in (204, 304) or 100 <= status < 200:
            pass
        elif h.get("transfer-encoding") == "chunked":
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    assert self.line() == b""
                    break
                body += self.exact(size)
                assert self.exact(2) == b"\r\n"
        else:
            body = self.exact(int(h.get("content-length", "0")))
        return status, h, body

    def closed(self, timeout=2.0):
        self.sock.settimeout(timeout)
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    return s, Reader(s)


def req(method, target, headers=(), body=b"", version="1.1"):
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def pattern(n, start=0):
    return bytes(97 + (i % 26) for i in range(start, start + n))


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok  ", what)


def main():
    binary = sys.argv[1]
    proc = subprocess.Popen([binary, "--port", "0", "--threads", "2", "--name", "smoke"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"demo storefront smoke listening on 127\.0\.0\.1:(\d+)$", line.strip())
        check(m is not None, f"ready line: {line.strip()!r}")
        run(int(m.group(1)))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read()
        for line in err.splitlines():
            print("server:", line)
    check(rc == 0, "clean exit on SIGTERM")
    check("Sanitizer" not in err and "runtime error" not in err, "no sanitizer reports")


def run(port):
    s, r = connect(port)

    # Pipelining, including an async answer and a stream in the middle: answers stay in order.
    batch = (req("GET", "/api/items/1") + req("GET", "/api/slow?ms=100") + req("HEAD", "/") +
             req("GET", "/__demo/bytes?n=100000&chunked=1&chunk=999") + req("GET", "/healthz") +
             req("POST", "/api/cart", [("Cookie", "member=m1")], b'{"a":1}'))
    s.sendall(batch)
    st, h, b = r.response()
    check(st == 200 and json.loads(b)["id"] == "1" and h["x-served-by"] == "smoke", "pipelined item")
    st, h, b = r.response()
    check(st == 200 and json.loads(b) == {"slept_ms": 100}, "pipelined slow")
    st, h, b = r.response(head=True)
    check(st == 200 and int(h["content-length"]) > 0, "pipelined HEAD has length, no body")
    st, h, b = r.response()
    check(st == 200 and b == pattern(100000), "pipelined chunked bytes")
    st, h, b = r.response()
    check(st == 200 and b == b"ok", "pipelined healthz")
    st, h, b = r.response()
    check(json.loads(b) == {"ok": True, "member": "m1", "bytes": 7}, "pipelined cart")

    # Same thing one byte at a time.
    for ch in req("GET", "/api/items/zz/price"):
        s.send(bytes([ch]))
    st, h, b = r.response()
    check(json.loads(b)["id"] == "zz", "request split into 1-byte segments")

    # Chunked upload to echo with trailers, wire order and case preserved.
    body = os.urandom(70000)
    chunked = b""
    for i in range(0, len(body), 30000):
        part = body[i:i + 30000]
        chunked += b"%x\r\n" % len(part) + part + b"\r\n"
    chunked += b"0\r\nX-Trailer: t1\r\n\r\n"
    s.sendall(req("PUT", "/__demo/echo?x=%41", [("X-B", "2"), ("x-a", "1  "),
                                                 ("Transfer-Encoding", "chunked")], chunked))
    st, h, b = r.response()
    e = json.loads(b)
    check(e["method"] == "PUT" and e["path"] == "/__demo/echo?x=%41" and e["version"] == "1.1",
          "echo method/path/version")
    check(e["headers"] == [["Host", "test"], ["X-B", "2"], ["x-a", "1"],
                           ["Transfer-Encoding", "chunked"]], "echo headers in wire order")
    check(e["trailers"] == [["X-Trailer", "t1"]], "echo trailers")
    check(e["body_bytes"] == len(body) and e["body_sha256"] == hashlib.sha256(body).hexdigest(),
          "echo body hash")

    # Expect: 100-continue gets an interim answer before the body is sent.
    s.sendall(req("POST", "/__demo/echo", [("Expect", "100-continue"), ("Content-Length", "5")]))
    st, h, b = r.response()
    check(st == 100 and h["x-served-by"] == "smoke", "100 Continue")
    s.sendall(b"hello")
    st, h, b = r.response()
    check(json.loads(b)["body_bytes"] == 5, "body after 100 Continue")

    # Early hints, status codes without bodies, 405, 404.
    s.sendall(req("GET", "/__demo/early-hints"))
    st, h, b = r.response()
    check(st == 103 and "link" in h, "103 Early Hints")
    st, h, b = r.response()
    check(st == 200, "200 after early hints")
    for code in (204, 304):
        s.sendall(req("GET", f"/__demo/status/{code}"))
        st, h, b = r.response()
        check(st == code and "content-length" not in h and b == b"", f"status {code} no body")
    s.sendall(req("GET", "/__demo/status/503"))
    st, h, b = r.response()
    check(st == 503 and json.loads(b) == {"status": 503}, "status 503")
    s.sendall(req("PATCH", "/api/items/1"))
    st, h, b = r.response()
    check(st == 405 and h["allow"] == "GET, HEAD", "405 with Allow")
    s.sendall(req("GET", "/api/items/" + "x" * 65))
    st, h, b = r.response()
    check(st == 404, "404 for a 65-character id")

    # An Upgrade we do not accept leaves the connection speaking HTTP/1.1.
    s.sendall(req("GET", "/", [("Upgrade", "h2c"), ("Connection", "Upgrade")]) +
              req("GET", "/healthz"))
    st, h, b = r.response()
    check(st == 200, "refused upgrade answered")
    st, h, b = r.response()
    check(st == 200 and b == b"ok", "request after refused upgrade")

    # Connection: close ends the connection after the answer.
    s.sendall(req("GET", "/healthz", [("Connection", "close")]) + req("GET", "/healthz"))
    st, h, b = r.response()
    check(st == 200 and h.get("connection") == "close", "Connection: close honoured")
    check(r.closed(), "closed after Connection: close")
    s.close()

    # HTTP/1.0: close by default, keep-alive on request.
    s, r = connect(port)
    s.sendall(req("GET", "/healthz", [("Connection", "keep-alive")], version="1.0"))
    st, h, b = r.response()
    check(h.get("connection") == "keep-alive", "HTTP/1.0 keep-alive confirmed")
    s.sendall(req("GET", "/__demo/bytes?n=10&chunked=1", version="1.0"))
    st, h, b = r.response()
    check(h.get("connection") == "close" and h["content-length"] == "10" and b == pattern(10),
          "HTTP/1.0 gets Content-Length, not chunked, and close")
    check(r.closed(), "HTTP/1.0 closed")
    s.close()

    # Malformed requests: 400 and close; oversized target and headers: 414 / 431.
    for raw, code in ((b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
                      (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
                      (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
                      (req("GET", "/", [("X-Big", "v" * 70000)]), 431)):
        s, r = connect(port)
        s.sendall(raw)
        st, h, b = r.response()
        check(st == code and h.get("connection") == "close", f"{code} for a bad request")
        check(r.closed(), f"closed after {code}")
        s.close()

    # WebSocket upgrade: correct accept key, then a byte-level echo tunnel.
    s, r = connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(req("GET", "/__demo/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", key),
                                         ("Sec-WebSocket-Version", "13")]) + b"early")
    st, h, b = r.response()
    want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                         .encode()).digest()).decode()
    check(st == 101 and h["sec-websocket-accept"] == want, "101 with Sec-WebSocket-Accept")
    check(r.exact(5) == b"early", "bytes sent with the upgrade are echoed")
    blob = os.urandom(3 << 20)
    s.sendall(blob[:1 << 20])
    check(r.exact(1 << 20) == blob[:1 << 20], "1 MiB echoed through the tunnel")
    s.shutdown(socket.SHUT_WR)
    check(r.closed(), "tunnel closes after the client half-closes")
    s.close()

    # Half-close after a request still gets the answer.
    s, r = connect(port)
    s.sendall(req("GET", "/api/items/7"))
    s.shutdown(socket.SHUT_WR)
    st, h, b = r.response()
    check(st == 200 and r.closed(), "answer after half-close, then close")
    s.close()

    # The counter counts everything but its own reads.
    s, r = connect(port)
    s.sendall(req("GET", "/__demo/counter"))
    before = json.loads(r.response()[2])["requests"]
    s.sendall(req("GET", "/") * 3 + req("GET", "/__demo/counter"))
    for _ in range(3):
        r.response()
    after = json.loads(r.response()[2])["requests"]
    check(after - before == 3, "counter delta")

    # Health flip is process-wide (the other worker thread sees it too).
    s.sendall(req("POST", "/__demo/health?status=down"))
    r.response()
    s2, r2 = connect(port)
    codes = set()
    for _ in range(20):
        s3, r3 = connect(port)
        s3.sendall(req("GET", "/healthz"))
        codes.add(r3.response()[0])
        s3.close()
    check(codes == {503}, "healthz down on every worker")
    s.sendall(req("POST", "/__demo/health?status=up"))
    r.response()
    s.close()
    s2.close()


if __name__ == "__main__":
    main()
