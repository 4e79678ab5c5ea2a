"""The operator dashboard (issue 7) in a real headless Chromium, against a proxy under load.

GET /dashboard on the admin listener is loaded in Debian's chromium, driven over the DevTools
protocol (tests/e2e/browser.py, standard library only). A background thread puts paced load on
the proxy; the test reads the figures the page renders (not just that it loads): the QPS follows
the load up, the rejections panel names the rule that refuses, the status mix shows the 429s,
the hot item, the upstream and the risk score distribution and funnel (monitor mode) appear. Then it uses
the emergency switches as an operator would: without a token and with a wrong one (the page
shows the error, nothing changes), then with the right one: the degrade switch turns on in the
proxy (the route answers the degraded body) and a rule's mode changes. It ends with a
screenshot; SLUICE_DASHBOARD_SCREENSHOT=path also copies it there (docs/img/dashboard.png).
"""
import http.client
import json
import os
import shutil
import threading
import time
import unittest

from browser import Chromium
from harness import (ADMIN_TOKEN, ProxyTestCase, admin_json, default_config, free_port, http_get,
                     upstream_yaml, wait_until)

ROUTES = ("- name: recs\n  match: { path: { prefix: /api/items/1/ } }\n  upstream: storefront\n"
          "- name: items\n  match: { path: { prefix: /api/items/ } }\n  upstream: storefront\n"
          "  limits: [per-ip, watch-ua]\n  cache: { ttl: 1s }\n"
          "- name: all\n  match: { path: { prefix: / } }\n  upstream: storefront\n"
          "  limits: [per-ip, watch-ua]\n")
EXTRA = ("limits:\n"
         "  hot_items: { window: 5s, sub_windows: 5, hot_rate: 15, top_k: 8 }\n"
         "  rules:\n"
         "    - {id: per-ip, key: ip, rate: 50r/s, burst: 25, nodelay: true}\n"
         "    - {id: watch-ua, key: user_agent, rate: 10r/s, burst: 5, nodelay: true, action: shadow}\n"
         "degrade_switches:\n"
         "  - {name: recommendations, routes: [recs], body: '{\"items\":[],\"degraded\":true}'}\n")
# The risk phase in monitor mode: every request is scored and what the profile would do counted,
# nothing is refused (the load's client sends no browser headers: it scores high).
RISK = ("risk:\n  master_secret_file: risk.key\n  verifier_secret_file: verifier.key\n"
        "  profiles:\n    - name: default\n      monitor: true\n"
        "      thresholds: [{score: 30, action: pow}, {score: 90, action: block}]\n"
        "  lists:\n    - {name: farm_devices, kind: device, file: devices.txt}\n")
DEGRADED = {"items": [], "degraded": True}


class Load:
    """Paced GETs on one keep-alive connection from a background thread; `rate` can change."""

    PATHS = ["/api/items/7/price", "/api/items/7", "/api/items/12/price", "/api/items/7/stock", "/"]

    def __init__(self, port, rate):
        self.port = port
        self.rate = rate
        self.sent = 0
        self.statuses = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        conn = None
        next_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if next_at > now:
                self._stop.wait(next_at - now)
            # Behind schedule (a busy machine) the loop runs flat out but never bursts to catch up.
            next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 0.05)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.PATHS[i % len(self.PATHS)])
                r = conn.getresponse()
                r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.sent += 1
            i += 1
        if conn is not None:
            conn.close()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)


class DashboardTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.browser = None
        self.load = None

    def tearDown(self):
        if self.load:
            self.load.stop()
        if self.browser:
            if self._failed():  # what the page showed, for the failure report
                try:
                    print("---- page text ----\n%s\n---- page exceptions: %r, console errors: %r" % (
                        self.browser.eval("document.body.innerText")[:6000], self.browser.exceptions,
                        self.browser.console_errors))
                    self.browser.screenshot(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                         "sluice-dashboard-failure.png"))
                except Exception as e:  # noqa: BLE001 - best effort
                    print("(no page state: %s)" % e)
            self.browser.close()
        super().tearDown()

    def figure(self, expr):
        return self.browser.eval(expr)

    def qps(self):
        v = self.figure("document.getElementById('qps').dataset.value")
        return float(v) if v else None

    def test_dashboard_live_figures_and_switches(self):
        started = time.time()
        self.demo = self.start_demo(threads=2)
        self.port, self.admin_port = free_port(), free_port()
        with open(os.path.join(self.tmp, "devices.txt"), "w") as f:
            f.write("dev-from-file\n")
        for name in ("risk.key", "verifier.key"):
            with open(os.path.join(self.tmp, name), "w") as f:
                f.write(name[0] * 48 + "\n")
        config = default_config(self.port, self.admin_port,
                                upstream_yaml("storefront", [self.demo.address]), ROUTES, EXTRA + RISK)
        self.s = self.start_sluice_text(config, self.port, self.admin_port)
        self.load = Load(self.port, rate=20)
        b = self.browser = Chromium(self.tmp)
        b.navigate("http://127.0.0.1:%d/dashboard" % self.admin_port)
        self.assertEqual(b.eval("document.title"), "sluice dashboard")

        # Header from /status.
        version = admin_json(self.s, "/status")["version"]
        b.wait_for("document.getElementById('version').textContent === %s" % json.dumps(version),
                   message="the version in the header")

        # Live QPS follows the load: about 20 req/s, then clearly more at 150 req/s.
        low = b.wait_for("(() => { const v = parseFloat(document.getElementById('qps').dataset.value);"
                         " return v > 5 ? v : 0; })()", timeout=15, message="QPS under light load")
        time.sleep(2)
        low = min(low, self.qps())
        self.assertLess(low, 60, "20 req/s of load shown as %.1f" % low)
        self.load.rate = 150
        high = b.wait_for("(() => { const v = parseFloat(document.getElementById('qps').dataset.value);"
                          " return v > %f ? v : 0; })()" % max(2.5 * low, 50), timeout=20,
                          message="QPS rising with the load (was %.1f)" % low)
        self.assertGreater(high, 2.5 * low)
        # The sparkline is drawn: the canvas has painted pixels, not just a grid.
        painted = b.eval("(() => { const c = document.getElementById('spark');"
                         " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                         " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()")
        self.assertGreater(painted, 500)
        self.assertIn("items", b.eval("document.getElementById('routes').innerText"))

        # Rejections: per-ip (50 r/s) refuses the excess, and the panel names it with a rate.
        row = "document.querySelector('#rejections tr[data-rule=\"per-ip\"]')"
        b.wait_for("%s && parseInt(%s.dataset.rejected) > 0 && parseFloat(%s.dataset.rejectedRate) > 0"
                   % (row, row, row), timeout=15, message="per-ip rejections in the panel")
        text = b.eval("%s.innerText" % row)
        self.assertIn("per-ip", text)
        self.assertIn("ip", text)
        self.assertIn("rejected", b.eval("document.getElementById('blocks').innerText"))
        self.assertIn("watch-ua", b.eval("document.getElementById('blocks').innerText"))  # shadow
        # Status mix: 429s are 4xx, the rest 2xx.
        mix = b.wait_for("(() => { const m = document.getElementById('mix');"
                         " const a = parseFloat(m.getAttribute('data-2xx')), c = parseFloat(m.getAttribute('data-4xx'));"
                         " return a > 0 && c > 0 ? [a, c] : null; })()", message="2xx and 4xx shares")
        self.assertAlmostEqual(sum(mix), 1.0, delta=0.02)
        # Hot items: item 7 gets three of every five requests.
        b.wait_for("!!document.querySelector('#hot tr[data-item=\"7\"]')", timeout=15,
                   message="item 7 in the hot items")
        # Upstream health and the cache.
        self.assertEqual(b.eval("document.querySelector('#upstreams tr[data-server=\"%s\"]').dataset.state"
                                % self.demo.address), "healthy")
        b.wait_for("parseFloat(document.getElementById('cache-ratio').dataset.value) > 0",
                   message="a cache hit ratio")
        # Risk panels: the score distribution sums to 1 over the scored requests, and the funnel
        # counts them and what the monitor profile would have done.
        scored = b.wait_for("(() => { const t = document.querySelector('#risk table[data-wired=\"true\"]');"
                            " return t ? parseInt(t.dataset.scored) : 0; })()", message="scored requests")
        self.assertGreater(scored, 10)
        shares = b.eval("[...document.querySelectorAll('#risk tr[data-le]')].map(r => parseInt(r.dataset.count))")
        self.assertEqual(sum(shares), scored)
        stage = lambda name: b.eval("parseInt(document.querySelector('#funnel tr[data-stage=\"%s\"]').dataset.value)" % name)
        self.assertGreater(stage("scored"), 10)
        self.assertEqual(stage("blocked"), 0)  # monitor: nothing refused
        self.assertGreater(b.eval("[...document.querySelectorAll('#funnel tr[data-stage^=\"would\"]')]"
                                  ".reduce((n, r) => n + parseInt(r.dataset.value), 0)"), 0)

        # The degrade switch, as an operator: no token first, then a wrong one, then the right one.
        switch = "button[data-switch=\"recommendations\"]"
        self.assertEqual(b.eval("document.querySelector('%s').getAttribute('aria-checked')" % switch), "false")
        b.click(switch)
        b.wait_for("document.getElementById('lever-error').textContent.includes('token')",
                   message="the page asking for the token")
        b.type_into("#token", "not-the-token")
        b.click("#token-set")
        b.wait_for("sessionStorage.getItem('sluice-admin-token') === 'not-the-token'",
                   message="the wrong token kept")
        b.click(switch)
        b.wait_for("document.getElementById('lever-error').textContent.includes('401')",
                   message="the 401 shown inline")
        self.assertFalse(admin_json(self.s, "/degrade")["switches"][0]["on"])
        self.assertIn("price", json.loads(http_get(self.port, "/api/items/1/price")[2]))
        b.type_into("#token", ADMIN_TOKEN)
        b.click("#token-set")
        b.wait_for("sessionStorage.getItem('sluice-admin-token') === %s" % json.dumps(ADMIN_TOKEN),
                   message="the token kept in sessionStorage")
        self.assertEqual(b.eval("document.getElementById('token').value"), "")  # not left in the field
        b.click(switch)
        wait_until(lambda: admin_json(self.s, "/degrade")["switches"][0]["on"], timeout=10,
                   message="the degrade switch on in the proxy")
        status, _, body = http_get(self.port, "/api/items/1/price")
        self.assertEqual((status, json.loads(body)), (200, DEGRADED))
        b.wait_for("document.querySelector('%s').getAttribute('aria-checked') === 'true'" % switch,
                   message="the switch shown on")
        self.assertEqual(b.eval("document.getElementById('lever-error').textContent"), "")

        target = os.environ.get("SLUICE_DASHBOARD_SCREENSHOT")
        # One more poll with the switch on; for the docs' picture, some sparkline history too.
        b.pump(10 if target else 1.5)
        png = b.screenshot(os.path.join(self.tmp, "dashboard.png"))
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 20000)
        if target:
            shutil.copyfile(os.path.join(self.tmp, "dashboard.png"), target)

        # Block a device farm from the page: it lands in the proxy's list, with its expiry.
        b.wait_for("document.querySelector('#lists tr[data-list=\"farm_devices\"]') !== null",
                   message="the configured list shown")
        b.type_into("#list-entry", "farm-from-page")
        b.eval("document.getElementById('list-ttl').value = ''")  # the field starts at 1h
        b.type_into("#list-ttl", "30m")
        b.click("#list-add")
        wait_until(lambda: admin_json(self.s, "/lists/farm_devices?match=farm-from-page")["listed"],
                   timeout=10, message="the entry in the proxy's list")
        entries = admin_json(self.s, "/lists/farm_devices")["entries"]
        self.assertEqual(entries[0]["entry"], "farm-from-page")
        self.assertGreater(entries[0]["expires_in_s"], 1700)
        b.wait_for("document.querySelector('#lists tr[data-list=\"farm_devices\"]').dataset.runtime === '1'",
                   message="the list's count shown")
        self.assertIn("farm-from-page added", b.eval("document.getElementById('lever-ok').textContent"))

        # A rule's mode from the selector: per-ip to shadow, then back to its config.
        b.eval("(() => { const s = document.querySelector('select[data-rule=\"per-ip\"]');"
               " s.value = 'shadow'; s.dispatchEvent(new Event('change')); })()")
        wait_until(lambda: admin_json(self.s, "/limits")["rules"][0]["mode_override"] == "shadow",
                   timeout=10, message="per-ip forced to shadow")
        b.wait_for("%s.innerText.includes('shadow')" % row, message="the rule shown in shadow")
        b.eval("(() => { const s = document.querySelector('select[data-rule=\"per-ip\"]');"
               " s.value = 'config'; s.dispatchEvent(new Event('change')); })()")
        wait_until(lambda: admin_json(self.s, "/limits")["rules"][0]["mode_override"] == "config",
                   timeout=10, message="per-ip back to its config")
        # And the switch off again from the page.
        b.click(switch)
        wait_until(lambda: not admin_json(self.s, "/degrade")["switches"][0]["on"], timeout=10,
                   message="the degrade switch off again")
        self.assertIn("price", json.loads(http_get(self.port, "/api/items/1/price")[2]))

        b.pump(0.2)
        self.assertEqual(b.exceptions, [], "uncaught exceptions in the page")
        self.assertEqual(b.console_errors, [], "console errors in the page")
        self.assertEqual(b.eval("document.getElementById('poll-error').textContent"), "")
        print("dashboard test: %.1fs, load sent %d requests %s" % (time.time() - started, self.load.sent,
                                                                  sorted(self.load.statuses.items())))

    def test_dashboard_headers(self):
        """The page is served whole, as HTML, from / too, and may load nothing from elsewhere."""
        self.demo = self.start_demo()
        self.s = self.start_sluice(upstream_yaml("storefront", [self.demo.address]))
        for path in ("/dashboard", "/"):
            status, headers, body = http_get(self.s.admin_port, path)
            h = {k.lower(): v for k, v in headers}
            self.assertEqual(status, 200)
            self.assertTrue(h["content-type"].startswith("text/html"))
            self.assertIn("connect-src 'self'", h["content-security-policy"])
            self.assertTrue(body.rstrip().endswith(b"</html>"))
            self.assertNotIn(b"http://", body.replace(b"http://www.w3.org", b""))
            self.assertNotIn(b"https://", body)
        self.assertEqual(http_get(self.s.admin_port, "/dashboard", method="POST", body=b"")[0], 401)

    def test_grafana_dashboard_uses_metrics_sluice_exports(self):
        """Every metric docs/grafana-dashboard.json queries is a family a running sluice exports."""
        import re
        from harness import ROOT
        with open(os.path.join(ROOT, "docs", "grafana-dashboard.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
        used = {re.sub(r"_(bucket|sum|count)$", "", n)
                for e in exprs for n in re.findall(r"\b((?:sluice|process)_[a-z_]+)", e)}
        self.assertGreater(len(used), 20)
        self.demo = self.start_demo()
        self.s = self.start_sluice(upstream_yaml("storefront", [self.demo.address]),
                                   extra="limits:\n  rules:\n    - {id: per-ip, key: ip, rate: 5r/s}\n")
        status, _, body = http_get(self.s.admin_port, "/metrics")
        self.assertEqual(status, 200)
        exported = set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))
        # sluice_upstream_adaptive_limit and saturation_ratio have series only when configured,
        # but their families are always declared.
        self.assertEqual(sorted(used - exported), [])


if __name__ == "__main__":
    unittest.main()
