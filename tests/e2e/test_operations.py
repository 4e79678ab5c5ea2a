"""The operator's levers (issue 7): rule modes forced through the admin API, degrade switches,
GET /config with secrets redacted, SIGUSR1 log reopening, and `sluice -s` through the pid file.
Every lever holds on all workers, survives a reload, and bad input changes nothing."""
import json
import os
import signal
import subprocess
import time
import unittest

from harness import (SLUICE_BIN, ProxyTestCase, admin_call, admin_json, admin_reload, default_config,
                     free_port, http_get, upstream_yaml, wait_until, write_config)


ROUTES = ("- name: recs\n  match: { path: { prefix: /api/items/1/ } }\n  upstream: storefront\n"
          "  limits: [per-ip, watch-ua]\n"
          "- name: all\n  match: { path: { prefix: / } }\n  upstream: storefront\n  limits: [per-ip, watch-ua]\n")
EXTRA = ("limits:\n  rules:\n"
         "    - {id: per-ip, key: ip, rate: 1r/m, burst: 1, nodelay: true}\n"
         "    - {id: watch-ua, key: user_agent, rate: 1r/m, nodelay: true, action: shadow}\n"
         "degrade_switches:\n"
         "  - {name: recommendations, routes: [recs], body: '{\"items\":[],\"degraded\":true}'}\n"
         "jwt:\n  hs256_secret: do-not-print-me\n")


class OperationsTest(ProxyTestCase):
    def start(self, extra=EXTRA, workers=2):
        self.demo = self.start_demo()
        self.port, self.admin_port = free_port(), free_port()
        self.config = default_config(self.port, self.admin_port,
                                     upstream_yaml("storefront", [self.demo.address]), ROUTES, extra)
        self.config = self.config.replace("workers: 1\n", "workers: %d\n" % workers)
        self.s = self.start_sluice_text(self.config, self.port, self.admin_port)

    def status(self, path="/api/items/2"):
        return http_get(self.port, path)[0]

    def test_rule_modes_shadow_off_enforce_and_back(self):
        self.start()
        self.assertEqual([self.status() for _ in range(3)], [200, 200, 429])
        code, _, body = admin_call(self.s, "POST", "/rules/per-ip/mode", body=b'{"mode":"shadow"}')
        self.assertEqual((code, body), (200, {"rule": "per-ip", "mode": "shadow"}))
        self.assertEqual([self.status() for _ in range(4)], [200] * 4)  # every worker
        self.assertEqual(admin_json(self.s, "/limits")["rules"][0]["mode_override"], "shadow")
        code, _, _ = admin_call(self.s, "POST", "/rules/per-ip/mode", body=b'{"mode":"off"}')
        self.assertEqual(code, 200)
        self.assertEqual(self.status(), 200)
        # A shadow rule forced to enforce refuses (the UA bucket is long spent).
        code, _, _ = admin_call(self.s, "POST", "/rules/watch-ua/mode", body=b'{"mode":"enforce"}')
        self.assertEqual(code, 200)
        self.assertEqual(self.status(), 429)
        # Overrides hold across a reload, until set back to the config.
        code, body = admin_reload(self.s)
        self.assertEqual(code, 200, body)
        self.assertEqual(self.status(), 429)
        for rule in ("per-ip", "watch-ua"):
            code, _, _ = admin_call(self.s, "POST", "/rules/%s/mode" % rule, body=b'{"mode":"config"}')
            self.assertEqual(code, 200)
        self.assertEqual(self.status(), 429)  # per-ip enforces again: its bucket is spent
        self.assertEqual(admin_json(self.s, "/limits")["rules"][0]["mode_override"], "config")
        # Bad input: clear answers, nothing changes.
        self.assertEqual(admin_call(self.s, "POST", "/rules/nope/mode", body=b'{"mode":"off"}')[0], 404)
        self.assertEqual(admin_call(self.s, "POST", "/rules/per-ip/mode", body=b'{"mode":"loud"}')[0], 400)
        self.assertEqual(admin_call(self.s, "POST", "/rules/per-ip/mode", body=b'garbage')[0], 400)
        self.assertEqual(admin_call(self.s, "POST", "/rules/per-ip/mode", token=None,
                                    body=b'{"mode":"off"}')[0], 401)
        self.assertEqual(self.status(), 429)

    def test_degrade_switch_answers_the_route_at_the_edge(self):
        self.start()
        before = json.loads(http_get(self.port, "/api/items/1/price")[2])
        self.assertIn("price", before)
        code, _, body = admin_call(self.s, "POST", "/degrade/recommendations", body=b'{"on":true}')
        self.assertEqual((code, body), (200, {"name": "recommendations", "on": True}))
        counter_before = self.demo_requests()
        for _ in range(5):
            status, _, body = http_get(self.port, "/api/items/1/price")
            self.assertEqual((status, json.loads(body)), (200, {"items": [], "degraded": True}))
        self.assertEqual(self.demo_requests(), counter_before)  # the upstream never saw them
        self.assertEqual(admin_json(self.s, "/degrade")["switches"],
                         [{"name": "recommendations", "on": True, "routes": ["recs"]}])
        code, body = admin_reload(self.s)
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(http_get(self.port, "/api/items/1/price")[2])["degraded"], True)
        code, _, _ = admin_call(self.s, "POST", "/degrade/recommendations", body=b'{"on":false}')
        self.assertEqual(code, 200)
        self.assertIn("price", json.loads(http_get(self.port, "/api/items/1/price")[2]))
        self.assertEqual(admin_call(self.s, "POST", "/degrade/nope", body=b'{"on":true}')[0], 404)
        self.assertEqual(admin_call(self.s, "POST", "/degrade/recommendations", body=b'{"on":"yes"}')[0], 400)

    def demo_requests(self):
        return json.loads(http_get(self.demo.port, "/__demo/counter")[2])["requests"]

    def test_config_endpoint_redacts_secrets(self):
        self.start()
        cfg = admin_json(self.s, "/config")
        self.assertEqual(cfg["path"], self.s.config_path)
        self.assertIn("degrade_switches", cfg["yaml"])
        self.assertNotIn("do-not-print-me", cfg["yaml"])
        self.assertNotIn("e2e-admin-token", cfg["yaml"])
        self.assertIn('hs256_secret: "<redacted>"', cfg["yaml"])
        self.assertEqual(cfg["loaded_hash"], admin_json(self.s, "/status")["config_hash"])

    def test_sigusr1_reopens_the_access_log(self):
        self.start()
        self.assertEqual(self.status("/"), 200)
        log = os.path.join(self.s.tmpdir, "access.log")
        wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 0, message="first log line")
        os.rename(log, log + ".1")  # what logrotate does
        os.kill(self.s.proc.pid, signal.SIGUSR1)
        wait_until(lambda: os.path.exists(log), message="a new access.log")
        http_get(self.port, "/healthz-after-rotate")
        def read(p):
            with open(p) as f:
                return f.read()
        wait_until(lambda: "healthz-after-rotate" in read(log), message="the new line in the new file")
        self.assertNotIn("healthz-after-rotate", read(log + ".1"))

    def test_decision_log_keeps_only_decided_requests(self):
        self.start()
        # The harness's log section is replaced with one that adds the decision log.
        cfg = self.config.replace("log:\n  level: info\n  access: access.log\n",
                                  "log:\n  level: info\n  access: access.log\n"
                                  "  decisions: decisions.log\n  decision_sample: 1.0\n")
        self.assertNotEqual(cfg, self.config)
        write_config(self.s, cfg)
        code, body = admin_reload(self.s)
        self.assertEqual(code, 200, body)
        statuses = [self.status() for _ in range(4)]  # 200, 200, then the per-ip rule refuses
        self.assertEqual(statuses[:2], [200, 200])
        self.assertEqual(statuses[2:], [429, 429])
        path = os.path.join(self.s.tmpdir, "decisions.log")

        def lines():
            if not os.path.exists(path):
                return []
            with open(path) as f:
                return [json.loads(l) for l in f if l.strip()]
        # Every request here met a decision: the shadow UA rule logs its would-be refusals, the IP
        # rule its refusals; nothing else is in the file.
        got = wait_until(lambda: (lambda ls: ls if len(ls) >= 3 else None)(lines()), timeout=5,
                         message="decision lines")
        self.assertTrue(all("limit" in l or "limit_shadow" in l for l in got), got)
        self.assertEqual(sum(1 for l in got if l.get("status") == 429), 2)
        # decision_sample: 0 writes nothing more.
        write_config(self.s, cfg.replace("decision_sample: 1.0", "decision_sample: 0"))
        self.assertEqual(admin_reload(self.s)[0], 200)
        before = len(lines())
        for _ in range(3):
            self.status()
        time.sleep(0.5)
        self.assertEqual(len(lines()), before)

    def test_pid_file_and_sluice_s(self):
        pid_file = "sluice.pid"  # relative to the working directory, like the log files
        self.start(EXTRA + "pid_file: %s\n" % pid_file)
        path = os.path.join(self.s.tmpdir, pid_file)
        wait_until(lambda: os.path.exists(path), message="pid file")
        with open(path) as f:
            self.assertEqual(int(f.read()), self.s.proc.pid)
        run = lambda *a: subprocess.run([SLUICE_BIN, "-c", self.s.config_path] + list(a),
                                        cwd=self.s.tmpdir, capture_output=True, text=True, timeout=10)
        generation = admin_json(self.s, "/status")["generation"]
        write_config(self.s, self.config.replace("1r/m, burst: 1", "1r/m, burst: 5"))
        r = run("-s", "reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_until(lambda: admin_json(self.s, "/status")["generation"] > generation, message="reload")
        r = run("-s", "restart")
        self.assertEqual(r.returncode, 2)
        self.assertIn("reload, stop, quit or reopen", r.stderr)
        r = run("-s", "stop")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.s.proc.wait(timeout=15), 0)
        self.assertFalse(os.path.exists(path))  # removed on a clean exit
        r = run("-s", "reload")
        self.assertEqual(r.returncode, 1)
        self.assertIn("is sluice running?", r.stderr)


if __name__ == "__main__":
    unittest.main()
