"""Risk phase end to end through the real binary (issue 4): scoring, challenges, pass tokens,
the /.sluice/pow and /.sluice/verify endpoints, monitor mode, the TLS fingerprint header, the
admin explain call and metrics, and config errors. The headless-browser proof-of-work test is
at the bottom (skipped when chromium is not installed)."""
import hashlib
import hmac
import json
import os
import shutil
import textwrap
import time
import unittest
import urllib.parse

from harness import (ProxyTestCase, RawClient, admin_json, free_port, http_get, upstream_yaml,
                     default_config, wait_until, ROOT, SLUICE_BIN)
import subprocess

MASTER = "m" * 48
VERIFIER = "v" * 48

CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/124.0.0.0 Safari/537.36")


def chrome_headers(cookie=None, accept="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"):
    """Chrome 124's navigation headers in its wire order and case (after Host, Connection)."""
    h = [("sec-ch-ua", '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'),
         ("sec-ch-ua-mobile", "?0"),
         ("sec-ch-ua-platform", '"Windows"'),
         ("Upgrade-Insecure-Requests", "1"),
         ("User-Agent", CHROME_UA),
         ("Accept", accept),
         ("Sec-Fetch-Site", "none"),
         ("Sec-Fetch-Mode", "navigate"),
         ("Sec-Fetch-User", "?1"),
         ("Sec-Fetch-Dest", "document"),
         ("Accept-Encoding", "gzip, deflate, br, zstd"),
         ("Accept-Language", "en-GB,en;q=0.9")]
    if cookie:
        h.append(("Cookie", cookie))
    return h


def raw_request(port, method, path, headers, body=None):
    """One request with headers exactly in the given order: (status, headers, body)."""
    c = RawClient(port)
    try:
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port,
                 "Connection: close"]
        lines += ["%s: %s" % kv for kv in headers]
        if body is not None:
            lines.append("Content-Length: %d" % len(body))
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body.encode() if body else b"")
        c.send(data)
        return c.read_response()
    finally:
        c.close()


def log_for(sluice, pred, timeout=3.0):
    """Access-log lines matching `pred`, waiting for the 100 ms flush."""
    return wait_until(lambda: [e for e in sluice.access_log() if pred(e)], timeout=timeout,
                      message="access-log lines")


def hdr(headers, name):
    for k, v in (headers.items() if isinstance(headers, dict) else headers):
        if k.lower() == name.lower():
            return v
    return None


def solve_pow(ticket_nonce_hex, bits):
    n = 0
    while True:
        d = hashlib.sha256((ticket_nonce_hex + str(n)).encode()).digest()
        v = int.from_bytes(d, "big")
        if v >> (256 - bits) == 0:
            return n
        n += 1


def ticket_nonce_hex(ticket):
    raw = urllib.parse.unquote(ticket)
    b = __import__("base64").urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    return b[12:28].hex()


def risk_section(monitor=False, extra="", thresholds=None):
    thresholds = thresholds or ("[{score: 30, action: pow}, {score: 50, action: slider}, "
                                "{score: 70, action: sms}, {score: 90, action: block}]")
    return textwrap.dedent("""\
        trusted_proxies: [10.0.0.0/8]
        risk:
          master_secret_file: risk.key
          verifier_secret_file: verifier.key
          identity: {tls_fingerprint_header: X-TLS-Fingerprint}
          pow_difficulty: {pow: 8}
          profiles:
            - name: default
              monitor: %s
              thresholds: %s
        """ % ("true" if monitor else "false", thresholds)) + extra


ROUTES = textwrap.dedent("""\
    - name: checkout
      match:
        path: { regex: "^/api/items/[^/]+/checkout" }
      upstream: storefront
      risk: { class: checkout }
    - name: api
      match:
        path: { prefix: /api/ }
      upstream: storefront
      risk: { class: api }
    - name: item
      match:
        path: { prefix: /item/ }
      upstream: storefront
      risk: { class: item_detail }
    - name: open
      match:
        path: { prefix: /__demo/ }
      upstream: storefront
      risk: off
    - name: all
      match:
        path: { prefix: / }
      upstream: storefront
    """)


class RiskCase(ProxyTestCase):
    def write_secrets(self):
        with open(os.path.join(self.tmp, "risk.key"), "w") as f:
            f.write(MASTER + "\n")
        with open(os.path.join(self.tmp, "verifier.key"), "w") as f:
            f.write(VERIFIER + "\n")

    def start(self, monitor=False, extra="", thresholds=None):
        self.write_secrets()
        self.demo = self.start_demo()
        return self.start_sluice(upstream_yaml("storefront", [self.demo.address]), ROUTES,
                                 extra=risk_section(monitor, extra, thresholds))


class TestRiskPhase(RiskCase):
    def test_scripted_client_is_challenged_with_json(self):
        s = self.start()
        st, h, body = http_get(s.port, "/api/items/42", headers={
            "User-Agent": "python-requests/2.31", "Accept": "application/json"})
        self.assertIn(st, (403, 429), body)
        j = json.loads(body)
        self.assertIn(j["challenge"], ("pow", "slider", "sms"))
        self.assertTrue(j["ticket"])
        self.assertTrue(j["verify_url"].startswith("/.sluice/"))
        self.assertEqual(hdr(h, "Cache-Control"), "no-store")
        log = log_for(s, lambda e: e.get("path", "").startswith("/api/items/42"))
        self.assertTrue(log)
        line = json.dumps(log[-1])
        self.assertIn('"risk"', line)
        self.assertIn("ua.automation", line)

    def test_curl_navigation_gets_pow_page(self):
        s = self.start()
        st, h, body = http_get(s.port, "/", headers={"User-Agent": "curl/8.5.0", "Accept": "*/*"})
        self.assertEqual(st, 403)
        self.assertIn("text/html", hdr(h, "Content-Type"))
        self.assertIn(b"/.sluice/pow", body)

    def test_browser_header_order_passes(self):
        s = self.start()
        for path in ("/", "/item/42"):
            st, _, body = raw_request(s.port, "GET", path, chrome_headers("member=alice; device=d-alice"))
            self.assertEqual(st, 200, body[:300])
        entry = log_for(s, lambda e: e.get("path") == "/item/42")[-1]
        self.assertEqual(entry["risk"]["action"], "allow")
        self.assertLess(entry["risk"]["score"], 30)

    def test_copied_headers_in_wrong_order_are_scored(self):
        s = self.start()
        hs = chrome_headers()
        hs.reverse()  # every header a browser sends, in an order no browser uses
        st, _, _ = raw_request(s.port, "GET", "/item/7", hs)
        entry = log_for(s, lambda e: e.get("path") == "/item/7")[-1]
        self.assertIn("ua.header_order_mismatch", json.dumps(entry["risk"]))

    def test_forged_and_garbage_tokens_are_scored_never_crash(self):
        s = self.start()
        for tok in ["garbage", "A" * 126, "%00%ff", "x" * 5000, "AQI" + "B" * 123, ""]:
            st, _, _ = raw_request(s.port, "GET", "/item/1",
                                   chrome_headers("device=d-forge; sluice_pass=" + tok))
            self.assertIn(st, (200, 403))
        # Still alive and serving.
        st, _, _ = raw_request(s.port, "GET", "/", chrome_headers("device=d-ok"))
        self.assertEqual(st, 200)
        log_for(s, lambda e: e.get("risk", {}).get("token") == "malformed")
        toks = [e["risk"].get("token") for e in s.access_log() if e.get("risk")]
        self.assertIn("malformed", toks)

    def test_pow_solution_issues_token_that_lets_next_request_through(self):
        s = self.start()
        ua = [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"),
              ("Cookie", "device=d-pow")]
        st, _, body = raw_request(s.port, "GET", "/?x=5", ua)
        self.assertEqual(st, 403, body)
        j = json.loads(body)
        self.assertEqual(j["challenge"], "pow")
        bits = j["difficulty"]
        n = solve_pow(ticket_nonce_hex(j["ticket"]), bits)
        form = "ticket=%s&counter=%d" % (j["ticket"], n)
        st, h, body = raw_request(s.port, "POST", "/.sluice/pow",
                                  ua + [("Content-Type", "application/x-www-form-urlencoded")], form)
        self.assertEqual(st, 200, body)
        cookie = hdr(h, "Set-Cookie")
        self.assertTrue(cookie.startswith("sluice_pass="))
        token = cookie.split(";")[0].split("=", 1)[1]
        # Single use.
        st, _, body = raw_request(s.port, "POST", "/.sluice/pow",
                                  ua + [("Content-Type", "application/x-www-form-urlencoded")], form)
        self.assertEqual(st, 409, body)
        # The token lets the same client through.
        st, _, body = raw_request(s.port, "GET", "/?x=5",
                                  [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"),
                                   ("Cookie", "device=d-pow; sluice_pass=" + token)])
        self.assertEqual(st, 200, body)
        # ...but not another UA holding the copied cookie.
        st, _, _ = raw_request(s.port, "GET", "/?x=5",
                               [("User-Agent", "python-requests/2.31"), ("Accept", "application/json"),
                                ("Cookie", "device=d-pow; sluice_pass=" + token)])
        self.assertNotEqual(st, 200)
        m = http_get(s.admin_port, "/metrics")[2].decode()
        self.assertIn('sluice_risk_challenges_total{level="pow",result="passed"} 1', m)
        self.assertIn("sluice_risk_score_bucket", m)
        self.assertIn('sluice_risk_decisions_total{action="challenge",level="pow"}', m)

    def _external_ticket(self, s, device):
        # Ask for a slider-level challenge: enough automation signals for 50+.
        hs = [("User-Agent", "python-requests/2.31"), ("Accept", "application/json"),
              ("Cookie", "device=" + device)]
        for _ in range(6):
            st, _, body = raw_request(s.port, "GET", "/api/items/9", hs)
            j = json.loads(body) if st in (403, 429) else {}
            if j.get("challenge") in ("slider", "sms"):
                return j, hs
            if j.get("challenge") == "pow":
                continue
        self.fail("no external challenge issued: %r" % body)

    def _signed(self, ticket, level, result="pass", ts=None, key=VERIFIER):
        ts = str(int(time.time()) if ts is None else ts)
        canon = "\n".join(["sluice-verify-v1", ts, ticket, level, "ref-1", result])
        sig = "v1=" + hmac.new(key.encode(), canon.encode(), hashlib.sha256).hexdigest()
        body = "ticket=%s&level=%s&subject=ref-1&result=%s" % (ticket, level, result)
        return ts, sig, body

    def test_verifier_report_bad_signature_refused_good_one_issues_token(self):
        s = self.start()
        j, hs = self._external_ticket(s, "d-verify")
        level = j["challenge"]
        self.assertEqual(j["verify_url"], "/.sluice/verify")
        ts, sig, body = self._signed(j["ticket"], level, key="w" * 48)
        post = hs + [("Content-Type", "application/x-www-form-urlencoded"),
                     ("X-Sluice-Timestamp", ts), ("X-Sluice-Signature", sig)]
        st, h, b = raw_request(s.port, "POST", "/.sluice/verify", post, body)
        self.assertEqual(st, 401, b)
        self.assertIsNone(hdr(h, "Set-Cookie"))
        ts, sig, body = self._signed(j["ticket"], level)
        post = hs + [("Content-Type", "application/x-www-form-urlencoded"),
                     ("X-Sluice-Timestamp", ts), ("X-Sluice-Signature", sig)]
        st, h, b = raw_request(s.port, "POST", "/.sluice/verify", post, body)
        self.assertEqual(st, 200, b)
        token = hdr(h, "Set-Cookie").split(";")[0].split("=", 1)[1]
        st, _, b = raw_request(s.port, "POST", "/.sluice/verify", post, body)
        self.assertEqual(st, 409, b)  # single use
        st, _, b = raw_request(s.port, "GET", "/api/items/9",
                               hs[:2] + [("Cookie", "device=d-verify; sluice_pass=" + token)])
        self.assertEqual(st, 200, b)

    def test_stale_verifier_report_refused(self):
        s = self.start()
        j, hs = self._external_ticket(s, "d-stale")
        ts, sig, body = self._signed(j["ticket"], j["challenge"], ts=int(time.time()) - 3600)
        st, _, b = raw_request(s.port, "POST", "/.sluice/verify",
                               hs + [("X-Sluice-Timestamp", ts), ("X-Sluice-Signature", sig)], body)
        self.assertEqual(st, 408, b)

    def test_endpoint_misuse(self):
        s = self.start()
        self.assertEqual(http_get(s.port, "/.sluice/pow")[0], 405)
        self.assertEqual(http_get(s.port, "/.sluice/nope")[0], 404)
        st, _, _ = http_get(s.port, "/.sluice/pow", method="POST", body="ticket=zz&counter=1")
        self.assertEqual(st, 403)
        st, _, _ = http_get(s.port, "/.sluice/verify", method="POST", body="x" * 9000)
        self.assertEqual(st, 413)

    def test_monitor_mode_never_blocks(self):
        s = self.start(monitor=True)
        for i in range(30):
            st, _, _ = http_get(s.port, "/api/items/42/checkout", method="POST", body="{}",
                                headers={"User-Agent": "HeadlessChrome python-requests/2.31",
                                         "Accept": "application/json"})
            self.assertNotIn(st, (403, 429))
        log_for(s, lambda e: e.get("risk", {}).get("monitor") and e["risk"].get("would") != "allow")
        m = http_get(s.admin_port, "/metrics")[2].decode()
        self.assertIn('action="monitor_', m)

    def test_tls_fingerprint_header_stripped_from_untrusted_peer(self):
        s = self.start()
        st, _, body = raw_request(s.port, "GET", "/__demo/echo",
                                  chrome_headers() + [("X-TLS-Fingerprint", "t13d1516h2_forged")])
        self.assertEqual(st, 200)
        names = [h[0].lower() for h in json.loads(body)["headers"]]
        self.assertNotIn("x-tls-fingerprint", names)
        st, _, body = raw_request(s.port, "GET", "/item/3",
                                  chrome_headers() + [("X-TLS-Fingerprint", "t13d1516h2_forged")])
        self.assertEqual(st, 200)

    def test_decision_counts_add_up_across_workers(self):
        # Each worker thread counts its own decisions; the metric is their sum.
        self.write_secrets()
        self.demo = self.start_demo()
        port, admin = free_port(), free_port()
        text = default_config(port, admin, upstream_yaml("storefront", [self.demo.address]), ROUTES,
                              extra=risk_section(True, "", None))
        s = self.start_sluice_text(text.replace("workers: 1\n", "workers: 2\n", 1), port, admin)
        n = 40
        for i in range(n):  # a new connection each: both workers' listeners take some
            st, _, _ = http_get(s.port, "/api/items/%d" % i, headers={
                "User-Agent": "python-requests/2.31", "Accept": "application/json"})
            self.assertEqual(st, 200)  # monitor mode: scored, never challenged
        m = http_get(s.admin_port, "/metrics")[2].decode()
        total = 0
        for line in m.splitlines():
            if line.startswith("sluice_risk_decisions_total{action=\"") and \
                    not line.startswith("sluice_risk_decisions_total{action=\"monitor_"):
                total += int(float(line.rsplit(" ", 1)[1]))
        self.assertEqual(total, n, m)

    def test_explain_and_status(self):
        s = self.start()
        http_get(s.port, "/api/items/1", headers={"User-Agent": "curl/8", "Accept": "application/json",
                                                  "Cookie": "member=bob"})
        j = admin_json(s, "/risk/explain?member=bob")
        self.assertTrue(j["known"])
        self.assertIn("last", j)
        self.assertTrue(any(t["signal"] == "ua.automation" for t in j["last"]["top"]))
        self.assertIn(j["last"]["action"], ("allow", "challenge", "block", "monitor"))
        self.assertGreaterEqual(j["last"]["score"], 20)
        j = admin_json(s, "/risk/explain?ip=127.0.0.1")
        self.assertTrue(j["known"])
        self.assertEqual(j["last"]["top"], admin_json(s, "/risk/explain?member=bob")["last"]["top"])
        # An entity never scored has no last decision (an empty cache slot never reads as one).
        self.assertIsNone(admin_json(s, "/risk/explain?member=nobody")["last"])
        st, _, _ = http_get(s.admin_port, "/risk/explain")
        self.assertEqual(st, 400)
        j = admin_json(s, "/risk")
        self.assertTrue(j["enabled"])
        self.assertEqual(j["secret"], "file risk.key")
        cfg = admin_json(s, "/config")
        self.assertNotIn(MASTER, json.dumps(cfg))


class TestRiskConfig(ProxyTestCase):
    def check(self, extra, write_secret=True):
        if write_secret:
            with open(os.path.join(self.tmp, "risk.key"), "w") as f:
                f.write(MASTER)
        path = os.path.join(self.tmp, "sluice.yaml")
        with open(path, "w") as f:
            f.write(default_config(free_port(), free_port(), upstream_yaml("storefront", ["127.0.0.1:9"]),
                                   extra=extra))
        p = subprocess.run([SLUICE_BIN, "-t", "-c", path], cwd=self.tmp, capture_output=True,
                           text=True, timeout=30)
        return p.returncode, p.stdout + p.stderr

    def test_missing_geoip_database_is_a_config_error_with_line(self):
        rc, out = self.check("risk:\n  master_secret_file: risk.key\n"
                             "  geoip: {country: /nonexistent/GeoLite2-Country.mmdb}\n")
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"sluice\.yaml:\d+:\d+: risk\.geoip: .*GeoLite2-Country\.mmdb")

    def test_corrupt_geoip_database_is_a_config_error(self):
        with open(os.path.join(self.tmp, "bad.mmdb"), "wb") as f:
            f.write(b"not a maxmind database" * 10)
        rc, out = self.check("risk:\n  master_secret_file: risk.key\n  geoip: {asn: bad.mmdb}\n")
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"sluice\.yaml:\d+:\d+: risk\.geoip")

    def test_good_geoip_databases_load(self):
        d = os.path.join(ROOT, "tests", "data", "geoip")
        dbs = sorted(f for f in os.listdir(d) if f.endswith(".mmdb")) if os.path.isdir(d) else []
        if not dbs:
            self.skipTest("no test GeoIP databases")
        country = [f for f in dbs if "Country" in f or "City" in f]
        if not country:
            self.skipTest("no country database")
        rc, out = self.check("risk:\n  master_secret_file: risk.key\n  geoip: {country: %s}\n"
                             % os.path.join(d, country[0]))
        self.assertEqual(rc, 0, out)

    def test_secret_required(self):
        rc, out = self.check("risk:\n  levels: [pow]\n  profiles: [{name: default, thresholds: [{score: 30, action: pow}]}]\n",
                             write_secret=False)
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"sluice\.yaml:\d+:\d+: risk: a master secret is required")
        rc, out = self.check("risk:\n  master_secret_env: SLUICE_TEST_NO_SUCH_VAR\n")
        self.assertNotEqual(rc, 0)
        self.assertIn("SLUICE_TEST_NO_SUCH_VAR is not set", out)

    def test_unknown_profile_and_bad_action(self):
        rc, out = self.check("risk:\n  master_secret_file: risk.key\n  profiles:\n"
                             "    - {name: default, thresholds: [{score: 30, action: captcha}]}\n")
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"sluice\.yaml:\d+:\d+: risk\.profiles\[0\]\.thresholds\[0\]: unknown action 'captcha'")


class TestRiskHeadlessChromium(RiskCase):
    """Real headless Chromium (Debian chromium, DevTools protocol via tests/e2e/browser.py):
    a protected page answers the proof-of-work interstitial, its JavaScript solves the ticket
    with crypto.subtle (127.0.0.1 is a secure context), POSTs it to /.sluice/pow, gets the
    pass-token cookie and reloads the page, which then loads."""

    def test_pow_challenge_solved_in_browser(self):
        from browser import Chromium, chromium_binary
        if not chromium_binary():
            self.skipTest("chromium is not installed (scripts/install-deps)")
        # HeadlessChrome scores ua.headless: make that the proof-of-work level here.
        s = self.start(thresholds="[{score: 20, action: pow}, {score: 100, action: block}]")
        b = Chromium(self.tmp)
        try:
            b.navigate(s.url("/item/42"))
            b.wait_for("location.pathname === '/item/42' && document.readyState === 'complete' && "
                       "!document.body.innerText.includes('One moment')", timeout=60,
                       message="the item page after the proof of work")
            text = b.eval("document.body.innerText")
            self.assertNotIn("check failed", text)
        finally:
            b.close()
        log = log_for(s, lambda e: e.get("path") == "/item/42" and e.get("status") == 200)
        self.assertEqual(log[-1]["risk"].get("token"), "valid")
        challenged = [e for e in s.access_log() if e.get("path") == "/item/42"
                      and e.get("risk", {}).get("action") == "challenge"]
        self.assertTrue(challenged, "the first load was not challenged")
        pow_posts = [e for e in s.access_log() if e.get("path") == "/.sluice/pow"]
        self.assertTrue(pow_posts and pow_posts[-1]["status"] == 200, pow_posts)


if __name__ == "__main__":
    unittest.main()
