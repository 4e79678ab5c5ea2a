#!/usr/bin/env python3
"""Labelled flash-sale traffic through the real proxy (issue 4's evaluation).

Starts the demo storefront and sluice with conf/flash-sale.yaml (addresses, secrets and the access
log rewritten for a private run), then replays a sale: human shoppers and several scalper kinds
hit the same item ids at the same time. Every client is labelled, so the program can report:

  * scalper checkout attempts challenged or blocked before they succeeded (target >= 95 %),
  * human sessions ever challenged (target <= 1 %) and ever blocked (target <= 0.1 %).

Humans: browse -> item detail -> item API (XHR) -> cart -> checkout, with log-normal think times
(scaled by --time-scale so a run takes ~a minute instead of an evening), real Chrome / Firefox /
Safari header orders and case, a device cookie from the storefront SDK and a member cookie; a
share of them sit behind a few carrier-NAT addresses. A challenged human solves it like a
browser does (proof of work) and goes on.

Scalper kinds:
  scripted       python-requests / curl / Go clients polling the item API and posting checkout
  headless       HeadlessChrome with Chrome's header order, full flow at machine speed; solves PoW
  ip_farm        IP-rotating device farm: a new address (and device) per attempt, browser headers
  account_farm   many members sharing a few devices and shipping addresses; solves PoW
  direct         browser-correct headers, straight to checkout (no item view)
  regular        browser-correct headers, full flow with perfectly regular timing
  copycat        Chrome's headers and values in another client's order

Usage: tests/sim/flash_sale_sim.py [--build build] [--humans 300] [--duration 40] [--short]
Exits 1 when a target is missed (so the short variant can run under ctest).
"""
import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/124.0.0.0 Safari/537.36")
CHROME_HINTS = [("sec-ch-ua", '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'),
                ("sec-ch-ua-mobile", "?0"), ("sec-ch-ua-platform", '"Windows"')]
FIREFOX_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI_UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.4 Safari/605.1.15")
HEADLESS_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "HeadlessChrome/124.0.0.0 Safari/537.36")
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


# ---- browsers' header sets, in their wire order and case (Host and Connection come first)

def browser_headers(kind, nav, cookie, ua=None, body_type=None, referer=None):
    """Headers of a navigation (nav=True) or a fetch() of JSON, as browser `kind` writes them."""
    h = []
    if kind in ("chrome", "headless"):
        ua = ua or (HEADLESS_UA if kind == "headless" else CHROME_UA)
        if nav:
            h += CHROME_HINTS + [("Upgrade-Insecure-Requests", "1"), ("User-Agent", ua),
                                 ("Accept", HTML_ACCEPT), ("Sec-Fetch-Site", "same-origin"),
                                 ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-User", "?1"),
                                 ("Sec-Fetch-Dest", "document")]
        else:
            h += [CHROME_HINTS[0], CHROME_HINTS[1], ("User-Agent", ua)]
            if body_type:
                h.append(("Content-Type", body_type))
            h += [("Accept", "application/json"), CHROME_HINTS[2], ("Origin", "http://shop.example"),
                  ("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "cors"),
                  ("Sec-Fetch-Dest", "empty")]
        if referer:
            h.append(("Referer", "http://shop.example" + referer))
        h += [("Accept-Encoding", "gzip, deflate, br, zstd"), ("Accept-Language", "en-GB,en;q=0.9")]
    elif kind == "firefox":
        h += [("User-Agent", FIREFOX_UA),
              ("Accept", HTML_ACCEPT if nav else "application/json"),
              ("Accept-Language", "en-GB,en;q=0.5"), ("Accept-Encoding", "gzip, deflate, br")]
        if body_type:
            h.append(("Content-Type", body_type))
        if referer:
            h.append(("Referer", "http://shop.example" + referer))
        if nav:
            h += [("Upgrade-Insecure-Requests", "1"), ("Sec-Fetch-Dest", "document"),
                  ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-User", "?1")]
        else:
            h += [("Sec-Fetch-Dest", "empty"), ("Sec-Fetch-Mode", "cors"), ("Sec-Fetch-Site", "same-origin")]
    elif kind == "safari":
        h += [("Accept", HTML_ACCEPT if nav else "application/json")]
        if body_type:
            h.append(("Content-Type", body_type))
        h += [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "navigate" if nav else "cors"),
              ("User-Agent", SAFARI_UA)]
        if referer:
            h.append(("Referer", "http://shop.example" + referer))
        h += [("Sec-Fetch-Dest", "document" if nav else "empty"),
              ("Accept-Language", "en-GB,en;q=0.9"), ("Accept-Encoding", "gzip, deflate, br")]
    if cookie:
        h.append(("Cookie", cookie))
    return h


def script_headers(tool, cookie):
    ua = {"requests": "python-requests/2.31.0", "curl": "curl/8.5.0", "go": "Go-http-client/1.1",
          "okhttp": "okhttp/4.12.0"}[tool]
    h = [("User-Agent", ua), ("Accept-Encoding", "gzip, deflate"), ("Accept", "*/*")]
    if cookie:
        h.append(("Cookie", cookie))
    return h


def copycat_headers(cookie, nav):
    """Every header Chrome sends, with Chrome's values, in python-requests' order."""
    h = [("User-Agent", CHROME_UA), ("Accept-Encoding", "gzip, deflate, br, zstd"),
         ("Accept", HTML_ACCEPT if nav else "application/json"), ("Accept-Language", "en-GB,en;q=0.9"),
         ("Sec-Fetch-Dest", "document" if nav else "empty"), ("Sec-Fetch-Mode", "navigate" if nav else "cors"),
         ("Sec-Fetch-Site", "same-origin")] + CHROME_HINTS
    if cookie:
        h.append(("Cookie", cookie))
    return h


# ---- a tiny HTTP/1.1 client that keeps header order exactly

# Called as REQUEST_OBSERVER(method, path, status, seconds) after every request when set
# (bench/soak records statuses and latencies through it; 599 = the connection failed).
REQUEST_OBSERVER = None


class Conn:
    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        self.buf = b""

    def request(self, method, path, headers, xff, body=None):
        if REQUEST_OBSERVER is None:
            return self._request(method, path, headers, xff, body)
        t0 = time.monotonic()
        result = self._request(method, path, headers, xff, body)
        REQUEST_OBSERVER(method, path, result[0], time.monotonic() - t0)
        return result

    def _request(self, method, path, headers, xff, body=None):
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                lines = ["%s %s HTTP/1.1" % (method, path), "Host: shop.example", "Connection: keep-alive"]
                hs = list(headers)
                if body is not None:
                    hs.insert(0, ("Content-Length", str(len(body))))
                hs.append(("X-Forwarded-For", xff))  # the CDN's, after the client's own headers
                lines += ["%s: %s" % kv for kv in hs]
                data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body.encode() if body else b"")
                self.sock.sendall(data)
                return self._response()
            except (OSError, ConnectionError):
                self.close()
                if attempt:
                    return 599, {}, b""

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("closed")
        self.buf += d

    def _response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        if "content-length" in hdrs:
            n = int(hdrs["content-length"][0])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif "chunked" in ",".join(hdrs.get("transfer-encoding", [])):
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            body = b""
        if "close" in ",".join(hdrs.get("connection", [])).lower():
            self.close()
        return status, hdrs, body

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None


def solve_pow(ticket, bits):
    raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
    nonce = raw[12:28].hex().encode()
    n = 0
    while True:
        d = hashlib.sha256(nonce + str(n).encode()).digest()
        if int.from_bytes(d[:8], "big") >> (64 - bits) == 0:
            return n
        n += 1


def challenge_of(status, body):
    """('challenge', level, ticket, bits) / ('block',) / ('limit',) / None for a pass-through."""
    if status == 429 or status == 503:
        try:
            j = json.loads(body)
            if "challenge" in j:
                return ("challenge", j["challenge"], j["ticket"], j.get("difficulty", 0))
        except ValueError:
            pass
        return ("limit",)
    if status == 403:
        if body.startswith(b"<!doctype") or body.startswith(b"<!DOCTYPE"):
            t = re.search(rb'var T="([^"]+)"', body)
            d = re.search(rb",D=(\d+)", body)
            return ("challenge", "pow", t.group(1).decode() if t else "", int(d.group(1)) if d else 0)
        try:
            j = json.loads(body)
        except ValueError:
            return ("block",)
        if "challenge" in j:
            return ("challenge", j["challenge"], j["ticket"], j.get("difficulty", 0))
        return ("block",)
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.humans = {}        # session id -> {"challenged": bool, "blocked": bool, "limited": bool, "checkout": ok?}
        self.scalper = {}       # kind -> counters
        self.examples = {}

    def scalper_attempt(self, kind, outcome, solved):
        """`outcome`: how the checkout ended; `solved`: a challenge was met (and solved) on the way."""
        with self.lock:
            c = self.scalper.setdefault(kind, {"attempts": 0, "stopped": 0, "challenged": 0, "blocked": 0,
                                               "limited": 0, "succeeded": 0, "solved_then_through": 0,
                                               "risk_seen": 0, "risk_stopped": 0})
            c["attempts"] += 1
            if outcome != "limit":
                c["risk_seen"] += 1
                if outcome in ("challenge", "block") or solved:
                    c["risk_stopped"] += 1
            if outcome in ("challenge", "block", "limit") or solved:
                c["stopped"] += 1
            if outcome in ("challenge", "block", "limit"):
                c[{"challenge": "challenged", "block": "blocked", "limit": "limited"}[outcome]] += 1
            else:
                c["succeeded"] += 1
                if solved:
                    c["solved_then_through"] += 1


class Client:
    """One labelled actor with its own connection, cookies and forwarded address."""

    def __init__(self, sim, ip, device, member, address=None):
        self.sim = sim
        self.conn = Conn(sim.port)
        self.ip = ip
        self.device = device
        self.member = member
        self.address = address
        self.token = None

    def cookie(self):
        parts = []
        if self.member:
            parts.append("member=" + self.member)
        if self.device:
            parts.append("device=" + self.device)
        if self.token:
            parts.append("sluice_pass=" + self.token)
        return "; ".join(parts)

    def send(self, method, path, headers, body=None):
        if self.address and method == "POST":
            headers = headers + [("X-Address-Hash", self.address)]
        st, h, b = self.conn.request(method, path, headers, self.ip, body)
        return st, h, b, challenge_of(st, b)

    def solve(self, ch, headers):
        """Answers a proof-of-work challenge like the interstitial's JavaScript; True on a token."""
        if ch[0] != "challenge" or not ch[3] or not ch[2]:
            return False
        n = solve_pow(ch[2], ch[3])
        form = "ticket=%s&counter=%d" % (ch[2], n)
        st, h, b = self.conn.request("POST", "/.sluice/pow",
                                     headers + [("Content-Type", "application/x-www-form-urlencoded")],
                                     self.ip, form)
        if st == 200:
            for sc in h.get("set-cookie", []):
                if sc.startswith("sluice_pass="):
                    self.token = sc.split(";")[0].split("=", 1)[1]
                    return True
        return False


class Sim:
    def __init__(self, args):
        self.args = args
        self.stats = Stats()
        self.stop_at = 0
        self.rng = random.Random(args.seed)
        self.items = [str(i) for i in range(1, 6)]

    # -- processes

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix="sluice-sim-")
        build = os.path.abspath(self.args.build)
        self.port, self.admin, self.demo_port = free_port(), free_port(), free_port()
        self.demo = subprocess.Popen([os.path.join(build, "demo", "sluice-demo-storefront"), "--host",
                                      "127.0.0.1", "--port", str(self.demo_port), "--threads", "1", "--quiet"])
        wait_port(self.demo_port)
        text = open(os.path.join(ROOT, self.args.config)).read()
        for key, name in (("conf/risk.key", "risk.key"), ("conf/verifier.key", "verifier.key"),
                          ("conf/admin.token", "admin.token")):
            with open(os.path.join(self.tmp, name), "w") as f:
                f.write(os.urandom(32).hex())
            text = text.replace(key, os.path.join(self.tmp, name))
        text = (text.replace("127.0.0.1:8080", "127.0.0.1:%d" % self.port)
                .replace("127.0.0.1:9901", "127.0.0.1:%d" % self.admin)
                .replace("127.0.0.1:9080", "127.0.0.1:%d" % self.demo_port)
                .replace("workers: auto", "workers: %d" % self.args.workers))
        text = re.sub(r"(?m)^  access: .*$", "  access: " + os.path.join(self.tmp, "access.log")
                      if self.args.access_log else "  access: off", text)
        text = re.sub(r"(?m)^  level: info$", "  level: warn", text)
        if self.args.risk_off:
            text = re.sub(r"(?m)^risk:\n", "risk:\n  enabled: false\n", text)
        text = self.adjust_config(text)
        cfg = os.path.join(self.tmp, "flash-sale.yaml")
        self.config_path = cfg
        with open(cfg, "w") as f:
            f.write(text)
        self.sluice = subprocess.Popen([os.path.join(build, "proxy", "sluice"), "-c", cfg], cwd=ROOT,
                                       stdout=open(os.path.join(self.tmp, "sluice.log"), "wb"),
                                       stderr=subprocess.STDOUT)
        wait_port(self.port)

    def adjust_config(self, text):
        """Hook for programs built on the simulation (bench/soak adds Redis): the config text."""
        return text

    def stop(self):
        for p in (self.sluice, self.demo):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- actors

    def think(self, rng, mean):
        time.sleep(min(rng.lognormvariate(0, 0.6) * mean * self.args.time_scale, 20))

    def human(self, idx, rng):
        nat = rng.random() < 0.3
        ip = ("100.64.0.%d" % (1 + idx % 4)) if nat else "81.%d.%d.%d" % (rng.randrange(1, 250), rng.randrange(256), rng.randrange(1, 255))
        c = Client(self, ip, "dev-h%05d" % idx, "mem-h%05d" % idx, "addr-h%05d" % idx)
        kind = rng.choices(["chrome", "firefox", "safari"], [0.65, 0.2, 0.15])[0]
        sid = idx
        rec = {"challenged": False, "blocked": False, "limited": False, "checkouts": 0, "ok": 0}
        with self.stats.lock:
            self.stats.humans[sid] = rec

        def step(method, path, nav, referer, body=None):
            for _ in range(3):
                hs = browser_headers(kind, nav, c.cookie(), referer=referer,
                                     body_type="application/json" if body else None)
                st, h, b, ch = c.send(method, path, hs, body)
                if ch is None:
                    return st
                if ch[0] == "block":
                    rec["blocked"] = True
                    with self.stats.lock:
                        self.stats.examples.setdefault("human_blocked", (path, kind, b[:200]))
                    return st
                if ch[0] == "limit":
                    rec["limited"] = True
                    return st
                rec["challenged"] = True
                with self.stats.lock:
                    self.stats.examples.setdefault("human_challenged", (path, kind, ch[1]))
                # A browser solves proof of work itself; external levels need the person: give up.
                if not c.solve(ch, browser_headers(kind, False, c.cookie())):
                    return st
            return st

        time.sleep(rng.random() * self.args.duration * 0.5)
        while time.time() < self.stop_at:
            step("GET", "/", True, None)
            self.think(rng, 2.0)
            for _ in range(rng.randint(1, 3)):
                item = rng.choice(self.items)
                step("GET", "/item/" + item, True, "/")
                self.think(rng, 1.0)
                step("GET", "/api/items/" + item, False, "/item/" + item)
                self.think(rng, 3.0)
            step("POST", "/api/cart", False, "/item/" + item, '{"item":"%s","qty":1}' % item)
            self.think(rng, 2.0)
            rec["checkouts"] += 1
            st = step("POST", "/api/items/%s/checkout" % item, False, "/item/" + item, '{"qty":1}')
            if 200 <= st < 300:
                rec["ok"] += 1
            self.think(rng, 8.0)
        c.conn.close()

    def scalper(self, kind, idx, rng):
        items = self.items
        time.sleep(rng.random() * 2 * self.args.time_scale)
        base_ip = "45.%d.%d.%d" % (idx % 200 + 1, rng.randrange(256), rng.randrange(1, 255))
        if kind == "account_farm":
            # One device and one shipping address, 8 member accounts taking turns.
            c = Client(self, base_ip, "dev-farm%03d" % idx, "mem-f%04d-0" % idx, "addr-farm%03d" % idx)
        else:
            c = Client(self, base_ip, "dev-s%05d" % idx, "mem-s%05d" % idx, "addr-s%05d" % idx)
        tool = rng.choice(["requests", "curl", "go", "okhttp"])
        # Paced near the per-member checkout limit (2/s), so the limits alone do not stop them.
        period = 2.0 * self.args.time_scale
        n = 0
        while time.time() < self.stop_at:
            n += 1
            item = items[n % len(items)]
            if kind == "ip_farm":
                c.ip = "5.%d.%d.%d" % (rng.randrange(1, 250), rng.randrange(256), rng.randrange(1, 255))
                c.device = "dev-rot%06d" % rng.randrange(10 ** 6)
                c.token = None
                c.conn.close()
            if kind == "account_farm":
                c.member = "mem-f%04d-%d" % (idx, n % 8)
            solve = kind in ("headless", "account_farm")

            def hdrs(nav, body=False):
                if kind == "scripted":
                    return script_headers(tool, c.cookie()) + ([("Content-Type", "application/json")] if body else [])
                if kind == "copycat":
                    return copycat_headers(c.cookie(), nav)
                return browser_headers("headless" if kind == "headless" else "chrome", nav, c.cookie(),
                                       body_type="application/json" if body else None,
                                       referer="/item/" + item)

            solved = [False]

            def call(method, path, nav, body=None):
                if kind == "regular":
                    time.sleep(period / 2)  # one request per tick: perfectly regular gaps
                st, h, b, ch = c.send(method, path, hdrs(nav, body is not None), body)
                if ch and ch[0] == "challenge" and solve and ch[3]:
                    if c.solve(ch, hdrs(False)):
                        solved[0] = True
                        st, h, b, ch = c.send(method, path, hdrs(nav, body is not None), body)
                return st, ch

            if kind in ("headless", "regular", "account_farm", "copycat"):
                call("GET", "/item/" + item, True)
                call("GET", "/api/items/" + item, False)
            elif kind == "scripted":
                call("GET", "/api/items/" + item, False)
            st, ch = call("POST", "/api/items/%s/checkout" % item, False, '{"qty":1}')
            outcome = ch[0] if ch else ("ok" if 200 <= st < 300 else "other")
            self.stats.scalper_attempt(kind, outcome, solved[0])
            if outcome == "ok":
                with self.stats.lock:
                    self.stats.examples.setdefault("scalper_through_" + kind, (item, n))
            if kind != "regular":
                time.sleep(period * (0.5 + rng.random()))
        c.conn.close()

    def run(self):
        a = self.args
        self.start()
        try:
            self.stop_at = time.time() + a.duration
            threads = []
            for i in range(a.humans):
                rng = random.Random(a.seed * 1000003 + i)
                threads.append(threading.Thread(target=self.human, args=(i, rng), daemon=True))
            kinds = ["scripted", "headless", "ip_farm", "account_farm", "direct", "regular", "copycat"]
            for i in range(a.scalpers):
                rng = random.Random(a.seed * 7919 + i)
                threads.append(threading.Thread(target=self.scalper, args=(kinds[i % len(kinds)], i, rng),
                                                daemon=True))
            for t in threads:
                t.start()
            for t in threads:
                t.join(a.duration + 60)
        finally:
            self.stop()
        return self.report()

    def report(self):
        s = self.stats
        hs = list(s.humans.values())
        n = len(hs)
        ch = sum(1 for h in hs if h["challenged"])
        bl = sum(1 for h in hs if h["blocked"])
        lim = sum(1 for h in hs if h["limited"])
        co = sum(h["checkouts"] for h in hs)
        ok = sum(h["ok"] for h in hs)
        tot = {k: sum(c[k] for c in s.scalper.values()) for k in (
            "attempts", "stopped", "challenged", "blocked", "limited", "succeeded", "solved_then_through",
            "risk_seen", "risk_stopped")}
        stopped_share = tot["stopped"] / tot["attempts"] if tot["attempts"] else 0
        risk_share = tot["risk_stopped"] / tot["risk_seen"] if tot["risk_seen"] else 0
        out = {
            "config": self.args.config,
            "humans": {"sessions": n, "challenged": ch, "blocked": lim and bl or bl, "limited": lim,
                       "challenged_share": ch / n if n else 0, "blocked_share": bl / n if n else 0,
                       "checkouts": co, "checkouts_ok": ok},
            "scalpers": {"by_kind": s.scalper, "total": tot, "stopped_share": stopped_share,
                         "risk_stopped_share": risk_share},
            "examples": {k: str(v) for k, v in s.examples.items()},
        }
        print(json.dumps(out, indent=2))
        print("\nflash-sale simulation (%s): %d human sessions, %d scalper checkout attempts" %
              (self.args.config, n, tot["attempts"]))
        print("  scalper checkout attempts challenged or blocked before success: %.1f %% (target >= 95 %%)"
              % (100 * stopped_share))
        print("    by the risk phase alone (attempts the limits let through): %.1f %%; got through after "
              "solving proof of work: %d; got through unchallenged: %d" %
              (100 * risk_share, tot["solved_then_through"], tot["succeeded"] - tot["solved_then_through"]))
        for k, c in sorted(s.scalper.items()):
            print("    %-13s %5d attempts  %5.1f %% stopped  (risk %5.1f %%; challenged %d, blocked %d, "
                  "limited %d, through %d of which after PoW %d)"
                  % (k, c["attempts"], 100 * c["stopped"] / max(1, c["attempts"]),
                     100 * c["risk_stopped"] / max(1, c["risk_seen"]), c["challenged"],
                     c["blocked"], c["limited"], c["succeeded"], c["solved_then_through"]))
        print("  human sessions ever challenged: %.2f %% (target <= 1 %%), ever blocked: %.2f %% "
              "(target <= 0.1 %%), rate-limited: %.2f %%" %
              (100 * ch / max(1, n), 100 * bl / max(1, n), 100 * lim / max(1, n)))
        met = stopped_share >= 0.95 and risk_share >= 0.95 and ch / max(1, n) <= 0.01 and bl / max(1, n) <= 0.001
        print("  targets %s" % ("met" if met else "MISSED"))
        return met


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--config", default="conf/flash-sale.yaml")
    p.add_argument("--humans", type=int, default=300)
    p.add_argument("--scalpers", type=int, default=70)
    p.add_argument("--duration", type=float, default=45)
    p.add_argument("--time-scale", type=float, default=0.25,
                   help="multiplies human think times and scalper periods (1 = real time)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--risk-off", action="store_true")
    p.add_argument("--short", action="store_true", help="a ~20 s run for ctest")
    a = p.parse_args()
    if a.short:
        a.humans, a.scalpers, a.duration = 120, 28, 15
    sys.exit(0 if Sim(a).run() else 1)


if __name__ == "__main__":
    main()
