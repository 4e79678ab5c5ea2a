"""The Lua rewrite phase through the real binary (issues 3 and 5): it runs before the limit
phase, so a policy can change the request and set the key a limit rule reads
(`key: lua:NAME`, sluice.limit.set_key); it may answer or yield; access runs after it."""
import json
import os
import unittest

from harness import ProxyTestCase, free_port, http_get, wait_until

BUYER = """
return {
  name = "buyer_key", priority = 20,
  phases = {
    rewrite = function(conf, ctx)
      local user = sluice.req.get_header("x-app-user")
      if user == "banned" then
        return sluice.resp.exit(403, "banned at rewrite\\n")
      end
      if user then
        -- One key per buyer, whatever device or IP it comes from (in production the policy
        -- would verify a signed app header first).
        sluice.limit.set_key("buyer", "buyer:" .. user)
        sluice.req.set_header("X-Buyer", user)
      end
      if sluice.req.get_header("x-slow") then sluice.sleep(0.05) end
      ctx.rewritten = true
    end,
    access = function(conf, ctx)
      if not ctx.rewritten then
        return sluice.resp.exit(500, "access ran before rewrite\\n")
      end
    end,
  },
}
"""


def config(port, admin, demo):
    return (
        "workers: 1\n"
        "listeners:\n  - address: 127.0.0.1:%d\n"
        "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
        "log:\n  level: info\n  access: access.log\n"
        "lua:\n  policies_dir: policies\n  time_budget: 50ms\n"
        "limits:\n  rules:\n"
        "    - {id: per-buyer, key: lua:buyer, rate: 1r/m, missing_key: skip}\n"
        "upstreams:\n  storefront:\n    servers: [{ address: %s }]\n"
        "routes:\n"
        "  - name: shop\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
        "    policies: [buyer_key]\n    limits: [per-buyer]\n" % (port, admin, demo))


class LuaRewriteTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "policies"))
        with open(os.path.join(self.tmp, "policies", "buyer_key.lua"), "w") as f:
            f.write(BUYER)
        self.demo = self.start_demo()
        port, admin = free_port(), free_port()
        self.s = self.start_sluice_text(config(port, admin, self.demo.address), port, admin)

    def get(self, user=None, slow=False, path="/__demo/echo"):
        h = {}
        if user:
            h["X-App-User"] = user
        if slow:
            h["X-Slow"] = "1"
        return http_get(self.s.port, path, headers=h)

    def log_for(self, rid):
        return wait_until(lambda: [e for e in self.s.access_log() if e.get("request_id") == rid],
                          timeout=3, message="the access-log line of %s" % rid)[-1]

    def test_a_key_set_in_rewrite_is_what_the_limit_rule_counts(self):
        st, _, body = self.get("alice")
        self.assertEqual(st, 200, body)
        # The rewrite's header reached the upstream.
        seen = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        self.assertEqual(seen["x-buyer"], "alice")
        st, headers, _ = self.get("alice")
        self.assertEqual(st, 429)
        rid = dict((k.lower(), v) for k, v in headers)["x-request-id"]
        self.assertEqual(self.log_for(rid)["limit"], {"rule": "per-buyer", "action": "reject"})
        # Another buyer has a bucket of its own; no key at all: the rule skips the request.
        self.assertEqual(self.get("bob")[0], 200)
        for _ in range(3):
            self.assertEqual(self.get()[0], 200)

    def test_rewrite_may_answer_and_may_yield_before_the_limit(self):
        st, _, body = self.get("banned")
        self.assertEqual((st, body), (403, b"banned at rewrite\n"))
        # A handler that sleeps resumes into the limit phase with its key set.
        st, _, body = self.get("carol", slow=True)
        self.assertEqual(st, 200, body)
        self.assertEqual(self.get("carol", slow=True)[0], 429)
        # Nothing the rewrite answered reached the upstream.
        upstream_paths = [e.get("upstream") for e in self.s.access_log() if e.get("status") == 403]
        self.assertEqual(upstream_paths, [None] * len(upstream_paths))


if __name__ == "__main__":
    unittest.main()
