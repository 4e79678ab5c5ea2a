"""The Lua rewrite and balancer phases through the real binary (issues 3 and 5). Rewrite runs
before the limit phase, so a policy can change the request and set the key a limit rule reads
(`key: lua:NAME`, sluice.limit.set_key); it may answer or yield; access runs after it. The
balancer handler names one of the pool's servers; anything else falls back to the pool's own
balancing, and a failing handler is a 500 like every policy error."""
import json
import os
import unittest

from harness import ProxyTestCase, free_port, header, http_get, wait_until

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


SHARD = """
return {
  name = "shard",
  schema = { a = { type = "string", required = true }, b = { type = "string", required = true } },
  phases = {
    balancer = function(conf, ctx)
      local s = sluice.req.get_header("x-shard")
      if s == "a" then return conf.a end
      if s == "b" then return conf.b end
      if s == "nowhere" then return "127.0.0.1:1" end
      if s == "boom" then error("no shard map") end
      -- no shard: nil, the pool's round robin decides
    end,
  },
}
"""


class LuaBalancerTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "policies"))
        with open(os.path.join(self.tmp, "policies", "shard.lua"), "w") as f:
            f.write(SHARD)
        a, b = self.start_demo("a"), self.start_demo("b")
        port, admin = free_port(), free_port()
        text = (
            "workers: 1\n"
            "listeners:\n  - address: 127.0.0.1:%d\n"
            "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
            "log:\n  level: info\n  access: off\n"
            "lua:\n  policies_dir: policies\n"
            "upstreams:\n  storefront:\n    servers: [{ address: %s }, { address: %s }]\n"
            "routes:\n"
            "  - name: shop\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
            "    policies:\n      - name: shard\n        config: { a: \"%s\", b: \"%s\" }\n"
            % (port, admin, a.address, b.address, a.address, b.address))
        self.s = self.start_sluice_text(text, port, admin)

    def served(self, shard=None):
        st, headers, body = http_get(self.s.port, "/api/items/1",
                                     headers={"X-Shard": shard} if shard else {})
        return st, header(headers, "X-Served-By")

    def test_the_handler_picks_the_server_and_nil_leaves_it_to_the_pool(self):
        self.assertEqual({self.served("b") for _ in range(6)}, {(200, "b")})
        self.assertEqual({self.served("a") for _ in range(6)}, {(200, "a")})
        self.assertEqual({self.served()[1] for _ in range(6)}, {"a", "b"})  # round robin

    def test_a_peer_outside_the_pool_falls_back_and_an_error_is_a_500(self):
        self.assertEqual({self.served("nowhere")[0] for _ in range(4)}, {200})
        wait_until(lambda: "not a server of pool 'storefront'" in self.s.output(), timeout=3,
                   message="the error-log line")
        st, _, body = http_get(self.s.port, "/api/items/1", headers={"X-Shard": "boom"})
        self.assertEqual(st, 500, body)
        self.assertEqual(self.served("a"), (200, "a"))  # the worker goes on


if __name__ == "__main__":
    unittest.main()
