"""Differential test of the leaky bucket against nginx's limit_req (issue 3, "Tests"): the same
timed request traces are played, at the same moments, into sluice and into a real nginx with
`limit_req` (same rate / burst / nodelay / delay=N, `limit_req_status 429`), both in front of the
same demo storefront, and the two accept / delay / reject sequences must be the same.

How the timing noise of a Python client on a shared 2-core machine is kept out of the verdict:

- Timing noise acts in one direction: a request reaches a proxy some time after it was sent,
  never before, and a single-worker proxy serves ready connections in the order their data
  arrived. `sensitive()` replays nginx's arithmetic (`model()`) with such latencies (each request
  alone late by eps, pushing those right behind it, and random draws of all of them in
  [0, eps]) and flags every request whose decision could change.
- Traces are designed, before they are played, with no request sensitive to DESIGN_MARGIN
  (35 ms) of latency; a request that is gets nudged or dropped (`robust()`). Requests "at once"
  are due at the same instant and sent back to back in one go, so a late wake-up of the client
  delays a burst without spreading it.
- Each request goes on its own fresh connection (opened 30 ms ahead, so the connect is not in
  the timing) from a source address of its trace's own (127.0.0.N), so traces are independent
  keys of `key: ip` / `$binary_remote_addr` and all run concurrently in one event loop.
- The moment each request was really sent is recorded; after the run the requests whose
  decision FLAG_MARGIN (15 ms) of latency after those real send times could change are flagged:
  there, either answer is right.
- An attempt agrees when the two sequences are identical. If they differ (at or after a flagged
  request: timing decided, not the limiter; else a stall longer than the flag margin, or a real
  difference), the trace is replayed from a fresh address, at most ATTEMPTS times in all. A real
  difference between sluice and nginx is deterministic and fails every attempt (checked by
  hand: sluice with burst + 1 on one zone, or delay + 1, fails this test).

Two sluices when the binary has the `resolution:` rule key (`sluice -t` accepts it): one in
the default nanosecond resolution and one with `resolution: nginx` (limiter/gcra.h's
GcraResolution::kNginxMillis, nginx's integer millisecond arithmetic); each must agree with
nginx. Without the key (it is not in every build yet) only the first runs. The differences the
two resolutions have by design (sub-millisecond arrivals, nginx's truncated rates such as
1r/m = 16/1000 s) are inside the flag margin here and covered by
tests/unit/limiter/gcra_test.cc.

Delays (no nodelay): a delayed request is answered no earlier than the model's delay (a hard
bound: the proxy's arrival time is never before our send time, and a later arrival can only
postpone the release) and, in an agreeing attempt, the two proxies' delays are within
DELAY_PAIR_TOLERANCE of each other and of the model plus DELAY_SLACK. The delay traces run at
4r/s, so one step of delay is 250 ms: an off-by-one-step delay is far outside those tolerances.
"""
import os
import random
import selectors
import socket
import subprocess
import sys
import textwrap
import time
import unittest

from harness import (SLUICE_BIN, Process, ProxyTestCase, Sluice, default_config, free_port,
                     upstream_yaml, wait_port)

NGINX = os.environ.get("SLUICE_NGINX", "/usr/sbin/nginx")

DESIGN_MARGIN = 0.035    # no designed decision changes with up to this much latency
FLAG_MARGIN = 0.015      # after the real send times, decisions this much latency could change are flagged
CONNECT_AHEAD = 0.030    # connections are opened this long before their request is sent
ATTEMPTS = 3             # plays of a trace before a disagreement fails the test
DELAY_LOWER_SLACK = 0.020  # ms truncation in nginx, clock granularity: answers never earlier than this
DELAY_SLACK = 0.200      # a delayed answer may come this much later than the model (load)
DELAY_PAIR_TOLERANCE = 0.120  # the two proxies' measured delays of one request (half a 250 ms step)


# ---------------------------------------------------------------------------------------------
# nginx's limit_req arithmetic (ngx_http_limit_req_lookup / _account), in requests and seconds.

def model(times, rate, burst, nodelay=True, delay=0, observed=None):
    """For each request time: (decision 'A'/'R', delay in s). With `observed` (the decisions a
    proxy really made), the state follows those instead of the model's own, so one request that
    went the other way does not change what is expected of everything after it.

    Per key nginx keeps `excess` E (requests beyond the rate, 0 for a new key) and `last`:
    E' = max(0, E - rate * (t - last) + 1); reject (state unchanged) when E' > burst; else E = E',
    last = t, and without nodelay hold the request (E' - delay) / rate when E' > delay."""
    state = None
    out = []
    for i, t in enumerate(times):
        if state is None:
            decision, new_excess = "A", 0.0
        else:
            excess, last = state
            new_excess = max(0.0, excess - rate * (t - last) + 1)
            decision = "R" if new_excess > burst + 1e-9 else "A"
        accepted = (observed[i] if observed else decision) == "A"
        if accepted:
            state = (new_excess, t)
        # What the proxy holds an accepted request for (also when the model alone would have
        # refused it: the state follows the proxy).
        held = 0.0 if not accepted or nodelay or new_excess <= delay else (new_excess - delay) / rate
        out.append((decision, held))
    return out


def sensitive(times, rate, burst, eps, observed=None, seed=0, draws=64):
    """Which requests' decisions could change if each request reached the proxy up to `eps`
    after it was sent. That is how timing noise acts: a request arrives some time after it
    was sent, never before, and a single-threaded proxy serves ready connections in arrival
    order (so requests sent in one instant stay in order and cannot come "closer" than 0).
    Tried: each request alone late by eps (pushing the ones right behind it), and `draws`
    random draws of every latency in [0, eps]."""
    base = [d for d, _ in model(times, rate, burst, observed=observed)]
    rng = random.Random(seed)
    scenarios = []
    for j in range(len(times)):
        scenarios.append([eps if k == j else 0.0 for k in range(len(times))])
    for _ in range(draws):
        scenarios.append([rng.uniform(0, eps) for _ in times])
    flagged = [False] * len(times)
    for lat in scenarios:
        arrivals, prev = [], float("-inf")
        for t, l in zip(times, lat):
            prev = max(prev, t + l)
            arrivals.append(prev)
        for i, (d, _) in enumerate(model(arrivals, rate, burst, observed=observed)):
            if d != base[i]:
                flagged[i] = True
    return flagged


def robust(times, rate, burst, eps=DESIGN_MARGIN):
    """The trace with no request whose decision `eps` of latency could change: such a request
    is moved in 5 ms steps, earlier first (towards a clear refusal, keeping the pressure on),
    never past its neighbours, else dropped. A decision depends on the requests before it only,
    so the trace is fixed from the front. Deterministic: a seeded trace is the same every run."""
    times = list(times)
    i = 0
    while i < len(times):
        if not sensitive(times[:i + 1], rate, burst, eps, draws=16)[i]:
            i += 1
            continue
        lo = times[i - 1] if i > 0 else 0.0
        hi = times[i + 1] if i + 1 < len(times) else float("inf")
        for step in (-1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6, -7, 7, -8, 8):
            t = times[i] + 0.005 * step
            if lo <= t <= hi and not sensitive(times[:i] + [t], rate, burst, eps, draws=16)[i]:
                times[i] = t
                break
        else:
            del times[i]
    return times


# ---------------------------------------------------------------------------------------------
# The zones (nginx) / rules (sluice): one exact path each.

ZONES = {
    # name: (path, rate per second, burst, nodelay, delay)
    "nd5": ("/api/items/1", 10, 5, True, 0),
    "nd3": ("/api/items/2", 10, 3, True, 0),
    "d1": ("/api/items/3", 4, 4, False, 1),
    "d0": ("/api/items/4", 4, 3, False, 0),
}


def spaced(start, n):
    """n requests "at once": all due at the same instant, so the event loop sends them back to
    back in trace order in one go (a late wake-up delays the whole burst, it does not spread it;
    each proxy serves ready connections in the order their data arrived)."""
    return [start] * n


def build_traces():
    traces = {}
    # A burst at t=0 larger than the burst, a partial refill, then a burst after a full refill
    # (full: the backlog of 4.6 left at 0.35 s is gone by 0.35 + 0.56 s, so by 1.0 s the timing
    # of the earlier requests no longer matters).
    traces["burst_over"] = ("nd5", spaced(0.0, 10) + spaced(0.35, 4) + spaced(1.0, 8))
    # Gaps longer than the refill ((burst + 1) / rate = 0.6 s): every gap restores the whole burst.
    traces["gaps_over_refill"] = ("nd5", spaced(0.0, 8) + spaced(0.75, 8) + spaced(1.6, 8) + [2.4, 3.3])
    # Spend the burst, then steady at exactly the rate (100 ms), half a period off the boundary:
    # the backlog stays constant and nothing more is rejected.
    traces["steady_at_rate"] = ("nd3", spaced(0.0, 4) + [0.15 + 0.1 * i for i in range(25)])
    # Just above the rate: 11.8 r/s against 10 r/s.
    traces["just_above_rate"] = ("nd3", [0.085 * i for i in range(40)])
    # Random inter-arrival times (mean 80 ms), fixed seed.
    rng = random.Random(20261202)
    t, jitter = 0.0, []
    for _ in range(45):
        jitter.append(t)
        t += rng.uniform(0.0, 0.16)
    traces["random_jitter"] = ("nd3", jitter)
    rng = random.Random(7)
    t, jitter2 = 0.0, []
    for _ in range(40):
        jitter2.append(t)
        t += rng.expovariate(1 / 0.07)
    traces["random_poisson"] = ("nd5", jitter2)
    # delay=1: two pass at once, the next three are held 250 / 500 / 750 ms, the rest refused;
    # after a second, one passes at once and two more are held.
    traces["delay_n"] = ("d1", spaced(0.0, 7) + spaced(1.0, 4))
    # Plain delay (no nodelay, delay=0): every request above the rate is held.
    traces["delay_all"] = ("d0", spaced(0.0, 6) + spaced(0.7, 3) + spaced(2.3, 2))
    out = {}
    for name, (zone, times) in traces.items():
        _, rate, burst, _, _ = ZONES[zone]
        out[name] = (zone, robust(times, rate, burst))
    return out


# ---------------------------------------------------------------------------------------------
# Playing traces: one single-threaded event loop, every request on its own connection.

class Shot:
    __slots__ = ("trace", "index", "proxy", "port", "source", "path", "at", "sock", "sent",
                 "first_byte", "data", "done", "error")

    def __init__(self, trace, index, proxy, port, source, path, at):
        self.trace, self.index, self.proxy, self.port = trace, index, proxy, port
        self.source, self.path, self.at = source, path, at
        self.sock = None
        self.sent = self.first_byte = None
        self.data = b""
        self.done = False
        self.error = None

    def status(self):
        try:
            return int(self.data.split(b"\r\n", 1)[0].split(b" ")[1])
        except (IndexError, ValueError):
            return None


def play(shots, timeout=30.0):
    """Connects each shot CONNECT_AHEAD before `at`, sends its request at `at` (monotonic s),
    reads the answer to EOF (Connection: close). Records the real send and first-byte times."""
    sel = selectors.DefaultSelector()
    pending_connect = sorted(shots, key=lambda s: s.at)
    pending_send = list(pending_connect)
    ci = si = 0
    open_count = 0
    deadline = max(s.at for s in shots) + timeout
    try:
        while True:
            now = time.monotonic()
            while ci < len(pending_connect) and pending_connect[ci].at - CONNECT_AHEAD <= now:
                s = pending_connect[ci]
                ci += 1
                try:
                    s.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.sock.bind((s.source, 0))
                    s.sock.settimeout(5.0)
                    s.sock.connect(("127.0.0.1", s.port))
                    s.sock.setblocking(False)
                except OSError as e:
                    s.error, s.done = "connect: %s" % e, True
            while si < len(pending_send) and pending_send[si].at <= time.monotonic():
                s = pending_send[si]
                si += 1
                if s.done:
                    continue
                req = ("GET %s HTTP/1.1\r\nHost: differential\r\nConnection: close\r\n\r\n" %
                       s.path).encode()
                s.sent = time.monotonic()
                try:
                    s.sock.send(req)  # a few dozen bytes into an empty socket buffer: all of it
                except OSError as e:
                    s.error, s.done = "send: %s" % e, True
                    continue
                sel.register(s.sock, selectors.EVENT_READ, s)
                open_count += 1
            if si == len(pending_send) and open_count == 0:
                return
            now = time.monotonic()
            if now > deadline:
                raise AssertionError("answers still missing %.0f s after the last request" % timeout)
            nxt = []
            if ci < len(pending_connect):
                nxt.append(pending_connect[ci].at - CONNECT_AHEAD)
            if si < len(pending_send):
                nxt.append(pending_send[si].at)
            wait = max(0.0, min(nxt) - now) if nxt else 0.1
            for key, _ in sel.select(timeout=min(wait, 0.1)):
                s = key.data
                try:
                    chunk = s.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    chunk, s.error = b"", "recv: %s" % e
                if chunk and s.first_byte is None:
                    s.first_byte = time.monotonic()
                s.data += chunk
                if not chunk:
                    sel.unregister(s.sock)
                    s.sock.close()
                    s.done = True
                    open_count -= 1
    finally:
        for s in shots:
            if s.sock is not None and not s.done:
                try:
                    s.sock.close()
                except OSError:
                    pass
        sel.close()


# ---------------------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    limit_req_status 429;
{zones}
    upstream storefront {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
{locations}
        location / {{
            proxy_pass http://storefront;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Nginx(Process):
    def __init__(self, tmpdir, upstream):
        self.port = free_port()
        zones, locations = [], []
        for name, (path, rate, burst, nodelay, delay) in ZONES.items():
            zones.append("    limit_req_zone $binary_remote_addr zone=%s:1m rate=%dr/s;" % (name, rate))
            mode = " nodelay" if nodelay else (" delay=%d" % delay if delay else "")
            locations.append(textwrap.indent(textwrap.dedent("""\
                location = %s {
                    limit_req zone=%s burst=%d%s;
                    proxy_pass http://storefront;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }""" % (path, name, burst, mode)), "        "))
        conf = NGINX_CONF.format(dir=tmpdir, zones="\n".join(zones), upstream=upstream,
                                 port=self.port, locations="\n".join(locations))
        path = os.path.join(tmpdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        args = [NGINX, "-c", path, "-p", tmpdir, "-e", os.path.join(tmpdir, "nginx-error.log")]
        check = Process(args + ["-t", "-q"], os.path.join(tmpdir, "nginx-check.log"))
        rc = check.proc.wait(timeout=10)
        check.log.close()
        if rc != 0:
            raise AssertionError("nginx -t refused the config:\n%s" % check.output())
        super().__init__(args, os.path.join(tmpdir, "nginx.log"))
        wait_port(self.port, proc=self.proc)


def sluice_rules(resolution=None):
    s = "limits:\n  rules:\n"
    routes = ""
    for name, (path, rate, burst, nodelay, delay) in ZONES.items():
        rule = "id: %s, key: ip, rate: %dr/s, burst: %d, max_delay: 60s" % (name, rate, burst)
        rule += ", nodelay: true" if nodelay else (", delay: %d" % delay if delay else "")
        if resolution:
            rule += ", resolution: %s" % resolution
        s += "    - {%s}\n" % rule
        routes += ("- name: %s\n  match:\n    path: { exact: %s }\n  upstream: storefront\n"
                   "  limits: [%s]\n" % (name, path, name))
    routes += "- name: rest\n  match:\n    path: { prefix: / }\n  upstream: storefront\n"
    return s, routes


@unittest.skipUnless(os.access(NGINX, os.X_OK), "no nginx at %s (nginx-light)" % NGINX)
class NginxDifferentialTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        os.chmod(self.tmp, 0o755)  # in case nginx's user directive applies (run as root)
        self.demo = self.start_demo(threads=2)
        rules, routes = sluice_rules()
        self.sluice = self.start_sluice(upstream_yaml("storefront", [self.demo.address]), routes, rules)
        self.nginx = Nginx(self.tmp, self.demo.address)
        self._procs.append(self.nginx)
        # The proxies every request goes to, the reference (nginx) last. A second sluice with
        # `resolution: nginx` (GcraResolution::kNginxMillis) when the binary knows the key.
        self.proxies = [("sluice", self.sluice.port)]
        self.nginx_resolution = self.start_nginx_resolution_sluice()
        if self.nginx_resolution:
            self.proxies.append(("sluice-ms", self.nginx_resolution.port))
        self.proxies.append(("nginx", self.nginx.port))
        self.next_source = 10

    def start_nginx_resolution_sluice(self):
        d = os.path.join(self.tmp, "ms")
        os.mkdir(d)
        rules, routes = sluice_rules(resolution="nginx")
        port, admin = free_port(), free_port()
        text = default_config(port, admin, upstream_yaml("storefront", [self.demo.address]), routes, rules)
        path = os.path.join(d, "check.yaml")
        with open(path, "w") as f:
            f.write(text)
        check = subprocess.run([SLUICE_BIN, "-t", "-c", path], capture_output=True, text=True, cwd=d)
        if check.returncode != 0:
            if "unknown key 'resolution'" in check.stdout + check.stderr:
                sys.stderr.write("\n(this sluice has no `resolution:` key: nanosecond resolution only)\n")
                return None
            self.fail("sluice -t refused the resolution: nginx config: %s" % (check.stdout + check.stderr))
        s = Sluice(d, text, port, admin)
        self._procs.append(s)
        return s

    def source(self):
        """A fresh loopback source address: a key neither proxy has seen."""
        self.next_source += 1
        n = self.next_source
        return "127.0.%d.%d" % (n // 250, 1 + n % 250)

    def run_attempt(self, traces):
        """Plays every trace of `traces` ({name: (zone, times)}) at once into every proxy;
        returns {name: [shots of each proxy of self.proxies]}."""
        t0 = time.monotonic() + 0.2
        shots, by_trace = [], {}
        for k, (name, (zone, times)) in enumerate(sorted(traces.items())):
            path = ZONES[zone][0]
            src = self.source()
            offset = 0.013 * k  # traces' bursts do not all land in the same millisecond
            pair = [[] for _ in self.proxies]
            for i, t in enumerate(times):
                # Every proxy gets request i at the same moment; which goes first rotates.
                order = [(proxy, port, slot) for slot, (proxy, port) in enumerate(self.proxies)]
                order = order[i % len(order):] + order[:i % len(order)]
                for proxy, port, slot in order:
                    s = Shot(name, i, proxy, port, src, path, t0 + offset + t)
                    shots.append(s)
                    pair[slot].append(s)
            by_trace[name] = pair
        play(shots)
        return by_trace

    def judge(self, name, zone, pair):
        """(verdict, detail, sequence): verdict 'agree', or 'boundary' / 'mismatch' / 'delay'
        (retry), or raises for what no timing explains (an error status, an early answer)."""
        _, rate, burst, nodelay, delay = ZONES[zone]
        seqs, models, flags, lat = [], [], [], []
        for shots in pair:
            for s in shots:
                if s.error or s.status() not in (200, 429):
                    raise AssertionError("%s %s request %d: %s" % (
                        name, s.proxy, s.index, s.error or "status %r: %r" % (s.status(), s.data[:200])))
            seq = "".join("A" if s.status() == 200 else "R" for s in shots)
            seqs.append(seq)
            sent = [s.sent for s in shots]
            models.append(model(sent, rate, burst, nodelay, delay, observed=seq))
            flags.append(sensitive(sent, rate, burst, FLAG_MARGIN, observed=seq))
            lat.append([s.first_byte - s.sent for s in shots])
        flagged = [any(f) for f in zip(*flags)]
        names = [p for p, _ in self.proxies]
        ref = len(seqs) - 1  # nginx
        for j in range(ref):
            if seqs[j] != seqs[ref]:
                first = next(i for i in range(len(seqs[j])) if seqs[j][i] != seqs[ref][i])
                verdict = "boundary" if any(flagged[:first + 1]) else "mismatch"
                return verdict, "%s request %d differs (flagged %s)\n%s" % (
                    names[j], first, [i for i, f in enumerate(flagged) if f], "\n".join(
                        "  %-9s %s" % (n, q) for n, q in zip(names, seqs))), seqs[ref]
        problems = []
        for i, c in enumerate(seqs[ref]):
            if c != "A":
                continue
            for p, proxy in enumerate(names):
                want = models[p][i][1]
                if lat[p][i] < want - DELAY_LOWER_SLACK:
                    raise AssertionError("%s %s request %d answered after %.0f ms, before its "
                                         "delay of %.0f ms" % (name, proxy, i, lat[p][i] * 1e3, want * 1e3))
                if lat[p][i] > want + DELAY_SLACK:
                    problems.append("%s request %d: %.0f ms, model %.0f ms" % (
                        proxy, i, lat[p][i] * 1e3, want * 1e3))
                if p != ref and abs(lat[p][i] - lat[ref][i]) > DELAY_PAIR_TOLERANCE:
                    problems.append("request %d: %s %.0f ms, nginx %.0f ms" % (
                        i, proxy, lat[p][i] * 1e3, lat[ref][i] * 1e3))
        if problems:
            return "delay", "; ".join(problems), seqs[ref]
        return "agree", "", seqs[ref]

    def test_same_decisions_as_nginx_limit_req(self):
        traces = build_traces()
        # The designed traces are not vacuous: each (but the steady one) has rejections, each
        # delay trace has held requests, and every request is far from its boundary.
        for name, (zone, times) in traces.items():
            _, rate, burst, nodelay, delay = ZONES[zone]
            m = model(times, rate, burst, nodelay, delay)
            self.assertFalse(any(sensitive(times, rate, burst, DESIGN_MARGIN)), name)
            decisions = "".join(x[0] for x in m)
            if name == "steady_at_rate":
                self.assertEqual(decisions, "A" * len(times))
            else:
                self.assertIn("R", decisions, name)
                self.assertIn("A", decisions[decisions.index("R"):], name)
            if not nodelay:
                self.assertTrue(any(x[1] > 0 for x in m), name)

        report, results = [], {}
        remaining = dict(traces)
        for attempt in range(1, ATTEMPTS + 1):
            played = self.run_attempt(remaining)
            retry = {}
            for name, pair in played.items():
                zone = remaining[name][0]
                verdict, detail, seq = self.judge(name, zone, pair)
                if verdict == "agree":
                    results[name] = (seq, pair)
                    report.append("%-16s attempt %d: %s" % (name, attempt, seq))
                    if not ZONES[zone][3]:
                        for (proxy, _), shots in zip(self.proxies, pair):
                            report.append("%-16s   %s answered after (ms): %s" % ("", proxy, " ".join(
                                "%d" % ((s.first_byte - s.sent) * 1e3) if s.status() == 200 else "-"
                                for s in shots)))
                else:
                    retry[name] = remaining[name]
                    report.append("%-16s attempt %d: %s: %s" % (name, attempt, verdict, detail))
            remaining = retry
            if not remaining:
                break
        sys.stderr.write("\n" + "\n".join(report) + "\n")
        if remaining:
            self.fail("sluice and nginx disagreed on every attempt:\n" + "\n".join(
                l for l in report if l.split()[0] in remaining))

        # What the agreeing plays did: every trace rejected where nginx did; the delay traces
        # held requests in both proxies.
        for name, (seq, pair) in results.items():
            zone = traces[name][0]
            if name != "steady_at_rate":
                self.assertIn("R", seq, name)
            if not ZONES[zone][3]:
                held = [i for i, s in enumerate(pair[-1]) if s.first_byte - s.sent > 0.2]
                self.assertTrue(held, name)
                for shots in pair[:-1]:
                    for i in held:
                        self.assertGreater(shots[i].first_byte - shots[i].sent, 0.15, (name, i))


if __name__ == "__main__":
    unittest.main()
