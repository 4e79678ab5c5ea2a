"""Cluster scope end to end (docs/cluster.md): two sluice instances sharing one redis-server
(started here on a free port): a lease-mode global limit under load (combined accepted rate
within +-5 % of the configured rate), an exact-mode per-member quota, the sale gate never
overselling with both instances hammering the last units (plus units returned through the admin
API), and Redis killed mid-load (fail_open keeps serving at the local share, fail_closed refuses,
no request waits past its budget) then restarted (syncing resumes)."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import unittest

from harness import (ProxyTestCase, Sluice, admin_call, admin_reload, free_port, http_get,
                     upstream_yaml, wait_port, wait_until, write_config)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
ADMIN_TOKEN = "e2e-admin-token"


class Redis:
    """A throwaway redis-server on a free loopback port (no persistence)."""

    def __init__(self, tmpdir, port=None, extra=()):
        self.port = port or free_port()
        self.dir = os.path.join(tmpdir, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir] + list(extra),
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port)] + list(args),
                              capture_output=True, text=True, timeout=10).stdout.strip()


def cluster_port():
    """A free port p whose cluster bus port p + 10000 is free too (and below 65536)."""
    import random
    import socket
    for _ in range(200):
        p = random.randint(20000, 50000)
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", p))
                s2.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three masters, no replicas, on free loopback ports (redis-cli --cluster create)."""

    def __init__(self, tmpdir):
        self.nodes = [Redis(tmpdir, port=cluster_port(),
                            extra=["--cluster-enabled", "yes", "--cluster-config-file",
                                   "nodes.conf", "--cluster-node-timeout", "5000"])
                      for _ in range(3)]
        out = subprocess.run(["redis-cli", "--cluster", "create"] +
                             ["127.0.0.1:%d" % n.port for n in self.nodes] +
                             ["--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60).stdout
        if "All 16384 slots covered" not in out:
            raise RuntimeError("cluster create failed:\n" + out)
        wait_until(lambda: all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes),
                   timeout=20, message="cluster_state:ok on every node")

    def kill(self):
        for n in self.nodes:
            n.kill()

    def total(self, pattern):
        """GET of every key matching `pattern` on every node, summed."""
        total = 0
        for n in self.nodes:
            for k in n.cli("--scan", "--pattern", pattern).split():
                total += int(n.cli("GET", k) or 0)
        return total


def config(port, admin_port, upstream, redis_port, rules, routes, redis_extra=""):
    return (
        "workers: 1\n"
        "listeners:\n  - address: 127.0.0.1:%d\n"
        "admin:\n  address: 127.0.0.1:%d\n  token: %s\n"
        "log:\n  level: info\n  access: access.log\n"
        "redis:\n  endpoints: [127.0.0.1:%d]\n  expected_instances: 2\n"
        "  command_timeout: 100ms\n  breaker_failures: 3\n  breaker_cooldown: 300ms\n"
        "  backoff_base: 50ms\n  backoff_max: 300ms\n%s"
        "upstreams:\n  storefront:\n    servers:\n      - address: %s\n"
        "limits:\n  rules:\n%s"
        "routes:\n%s" % (port, admin_port, ADMIN_TOKEN, redis_port, redis_extra, upstream,
                         "".join("    - {%s}\n" % r for r in rules), routes))


RULES = [
    # 500 units per 1 s window, cluster-wide; fail_open: 250/s per instance while Redis is away.
    "id: global-rate, key: global, rate: 500r/s, scope: cluster, sync_interval: 50ms, "
    "on_redis_down: fail_open",
    "id: closed-rate, key: global, rate: 500r/s, scope: cluster, on_redis_down: fail_closed",
    "id: member-exact, key: member, algorithm: sliding_window, limit: 3, window: 1m, "
    "scope: cluster, cluster_mode: exact, redis_timeout: 20ms, on_redis_down: fail_closed",
    "id: slow-active, key: route, algorithm: concurrency, max_active: 4, scope: cluster, "
    "redis_timeout: 50ms",
]

ROUTES = """\
  - name: rate
    match: { path: { prefix: /rate } }
    direct_response: { status: 200, body: "ok" }
    limits: [global-rate]
  - name: closed
    match: { path: { prefix: /closed } }
    direct_response: { status: 200, body: "ok" }
    limits: [closed-rate]
  - name: member
    match: { path: { prefix: /member } }
    direct_response: { status: 200, body: "ok" }
    limits: [member-exact]
  - name: slow
    match: { path: { prefix: /api/slow } }
    upstream: storefront
    limits: [slow-active]
  - name: checkout
    match: { path: { regex: "^/api/items/[^/]+/checkout$" }, methods: [POST] }
    upstream: storefront
    sale_gate: { item: item, sold_out: { status: 200, body: "SOLD OUT" }, redis_timeout: 200ms }
"""


def metric(sluice, name, labels=""):
    status, _, raw = http_get(sluice.admin_port, "/metrics")
    total = 0.0
    for line in raw.decode().splitlines():
        if line.startswith(name + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def allowed(sluice, rule):
    _, _, body = admin_call(sluice, "GET", "/limits")
    for r in body["rules"]:
        if r["id"] == rule:
            return r["decisions"]["allowed"]
    raise KeyError(rule)


class Load:
    """wrk against one URL for `seconds` (in a thread), or a Python loop when wrk is missing."""

    def __init__(self, url, seconds, connections=4):
        self.url, self.seconds, self.connections = url, seconds, connections
        self.output = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        r = subprocess.run(["wrk", "-t1", "-c%d" % self.connections, "-d%ds" % self.seconds,
                            "--latency", self.url], capture_output=True, text=True,
                           timeout=self.seconds + 30)
        self.output = r.stdout

    def start(self):
        self.thread.start()
        return self

    def join(self):
        self.thread.join(self.seconds + 40)
        return self.output


def max_latency_ms(wrk_output):
    for line in wrk_output.splitlines():
        parts = line.split()
        if parts and parts[0] == "Latency" and len(parts) >= 4:
            v = parts[3]
            for unit, mult in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
                if v.endswith(unit):
                    return float(v[:-len(unit)]) * mult
    return None


@unittest.skipUnless(shutil.which("wrk"), "wrk is needed for the load")
class ClusterTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.redis = Redis(self.tmp)
        self.demo = self.start_demo()
        self.instances = []
        for name in ("a", "b"):
            d = os.path.join(self.tmp, name)
            os.makedirs(d)
            port, admin = free_port(), free_port()
            s = Sluice(d, config(port, admin, self.demo.address, self.redis.port, RULES, ROUTES),
                       port, admin)
            self._procs.append(s)
            self.instances.append(s)

    def tearDown(self):
        super().tearDown()
        self.redis.kill()

    def test_two_instances_share_a_lease_mode_limit_within_5_percent(self):
        # 500 r/s cluster-wide in 1 s windows (from Redis TIME). Each instance is offered several
        # times that (wrk at full speed; refusals are cheap), so every window's budget is gone
        # well before the window's middle. Sampling both instances' allowed counters at the
        # middle of each wall-clock second (the host's clock is Redis's) therefore counts whole
        # windows: boundaries cannot blur the figure, whatever the machine's load.
        a, b = self.instances
        loads = [Load(s.url("/rate"), 9).start() for s in (a, b)]
        samples = []
        time.sleep(1.5)
        for _ in range(6):
            now = time.time()
            time.sleep((int(now) + 1.5) - now)  # the middle of the next second
            samples.append(allowed(a, "global-rate") + allowed(b, "global-rate"))
        for l in loads:
            l.join()
        per_window = [y - x for x, y in zip(samples, samples[1:])]
        total = sum(per_window)
        expected = 500 * len(per_window)
        print("accepted per 1 s window, both instances:", per_window)
        self.assertLessEqual(abs(total - expected), 0.05 * expected,
                             "combined %d accepted in %d windows, expected %d +- 5%%"
                             % (total, len(per_window), expected))
        # Lease mode: Redis round trips per request far below one.
        served = sum(allowed(s, "global-rate") for s in (a, b))
        takes = sum(metric(s, "sluice_cluster_lease_total", '{event="takes"}') for s in (a, b))
        self.assertGreater(takes, 0)
        self.assertLess(takes / served, 0.2, "lease takes %d for %d accepted" % (takes, served))

    def test_exact_mode_member_quota_holds_across_instances(self):
        a, b = self.instances
        got = []
        for i in range(8):
            s = (a, b)[i % 2]
            st, _, _ = http_get(s.port, "/member", headers={"Cookie": "member=m1"})
            got.append(st)
        self.assertEqual(got.count(200), 3, got)
        self.assertEqual(got[3:].count(429), 5, got)
        # Another member has its own quota.
        self.assertEqual(http_get(b.port, "/member", headers={"Cookie": "member=m2"})[0], 200)

    def test_concurrency_across_instances_and_slots_come_back(self):
        # max_active 4 cluster-wide: 10 slow requests at once, spread over both instances.
        a, b = self.instances
        results = []
        lock = threading.Lock()

        def slow(s):
            st, _, _ = http_get(s.port, "/api/slow?ms=800")
            with lock:
                results.append(st)

        threads = [threading.Thread(target=slow, args=((a, b)[i % 2],)) for i in range(10)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join(30)
        self.assertEqual(results.count(200), 4, results)
        self.assertEqual(results.count(429), 6, results)
        # The slots are back (reused locally or released): 4 more fit again, on either instance.
        results.clear()
        threads = [threading.Thread(target=slow, args=((b, a)[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 4)
        # Idle slots go back to Redis after a second (the TTL would free a crashed instance's).
        def released():
            raw = self.redis.cli("--scan", "--pattern", "sluice:conc:*").split()
            return all(sum(int(v) for f, v in zip(*[iter(self.redis.cli("HGETALL", k).split())] * 2)
                           if f.startswith("n:")) == 0 for k in raw)
        self.assertTrue(self.redis.cli("--scan", "--pattern", "sluice:conc:*"))
        wait_until(released, timeout=6, interval=0.2, message="held slots released to Redis")

    def test_sale_gate_never_oversells_with_both_instances_hammering(self):
        a, b = self.instances
        st, _, body = admin_call(a, "POST", "/sale/7/quota", body=b'{"units": 40}')
        self.assertEqual(st, 200, body)
        results = []
        lock = threading.Lock()

        def hammer(s):
            for _ in range(30):
                st, _, body = http_get(s.port, "/api/items/7/checkout", method="POST", body="")
                with lock:
                    results.append((st, body))

        threads = [threading.Thread(target=hammer, args=((a, b)[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sold = [r for r in results if r[0] == 200 and b"order_id" in r[1]]
        sold_out = [r for r in results if r[0] == 200 and r[1] == b"SOLD OUT"]
        self.assertEqual(len(results), 240)
        self.assertEqual(len(sold), 40, "sold %d of a 40-unit quota" % len(sold))
        self.assertEqual(len(sold_out), 200)
        st, _, body = admin_call(b, "GET", "/sale/7")
        self.assertEqual((st, body["remaining"], body["sold"]), (200, 0, 40), body)
        taken = sum(metric(s, "sluice_sale_gate_total", '{result="taken"}') for s in (a, b))
        self.assertEqual(taken, 40)
        # Redis figures are published once a second even without a lease rule in use.
        wait_until(lambda: metric(a, "sluice_redis_replies_total") > 0, message="redis metrics")
        # An order cancelled: two units come back and sell again, then sold out.
        st, _, body = admin_call(b, "POST", "/sale/7/return", body=b'{"units": 2}')
        self.assertEqual((st, body["remaining"]), (200, 2), body)
        after = [http_get(a.port, "/api/items/7/checkout", method="POST", body="") for _ in range(3)]
        self.assertEqual([b"order_id" in r[2] for r in after], [True, True, False])
        # Returns never create stock beyond the quota.
        st, _, body = admin_call(a, "POST", "/sale/7/return", body=b'{"units": 500}')
        self.assertEqual(body["remaining"], 40, body)
        # An item without a quota is not on sale: checkouts pass.
        self.assertIn(b"order_id", http_get(a.port, "/api/items/8/checkout", method="POST", body="")[2])

    def test_reload_changing_redis_settings_reconnects_without_stalling_requests(self):
        a, _ = self.instances
        for path in ("/rate", "/closed"):
            self.assertEqual(http_get(a.port, path)[0], 200)
        self.assertEqual(http_get(a.port, "/member", headers={"Cookie": "member=r"})[0], 200)
        with open(a.config_path) as f:
            text = f.read()
        write_config(a, text.replace("  expected_instances: 2\n", "  expected_instances: 2\n  key_prefix: 'v2:'\n"))
        st, body = admin_reload(a)
        self.assertEqual(st, 200, body)
        t = time.time()
        for _ in range(20):
            self.assertEqual(http_get(a.port, "/rate")[0], 200)
        got = [http_get(a.port, "/member", headers={"Cookie": "member=r"})[0] for _ in range(4)]
        self.assertLess(time.time() - t, 2.0)
        # New keys under the new prefix: the member's quota starts over there.
        self.assertEqual(got, [200, 200, 200, 429])
        self.assertTrue(self.redis.cli("KEYS", "v2:sw:*"))

    def test_redis_killed_mid_load_then_back(self):
        a, b = self.instances
        # Warm both rules on both instances so leases exist when Redis dies.
        for s in (a, b):
            for path in ("/rate", "/closed"):
                self.assertEqual(http_get(s.port, path)[0], 200)
        self.redis.kill()
        t0 = time.time()
        # fail_open: requests keep flowing at the local share (500 / 2 instances per second);
        # fail_closed: refused at once. Nobody waits on the dead Redis.
        load_open = Load(a.url("/rate"), 4).start()
        load_closed = Load(b.url("/closed"), 4).start()
        out_open, out_closed = load_open.join(), load_closed.join()
        for out in (out_open, out_closed):
            lat = max_latency_ms(out)
            self.assertIsNotNone(lat, out)
            self.assertLess(lat, 100, "a request waited %.1f ms with Redis down:\n%s" % (lat, out))
        fallbacks_open = metric(a, "sluice_cluster_fallbacks_total", '{policy="fail_open"}')
        fallbacks_closed = metric(b, "sluice_cluster_fallbacks_total", '{policy="fail_closed"}')
        self.assertGreater(fallbacks_open, 100)
        self.assertGreater(fallbacks_closed, 100)
        # The local share: 250 per second on instance a (one second of slack for the windows).
        during = allowed(a, "global-rate")
        elapsed = time.time() - t0
        self.assertLessEqual(during, 2 + 250 * (elapsed + 1.5))
        self.assertGreater(during, 250 * (elapsed - 2) * 0.5)
        # An exact-mode fail_closed rule answers 429 within its 20 ms budget, not later.
        t = time.time()
        self.assertEqual(http_get(a.port, "/member", headers={"Cookie": "member=z"})[0], 429)
        self.assertLess(time.time() - t, 0.5)
        # Redis returns on the same port: syncing resumes (takes grow, fallbacks stop).
        self.redis = Redis(self.tmp, port=self.redis.port)
        takes_before = metric(a, "sluice_cluster_lease_total", '{event="takes"}')

        def resumed():
            http_get(a.port, "/rate")
            http_get(b.port, "/closed")
            return (metric(a, "sluice_cluster_lease_total", '{event="takes"}') > takes_before and
                    http_get(b.port, "/closed")[0] == 200)
        wait_until(resumed, timeout=10, interval=0.1, message="syncing resumed after Redis returned")
        fb = metric(b, "sluice_cluster_fallbacks_total", '{policy="fail_closed"}')
        for _ in range(20):
            http_get(b.port, "/closed")
        self.assertEqual(metric(b, "sluice_cluster_fallbacks_total", '{policy="fail_closed"}'), fb)
        self.assertTrue(self.redis.cli("KEYS", "sluice:lim:*"))


class RedisClusterTest(ProxyTestCase):
    """The same features on a three-master Redis Cluster: sluice is given one seed node and
    learns the rest; keys of different items and rules live on different nodes."""

    def setUp(self):
        super().setUp()
        self.cluster = RedisCluster(self.tmp)
        self.addCleanup(self.cluster.kill)
        self.demo = self.start_demo()
        self.instances = []
        for name in ("a", "b"):
            d = os.path.join(self.tmp, name)
            os.makedirs(d)
            port, admin = free_port(), free_port()
            s = Sluice(d, config(port, admin, self.demo.address, self.cluster.nodes[0].port, RULES,
                                 ROUTES, redis_extra="  cluster: true\n"), port, admin)
            self._procs.append(s)
            self.instances.append(s)

    def test_sale_gate_and_limits_on_a_redis_cluster(self):
        a, b = self.instances
        items = [str(i) for i in range(1, 7)]  # hash tags {1}..{6}: spread over the masters
        for item in items:
            st, _, body = admin_call((a, b)[int(item) % 2], "POST", "/sale/%s/quota" % item,
                                     body=b'{"units": 5}')
            self.assertEqual(st, 200, body)
        # The stock keys really are spread over several masters.
        holders = [n for n in self.cluster.nodes if n.cli("--scan", "--pattern", "sluice:sale:*:stock")]
        self.assertGreater(len(holders), 1)
        results = []
        lock = threading.Lock()

        def hammer(k):
            s = (a, b)[k % 2]
            for n in range(24):
                item = items[(k + n) % len(items)]
                st, _, body = http_get(s.port, "/api/items/%s/checkout" % item, method="POST", body="")
                with lock:
                    results.append((item, b"order_id" in body))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for item in items:
            sold = sum(1 for i, ok in results if i == item and ok)
            self.assertEqual(sold, 5, "item %s sold %d of 5" % (item, sold))
        self.assertEqual(self.cluster.total("sluice:sale:*:stock"), 0)
        st, _, body = admin_call(b, "GET", "/sale/3")
        self.assertEqual((st, body["remaining"], body["sold"]), (200, 0, 5), body)
        # Exact mode on the cluster: 3 per member across both instances.
        got = [http_get((a, b)[i % 2].port, "/member", headers={"Cookie": "member=c1"})[0] for i in range(6)]
        self.assertEqual(got, [200, 200, 200, 429, 429, 429])
        # Lease mode: the leases live on the cluster.
        for _ in range(50):
            http_get(a.port, "/rate")
        wait_until(lambda: any(n.cli("--scan", "--pattern", "sluice:lim:*") for n in self.cluster.nodes),
                   message="lease keys on the cluster")
        # (worker counters are published at each sync tick)
        wait_until(lambda: metric(a, "sluice_cluster_lease_total", '{event="takes"}') > 0,
                   message="lease takes counted")
        self.assertEqual(metric(a, "sluice_cluster_fallbacks_total", '{policy="fail_open"}'), 0)


if __name__ == "__main__":
    unittest.main()
