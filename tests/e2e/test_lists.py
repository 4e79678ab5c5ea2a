"""Run-time list entries (issues 6 and 7): the admin API's GET/POST/DELETE on the risk engine's
named lists, their effect on live traffic, expiry, reloads and errors; and the cluster list sync,
where an entry added on one instance blocks on another within a second through Redis pub/sub."""
import json
import os
import textwrap
import time
import unittest

from harness import (ProxyTestCase, Sluice, admin_call, admin_reload, default_config, free_port,
                     upstream_yaml, wait_until, write_config)
from test_cluster import Redis
from test_risk import ROUTES, RiskCase, chrome_headers, log_for, raw_request, risk_section

LISTS = textwrap.indent(textwrap.dedent("""\
    lists:
      - {name: scalper_ips, kind: ip, file: ips.txt, points: 100}
      - {name: farm_devices, kind: device, file: devices.txt, points: 100}
      - {name: vip, kind: member, file: vip.txt, allow: true}
    """), "  ")


def write_list_files(d):
    with open(os.path.join(d, "ips.txt"), "w") as f:
        f.write("# from the fraud team\n198.51.100.0/24\n")
    with open(os.path.join(d, "devices.txt"), "w") as f:
        f.write("dev-from-file\n")
    with open(os.path.join(d, "vip.txt"), "w") as f:
        f.write("")


def post(s, path, doc, token="e2e-admin-token"):
    return admin_call(s, "POST", path, token=token, body=json.dumps(doc).encode())


def listed(s, name, value):
    st, _, j = admin_call(s, "GET", "/lists/%s?match=%s" % (name, value))
    assert st == 200, (st, j)
    return j["listed"]


class TestListsAdmin(RiskCase):
    def start(self, extra_top=""):
        write_list_files(self.tmp)
        return super().start(extra=LISTS + extra_top)

    def browse(self, s, device, path="/item/5"):
        st, _, _ = raw_request(s.port, "GET", path, chrome_headers("device=%s" % device))
        return st

    def test_added_device_is_blocked_at_once_and_removal_stops_the_list_signal(self):
        s = self.start()
        self.assertEqual(self.browse(s, "farm-9"), 200)
        st, _, j = post(s, "/lists/farm_devices", {"entries": ["farm-9", "farm-10"]})
        self.assertEqual(st, 200, j)
        self.assertEqual(j["added"], 2)
        self.assertEqual(self.browse(s, "farm-9", "/item/6"), 403)
        entry = log_for(s, lambda e: e.get("path") == "/item/6")[-1]
        self.assertIn("list.device", json.dumps(entry["risk"]))
        # Another device on the same IP is not listed (the IP's carried score may still
        # challenge it: scores decay per entity, which is the engine's business, not the list's).
        self.browse(s, "someone-else", "/item/7")
        entry = log_for(s, lambda e: e.get("path") == "/item/7")[-1]
        self.assertNotIn("list.device", json.dumps(entry["risk"]))
        self.assertNotEqual(entry["risk"]["action"], "block")

        st, _, j = admin_call(s, "GET", "/lists/farm_devices")
        self.assertEqual([e["entry"] for e in j["entries"]], ["farm-10", "farm-9"])
        self.assertIsNone(j["entries"][0]["expires_in_s"])
        self.assertEqual(j["file_entries"], 1)

        st, _, j = admin_call(s, "DELETE", "/lists/farm_devices?entry=farm-9")
        self.assertEqual(st, 200, j)
        self.assertEqual(j["removed"], 1)
        self.assertFalse(listed(s, "farm_devices", "farm-9"))
        self.browse(s, "farm-9", "/item/8")
        entry = log_for(s, lambda e: e.get("path") == "/item/8")[-1]
        self.assertNotIn("list.device", json.dumps(entry["risk"]))

    def test_ip_entries_are_canonical_cidrs_and_match_addresses(self):
        s = self.start()
        st, _, j = post(s, "/lists/scalper_ips", {"entries": ["203.0.113.77/24"], "ttl": "1h"})
        self.assertEqual(st, 200, j)
        self.assertTrue(listed(s, "scalper_ips", "203.0.113.5"))
        self.assertFalse(listed(s, "scalper_ips", "203.0.114.5"))
        st, _, j = admin_call(s, "GET", "/lists/scalper_ips")
        self.assertEqual(j["entries"][0]["entry"], "203.0.113.0/24")
        self.assertGreater(j["entries"][0]["expires_in_s"], 3500)
        # The file's CIDR answers too, and says where it comes from.
        st, _, j = admin_call(s, "GET", "/lists/scalper_ips?match=198.51.100.9")
        self.assertEqual((j["listed"], j["in_file"], j["runtime"]), (True, True, False))
        # 127.0.0.1 (this client) blocked by IP.
        post(s, "/lists/scalper_ips", {"entry": "127.0.0.1"})
        self.assertEqual(self.browse(s, "d-ip"), 403)

    def test_bad_input_is_a_400_and_changes_nothing(self):
        s = self.start()
        st, _, j = post(s, "/lists/scalper_ips", {"entries": ["192.0.2.1", "nope"]})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"], "entries[1]: not an IP address or CIDR: 'nope'")
        self.assertFalse(listed(s, "scalper_ips", "192.0.2.1"))
        for body in (b"not json", b'{"entries": "x"}', b'{"entries": []}', b"{}"):
            st, _, j = admin_call(s, "POST", "/lists/farm_devices", body=body)
            self.assertEqual(st, 400, body)
            self.assertIn("error", j)
        st, _, j = post(s, "/lists/farm_devices", {"entries": ["a b"]})
        self.assertEqual(st, 400)
        self.assertIn("whitespace", j["error"])
        st, _, j = post(s, "/lists/farm_devices", {"entries": ["x"], "ttl": "soon"})
        self.assertEqual(st, 400)
        self.assertIn("ttl", j["error"])
        st, _, j = post(s, "/lists/nosuch", {"entries": ["x"]})
        self.assertEqual(st, 404)
        # Only the file can take away a file entry.
        st, _, j = admin_call(s, "DELETE", "/lists/farm_devices?entry=dev-from-file")
        self.assertEqual(st, 409)
        self.assertIn("devices.txt", j["error"])
        st, _, j = admin_call(s, "DELETE", "/lists/farm_devices?entry=never-added")
        self.assertEqual(st, 404)
        st, _, j = admin_call(s, "GET", "/lists")
        self.assertEqual([l["runtime_entries"] for l in j["lists"]], [0, 0, 0])

    def test_changes_need_the_token(self):
        s = self.start()
        st, _, _ = post(s, "/lists/farm_devices", {"entries": ["x"]}, token=None)
        self.assertEqual(st, 401)
        st, _, _ = post(s, "/lists/farm_devices", {"entries": ["x"]}, token="wrong")
        self.assertEqual(st, 401)
        st, _, _ = admin_call(s, "DELETE", "/lists/farm_devices?entry=x", token=None)
        self.assertEqual(st, 401)
        self.assertFalse(listed(s, "farm_devices", "x"))

    def test_entries_expire_and_survive_reloads(self):
        s = self.start()
        post(s, "/lists/farm_devices", {"entries": ["short"], "ttl": "1s"})
        post(s, "/lists/vip", {"entries": ["alice"]})
        self.assertTrue(listed(s, "farm_devices", "short"))
        # A reload that changes the config (and re-reads the files) keeps run-time entries.
        with open(s.config_path) as f:
            text = f.read()
        write_config(s, text.replace("pow_difficulty: {pow: 8}", "pow_difficulty: {pow: 9}"))
        st, j = admin_reload(s)
        self.assertEqual(st, 200, j)
        self.assertIn("live", j["message"])
        self.assertTrue(listed(s, "vip", "alice"))
        wait_until(lambda: not listed(s, "farm_devices", "short"), timeout=5,
                   message="the 1 s entry to expire")
        st, _, j = admin_call(s, "GET", "/lists")
        counts = {l["name"]: l["runtime_entries"] for l in j["lists"]}
        self.assertEqual(counts, {"scalper_ips": 0, "farm_devices": 0, "vip": 1})


REDIS_LISTS = "  sync_lists: true\n  lists_resync_interval: 500ms\n"


class TestListFileReload(RiskCase):
    def test_reload_ignored_a_list_file_replaced_under_an_unchanged_config(self):
        write_list_files(self.tmp)
        s = super().start(extra=LISTS)
        self.assertFalse(listed(s, "farm_devices", "farm-new"))
        path = os.path.join(self.tmp, "devices.txt")
        with open(path + ".new", "w") as f:
            f.write("dev-from-file\nfarm-new\n")
        os.replace(path + ".new", path)  # sluice.yaml itself is untouched
        st, j = admin_reload(s)
        self.assertEqual(st, 200, j)
        self.assertTrue(listed(s, "farm_devices", "farm-new"))
        st, _, j = admin_call(s, "GET", "/lists/farm_devices?match=farm-new")
        self.assertTrue(j["in_file"])


class TestTrustedTlsFingerprint(RiskCase):
    """The TLS terminator's fingerprint header, from a peer in trusted_proxies: honoured by the
    risk phase (a tls list matches it) and forwarded; from anyone else it is stripped
    (test_risk.test_tls_fingerprint_header_stripped_from_untrusted_peer)."""

    BAD = "t13d1516h2_8daaf6152771_e5627efa2ab1"

    def test_a_trusted_peers_fingerprint_is_scored_and_forwarded(self):
        write_list_files(self.tmp)
        with open(os.path.join(self.tmp, "tls.txt"), "w") as f:
            f.write(self.BAD + "\n")
        self.write_secrets()
        self.demo = self.start_demo()
        extra = risk_section(extra=LISTS + "    - {name: bad_tls, kind: tls, file: tls.txt, points: 100}\n")
        extra = extra.replace("trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [127.0.0.1/32]")
        s = self.start_sluice(upstream_yaml("storefront", [self.demo.address]), ROUTES, extra=extra)
        st, _, body = raw_request(s.port, "GET", "/__demo/echo",
                                  chrome_headers() + [("X-TLS-Fingerprint", self.BAD)])
        self.assertEqual(st, 200)
        seen = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        self.assertEqual(seen.get("x-tls-fingerprint"), self.BAD)
        raw_request(s.port, "GET", "/item/9", chrome_headers("device=d-tls") + [("X-TLS-Fingerprint", self.BAD)])
        entry = log_for(s, lambda e: e.get("path") == "/item/9")[-1]
        self.assertIn("tls.listed", json.dumps(entry["risk"]))
        raw_request(s.port, "GET", "/item/10", chrome_headers("device=d-tls2") +
                    [("X-TLS-Fingerprint", "t13d1516h2_8daaf6152771_000000000000")])
        entry = log_for(s, lambda e: e.get("path") == "/item/10")[-1]
        self.assertNotIn("tls.listed", json.dumps(entry["risk"]))


def cluster_config(port, admin, upstream, redis_port, redis_extra=REDIS_LISTS, risk_extra=LISTS):
    return default_config(
        port, admin, upstream_yaml("storefront", [upstream]), ROUTES,
        extra=risk_section(extra=risk_extra) +
        "redis:\n  endpoints: [127.0.0.1:%d]\n" % redis_port + redis_extra)


class TestListsClusterSync(RiskCase):
    REDIS_EXTRA = REDIS_LISTS
    RISK_EXTRA = LISTS
    REDIS_ARGS = ()
    PASSWORD = None

    def cli(self, *args):
        auth = ("-a", self.PASSWORD, "--no-auth-warning") if self.PASSWORD else ()
        return self.redis.cli(*(auth + args))

    def setUp(self):
        super().setUp()
        self.redis = Redis(self.tmp, extra=self.REDIS_ARGS)
        self.demo = self.start_demo()
        self.instances = [self.instance(n) for n in ("a", "b")]

    def tearDown(self):
        super().tearDown()
        self.redis.kill()

    def instance(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        write_list_files(d)
        with open(os.path.join(d, "risk.key"), "w") as f:
            f.write("m" * 48 + "\n")
        with open(os.path.join(d, "verifier.key"), "w") as f:
            f.write("v" * 48 + "\n")
        port, admin = free_port(), free_port()
        s = Sluice(d, cluster_config(port, admin, self.demo.address, self.redis.port, self.REDIS_EXTRA,
                                     self.RISK_EXTRA), port, admin)
        self._procs.append(s)
        wait_until(lambda: admin_call(s, "GET", "/lists")[2]["cluster_sync"].get("subscribed"),
                   timeout=10, message="instance %s subscribed" % name)
        return s

    def test_entry_added_on_one_instance_blocks_on_the_other_within_a_second(self):
        a, b = self.instances
        t0 = time.monotonic()
        st, _, j = post(a, "/lists/farm_devices", {"entries": ["farm-77"]})
        self.assertEqual(st, 200, j)
        wait_until(lambda: listed(b, "farm_devices", "farm-77"), timeout=1.0,
                   message="instance b to apply the pushed entry")
        elapsed = time.monotonic() - t0
        st, _, _ = raw_request(b.port, "GET", "/item/1", chrome_headers("device=farm-77"))
        self.assertEqual(st, 403)
        self.assertLess(elapsed, 1.0)
        self.assertEqual(self.cli("ZRANGE", "sluice:list:farm_devices", "0", "-1"), "farm-77")
        # Removal travels the same way.
        st, _, _ = admin_call(a, "DELETE", "/lists/farm_devices?entry=farm-77")
        self.assertEqual(st, 200)
        wait_until(lambda: not listed(b, "farm_devices", "farm-77"), timeout=1.0,
                   message="instance b to drop the entry")

    def test_expiry_travels_and_a_new_instance_reads_existing_entries(self):
        a, b = self.instances
        post(a, "/lists/scalper_ips", {"entries": ["203.0.113.0/24"], "ttl": "2s"})
        wait_until(lambda: listed(b, "scalper_ips", "203.0.113.9"), timeout=1.0, message="push")
        post(a, "/lists/vip", {"entries": ["carol"]})
        c = self.instance("c")  # started after the fact: its first full read brings both
        wait_until(lambda: listed(c, "vip", "carol") and listed(c, "scalper_ips", "203.0.113.9"),
                   timeout=2.0, message="the new instance's full read")
        for s in (a, b, c):
            wait_until(lambda: not listed(s, "scalper_ips", "203.0.113.9"), timeout=5.0,
                       message="the 2 s entry to expire everywhere")

    def test_external_writer_and_redis_restart(self):
        a, b = self.instances
        # Another system (the fraud backend) writes the set and publishes the same message.
        self.cli("ZADD", "sluice:list:farm_devices", "+inf", "ext-1")
        self.cli("PUBLISH", "sluice:lists", "add\tfarm_devices\t0\text-1")
        for s in (a, b):
            wait_until(lambda: listed(s, "farm_devices", "ext-1"), timeout=1.0, message="external push")
        # A garbage message is counted and ignored.
        self.cli("PUBLISH", "sluice:lists", "frobnicate\tx")
        wait_until(lambda: admin_call(a, "GET", "/lists")[2]["cluster_sync"]["bad_messages"] >= 1,
                   timeout=2.0, message="bad message counted")
        # Redis goes away: a change on a still applies there and is written once Redis is back.
        port = self.redis.port
        self.redis.kill()
        st, _, j = post(a, "/lists/farm_devices", {"entries": ["while-down"]})
        self.assertEqual(st, 200, j)
        self.assertTrue(listed(a, "farm_devices", "while-down"))
        self.assertFalse(listed(b, "farm_devices", "while-down"))
        self.redis = Redis(self.tmp, port=port)  # empty: no persistence
        wait_until(lambda: listed(b, "farm_devices", "while-down"), timeout=8.0,
                   message="the queued write to reach b after Redis came back")
        for s in (a, b):
            wait_until(lambda: admin_call(s, "GET", "/lists")[2]["cluster_sync"]["subscribed"],
                       timeout=5.0, message="resubscribed")
        # Both still serve.
        st, _, _ = raw_request(b.port, "GET", "/item/2", chrome_headers("device=ok"))
        self.assertEqual(st, 200)


class TestListsClusterSyncWithPassword(TestListsClusterSync):
    """The subscriber connection authenticates like the command connections do."""
    REDIS_ARGS = ("--requirepass", "s3cret-list-sync")
    PASSWORD = "s3cret-list-sync"
    REDIS_EXTRA = REDIS_LISTS + "  password: s3cret-list-sync\n"
    test_expiry_travels_and_a_new_instance_reads_existing_entries = None
    test_external_writer_and_redis_restart = None


if __name__ == "__main__":
    unittest.main()
