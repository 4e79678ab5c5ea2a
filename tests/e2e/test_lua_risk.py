"""Lua policies and the risk phase through the real binary (issues 4 and 5): points a rewrite
handler adds with sluice.risk.add are scored by the risk phase with the request's own signals
(and explained as "lua.NAME"); an access handler reads the decision with sluice.risk.score() and
the header-order fingerprint with sluice.var.fingerprint; points it adds after the decision
change that request's score (logged as "risk_added") and raise the entities' decaying scores, so
the device's next request is challenged. On a route without risk, risk.score() is the sum of the
points added so far and the fingerprint is computed on demand, equal to the risk phase's."""
import json
import os
import textwrap
import unittest

from harness import ProxyTestCase, free_port, wait_until
from test_risk import MASTER, VERIFIER, chrome_headers, hdr, raw_request

POLICY = """
return {
  name = "account_check", priority = 10,
  phases = {
    rewrite = function(conf, ctx)
      -- In production: a call to the storefront's account-risk service (sluice.http.request).
      if sluice.req.get_header("x-account-flag") == "farm" then
        sluice.risk.add("account_farm", 60)
      end
      sluice.risk.add("rewrite_seen", 0)
      ctx.before = sluice.risk.score()
    end,
    access = function(conf, ctx)
      local late = sluice.req.get_header("x-late-points")
      if late then sluice.risk.add("late_flag", tonumber(late)) end
      sluice.resp.set_header("X-Risk-Score", tostring(sluice.risk.score()))
      sluice.resp.set_header("X-Score-Before", tostring(ctx.before))
      sluice.resp.set_header("X-Fp", sluice.var.fingerprint)
      sluice.resp.set_header("X-Device", sluice.var.device_id)
    end,
  },
}
"""


def config(port, admin, demo):
    return textwrap.dedent("""\
        workers: 1
        listeners:
          - address: 127.0.0.1:%d
        admin:
          address: 127.0.0.1:%d
          token: e2e-admin-token
        log:
          level: info
          access: access.log
        lua:
          policies_dir: policies
        risk:
          master_secret_file: risk.key
          verifier_secret_file: verifier.key
          identity: {device_cookie: dev}
          profiles:
            - name: default
              thresholds: [{score: 30, action: pow}, {score: 50, action: slider}, {score: 95, action: block}]
        upstreams:
          storefront:
            servers: [{ address: %s }]
        routes:
          - name: scored
            match: { path: { prefix: /item/ } }
            upstream: storefront
            risk: { class: item_detail }
            policies: [account_check]
          - name: unscored
            match: { path: { prefix: / } }
            upstream: storefront
            risk: off
            policies: [account_check]
        """) % (port, admin, demo)


class LuaRiskTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "policies"))
        with open(os.path.join(self.tmp, "policies", "account_check.lua"), "w") as f:
            f.write(POLICY)
        with open(os.path.join(self.tmp, "risk.key"), "w") as f:
            f.write(MASTER + "\n")
        with open(os.path.join(self.tmp, "verifier.key"), "w") as f:
            f.write(VERIFIER + "\n")
        self.demo = self.start_demo()
        port, admin = free_port(), free_port()
        self.s = self.start_sluice_text(config(port, admin, self.demo.address), port, admin)

    def get(self, path, device, extra=()):
        return raw_request(self.s.port, "GET", path, chrome_headers("dev=" + device) + list(extra))

    def log_for(self, path):
        return wait_until(lambda: [e for e in self.s.access_log() if e.get("path") == path],
                          timeout=3, message="the access-log line of %s" % path)[-1]

    def test_rewrite_points_are_scored_and_explained_by_the_risk_phase(self):
        st, h, body = self.get("/item/1", "d-human")
        self.assertEqual(st, 200, body[:300])
        human = self.log_for("/item/1")["risk"]
        self.assertEqual(human["action"], "allow")
        self.assertEqual(int(hdr(h, "X-Risk-Score")), human["score"])
        self.assertEqual(hdr(h, "X-Device"), "d-human")  # the risk section's device cookie

        st, _, body = self.get("/item/2", "d-farm", [("X-Account-Flag", "farm")])
        self.assertNotEqual(st, 200, body[:300])
        farm = self.log_for("/item/2")["risk"]
        self.assertEqual(farm["action"], "challenge")
        self.assertGreaterEqual(farm["score"], human["score"] + 60)
        self.assertIn("lua.account_farm:60", farm["top"])

    def test_access_reads_the_decision_and_the_fingerprint(self):
        st, h, body = self.get("/item/3", "d-read")
        self.assertEqual(st, 200, body[:300])
        entry = self.log_for("/item/3")
        self.assertEqual(int(hdr(h, "X-Risk-Score")), entry["risk"]["score"])
        self.assertEqual(hdr(h, "X-Score-Before"), "0")  # rewrite runs before the risk phase
        fp = hdr(h, "X-Fp")
        self.assertEqual(len(fp), 34, fp)
        self.assertTrue(fp.startswith("ge11c"), fp)  # GET, HTTP/1.1, with a cookie
        # The same headers on the route without risk: computed on demand, the same label.
        st, h2, _ = self.get("/__demo/echo", "d-read")
        self.assertEqual(st, 200)
        self.assertEqual(hdr(h2, "X-Fp"), fp)
        # Without the risk phase, risk.score() is what policies added.
        st, h3, _ = self.get("/__demo/echo", "d-read", [("X-Account-Flag", "farm")])
        self.assertEqual(st, 200)
        self.assertEqual(hdr(h3, "X-Risk-Score"), "60")
        self.assertEqual(hdr(h3, "X-Score-Before"), "60")
        self.assertNotIn("risk", self.log_for("/__demo/echo"))

    def test_points_added_after_the_decision_carry_to_the_next_request(self):
        st, h, body = self.get("/item/5", "d-late", [("X-Late-Points", "45")])
        self.assertEqual(st, 200, body[:300])  # decided before access ran
        entry = self.log_for("/item/5")
        self.assertEqual(int(hdr(h, "X-Risk-Score")), min(100, entry["risk"]["score"] + 45))
        self.assertEqual(entry["risk_added"]["signals"], ["lua.late_flag:45"])
        self.assertEqual(entry["risk_added"]["score"], int(hdr(h, "X-Risk-Score")))
        # The device's next, clean request carries the raised score: challenged.
        st, _, body = self.get("/item/6", "d-late")
        self.assertNotEqual(st, 200, body[:300])
        nxt = self.log_for("/item/6")["risk"]
        self.assertEqual(nxt["action"], "challenge")
        self.assertTrue(any(t.startswith("score.carried:") for t in nxt["top"]), nxt)
        # Another device is not affected.
        st, _, _ = self.get("/item/7", "d-other")
        self.assertEqual(st, 200)
        # Negative points lower this request's score only.
        st, h, _ = self.get("/item/8", "d-neg", [("X-Late-Points", "-100")])
        self.assertEqual(st, 200)
        self.assertEqual(hdr(h, "X-Risk-Score"), "0")


class LuaWithoutRiskSectionTest(ProxyTestCase):
    """No risk section at all: nothing scores, the fingerprint is computed from every header
    and the ids come from the default `member` / `device` cookies."""

    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "policies"))
        with open(os.path.join(self.tmp, "policies", "account_check.lua"), "w") as f:
            f.write(POLICY)
        self.demo = self.start_demo()
        port, admin = free_port(), free_port()
        text = config(port, admin, self.demo.address)
        text = text[:text.index("risk:\n")] + text[text.index("upstreams:\n"):]
        text = text.replace("            risk: { class: item_detail }\n", "")
        text = text.replace("            risk: off\n", "")
        self.s = self.start_sluice_text(text, port, admin)

    def test_fingerprint_ids_and_score_without_risk(self):
        headers = chrome_headers("device=d-plain")
        st, h, body = raw_request(self.s.port, "GET", "/__demo/echo", headers + [("X-Account-Flag", "farm")])
        self.assertEqual(st, 200, body[:300])
        self.assertEqual(hdr(h, "X-Device"), "d-plain")
        self.assertEqual(hdr(h, "X-Risk-Score"), "60")  # the points added, nothing scored
        fp = hdr(h, "X-Fp")
        self.assertEqual(len(fp), 34, fp)
        self.assertTrue(fp.startswith("ge11c"), fp)
        # A pure function of the headers: the same ones give the same label, another order not.
        _, h2, _ = raw_request(self.s.port, "GET", "/__demo/echo", headers + [("X-Account-Flag", "farm")])
        self.assertEqual(hdr(h2, "X-Fp"), fp)
        _, h3, _ = raw_request(self.s.port, "GET", "/__demo/echo",
                               list(reversed(headers)) + [("X-Account-Flag", "farm")])
        self.assertNotEqual(hdr(h3, "X-Fp"), fp)
        self.assertEqual(len(hdr(h3, "X-Fp")), 34)


if __name__ == "__main__":
    unittest.main()
