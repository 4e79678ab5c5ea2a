"""Reload on file changes (issue 5, `reload: {watch: true}`): an edited policy or config file is
picked up once the writes go quiet, a burst of writes is one reload, files that do not matter
(the access log next to the config) trigger nothing, and a broken edit keeps the old version
serving with the error in GET /status."""
import os
import time
import unittest

from harness import ProxyTestCase, admin_call, free_port, http_get, wait_until

POLICY = """
return {
  name = "tag",
  phases = {
    access = function(conf, ctx) sluice.req.set_header("X-Tag", "%s") end,
  },
}
"""


def config(port, admin, demo, extra_route=""):
    return (
        "workers: 2\n"
        "listeners:\n  - address: 127.0.0.1:%d\n"
        "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
        "log:\n  level: info\n  access: access.log\n"
        "reload:\n  watch: true\n  debounce: 150ms\n"
        "lua:\n  policies_dir: policies\n"
        "upstreams:\n  storefront:\n    servers: [{ address: %s }]\n"
        "routes:\n%s"
        "  - name: shop\n    match: { path: { prefix: / } }\n    upstream: storefront\n"
        "    policies: [tag]\n" % (port, admin, demo, extra_route))


def replace(path, text):
    """Writes the way editors and deploy tools do: a temporary file renamed over the old one."""
    tmp = path + ".tmp~"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class ReloadWatchTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.pdir = os.path.join(self.tmp, "policies")
        os.makedirs(self.pdir)
        replace(os.path.join(self.pdir, "tag.lua"), POLICY % "v1")
        self.demo = self.start_demo()
        self.port, self.admin = free_port(), free_port()
        self.s = self.start_sluice_text(config(self.port, self.admin, self.demo.address),
                                        self.port, self.admin)

    def status(self):
        return admin_call(self.s, "GET", "/status")[2]

    def tag(self):
        import json
        st, _, body = http_get(self.port, "/__demo/echo")
        assert st == 200, (st, body)
        return dict((k.lower(), v) for k, v in json.loads(body)["headers"]).get("x-tag")

    def test_an_edited_policy_is_live_after_the_quiet_period_and_a_burst_is_one_reload(self):
        self.assertEqual(self.tag(), "v1")
        gen = self.status()["generation"]
        for i in range(5):  # a deploy writing several versions in a row
            replace(os.path.join(self.pdir, "tag.lua"), POLICY % ("v%d" % (i + 2)))
            time.sleep(0.02)
        wait_until(lambda: self.tag() == "v6", timeout=5, message="the last version live")
        time.sleep(0.5)
        self.assertEqual(self.status()["generation"], gen + 1)

    def test_traffic_and_other_files_trigger_nothing(self):
        gen = self.status()["generation"]
        for _ in range(50):  # every request writes access.log, next to the config file
            self.tag()
        with open(os.path.join(self.tmp, "notes.txt"), "w") as f:
            f.write("not config\n")
        time.sleep(0.6)
        self.assertEqual(self.status()["generation"], gen)

    def test_a_config_edit_reloads_and_a_broken_one_keeps_serving(self):
        gen = self.status()["generation"]
        replace(self.s.config_path, config(self.port, self.admin, self.demo.address,
                                           "  - name: direct\n    match: { path: { exact: /ping } }\n"
                                           "    direct_response: { status: 204 }\n"))
        wait_until(lambda: self.status()["generation"] == gen + 1, timeout=5, message="the reload")
        self.assertEqual(http_get(self.port, "/ping")[0], 204)
        replace(os.path.join(self.pdir, "tag.lua"), "return { name = ")  # a syntax error
        wait_until(lambda: self.status()["last_reload"].startswith("failed"), timeout=5,
                   message="the failed reload reported")
        self.assertIn("tag.lua", self.status()["last_reload"])
        self.assertEqual(self.status()["generation"], gen + 1)
        self.assertEqual(self.tag(), "v1")


if __name__ == "__main__":
    unittest.main()
