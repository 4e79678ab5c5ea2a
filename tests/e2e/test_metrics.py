"""GET /metrics end to end: the Prometheus text is parsed strictly and its counters match exactly
the requests sent (by route and status class, bytes, histogram counts, upstream attempts,
connections), from one worker or several; admin calls are not counted; a reload moves the config
generation and sluice_reloads_total while route series carry over. `promtool check metrics` runs
too when promtool is installed (Debian package `prometheus`) or named by $PROMTOOL."""
import math
import os
import re
import shutil
import subprocess
import threading
import time
import unittest

from harness import (ProxyTestCase, admin_reload, default_config, free_port, header, http_get,
                     upstream_yaml, wait_until, write_config)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
VALUE = re.compile(r"^(\+Inf|-Inf|NaN|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$")


class ExpositionError(AssertionError):
    pass


def parse_value(s):
    if not VALUE.match(s):
        raise ExpositionError("bad value %r" % s)
    return float(s.replace("Inf", "inf").replace("NaN", "nan"))


def parse_labels(text, i, lineno):
    """Parses `{a="x",b="y"}` starting at text[i] == '{'; returns (dict, index after '}')."""
    labels = {}
    i += 1
    while True:
        eq = text.find("=", i)
        if eq < 0:
            raise ExpositionError("line %d: label without '='" % lineno)
        name = text[i:eq]
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise ExpositionError("line %d: bad label name %r" % (lineno, name))
        i = eq + 1
        if i >= len(text) or text[i] != '"':
            raise ExpositionError("line %d: label value not quoted" % lineno)
        i += 1
        value = []
        while True:
            if i >= len(text):
                raise ExpositionError("line %d: unterminated label value" % lineno)
            c = text[i]
            if c == '"':
                i += 1
                break
            if c == "\\":
                i += 1
                esc = text[i] if i < len(text) else ""
                if esc not in ('\\', '"', "n"):
                    raise ExpositionError("line %d: bad escape \\%s" % (lineno, esc))
                value.append("\n" if esc == "n" else esc)
            else:
                value.append(c)
            i += 1
        if name in labels:
            raise ExpositionError("line %d: repeated label %s" % (lineno, name))
        labels[name] = "".join(value)
        if i < len(text) and text[i] == ",":
            i += 1
            if i < len(text) and text[i] == "}":
                raise ExpositionError("line %d: trailing comma" % lineno)
            continue
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        raise ExpositionError("line %d: bad label list" % lineno)


class Exposition:
    """Text format 0.0.4, parsed strictly: every sample's family has a preceding TYPE, families are
    contiguous, names and labels are well formed, counters end in _total and are >= 0, no
    duplicate series, histogram buckets cumulative and closed by +Inf equal to _count."""

    def __init__(self, text):
        self.types, self.help, self.samples = {}, {}, []
        if text and not text.endswith("\n"):
            raise ExpositionError("does not end in a newline")
        closed, current, seen = set(), None, set()

        def enter(family, lineno):
            nonlocal current
            if family == current:
                return
            if family in closed:
                raise ExpositionError("line %d: family %s is not contiguous" % (lineno, family))
            if current is not None:
                closed.add(current)
            current = family

        for lineno, line in enumerate(text.split("\n")[:-1], 1):
            if not line:
                raise ExpositionError("line %d: empty line" % lineno)
            if line.startswith("#"):
                m = re.match(r"^# (HELP|TYPE) (\S+) (.*)$", line)
                if not m:
                    raise ExpositionError("line %d: comment other than HELP/TYPE" % lineno)
                kind, name, arg = m.groups()
                if not METRIC_NAME.match(name):
                    raise ExpositionError("line %d: bad metric name %r" % (lineno, name))
                enter(name, lineno)
                table = self.help if kind == "HELP" else self.types
                if name in table:
                    raise ExpositionError("line %d: second %s for %s" % (lineno, kind, name))
                if kind == "TYPE":
                    if arg not in ("counter", "gauge", "histogram"):
                        raise ExpositionError("line %d: type %r" % (lineno, arg))
                    if any(self._family(s[0], {name: arg}) == name for s in self.samples):
                        raise ExpositionError("line %d: TYPE after samples of %s" % (lineno, name))
                else:
                    if re.search(r"\\[^\\n]|\\$", arg):
                        raise ExpositionError("line %d: bad escape in HELP" % lineno)
                table[name] = arg
                continue
            m = re.match(r"^[^{ ]*", line)
            name = m.group(0)
            if not METRIC_NAME.match(name):
                raise ExpositionError("line %d: bad metric name %r" % (lineno, name))
            i = len(name)
            labels = {}
            if i < len(line) and line[i] == "{":
                labels, i = parse_labels(line, i, lineno)
            if i >= len(line) or line[i] != " ":
                raise ExpositionError("line %d: no space before the value" % lineno)
            fields = line[i + 1:].split(" ")
            if len(fields) != 1:
                raise ExpositionError("line %d: timestamps or extra fields" % lineno)
            value = parse_value(fields[0])
            family = self._family(name, self.types)
            if family is None:
                raise ExpositionError("line %d: sample %s has no preceding TYPE" % (lineno, name))
            enter(family, lineno)
            kind = self.types[family]
            if kind == "counter" and (not name.endswith("_total") or not value >= 0):
                raise ExpositionError("line %d: counter %s must end in _total and be >= 0" % (lineno, name))
            if (kind == "histogram" and name == family + "_bucket") != ("le" in labels):
                raise ExpositionError("line %d: le label misplaced on %s" % (lineno, name))
            key = (name, tuple(sorted(labels.items())))
            if key in seen:
                raise ExpositionError("line %d: duplicate series %r" % (lineno, key))
            seen.add(key)
            self.samples.append((name, labels, value))
        self._check_histograms()

    @staticmethod
    def _family(name, types):
        if types.get(name) in ("counter", "gauge"):
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[:-len(suffix)]
            if name.endswith(suffix) and types.get(base) == "histogram":
                return base
        return None

    def _check_histograms(self):
        for family, kind in self.types.items():
            if kind != "histogram":
                continue
            buckets, counts, sums = {}, {}, {}
            for name, labels, value in self.samples:
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                if name == family + "_bucket":
                    buckets.setdefault(rest, []).append((parse_value(labels["le"]), value))
                elif name == family + "_count":
                    counts[rest] = value
                elif name == family + "_sum":
                    sums[rest] = value
            for rest, bs in buckets.items():
                if not bs or bs[-1][0] != math.inf:
                    raise ExpositionError("%s%r: buckets do not end in +Inf" % (family, rest))
                for (le0, c0), (le1, c1) in zip(bs, bs[1:]):
                    if not le1 > le0:
                        raise ExpositionError("%s%r: le not increasing" % (family, rest))
                    if c1 < c0:
                        raise ExpositionError("%s%r: buckets not cumulative" % (family, rest))
                if rest not in counts or rest not in sums:
                    raise ExpositionError("%s%r: no _count or _sum" % (family, rest))
                if counts[rest] != bs[-1][1]:
                    raise ExpositionError("%s%r: +Inf bucket %s != _count %s" % (family, rest, bs[-1][1], counts[rest]))
            if set(counts) != set(buckets):
                raise ExpositionError("%s: _count without buckets" % family)

    def get(self, name, **labels):
        """The value of the one sample `name` with exactly `labels`; fails if absent."""
        for n, l, v in self.samples:
            if n == name and l == labels:
                return v
        raise AssertionError("no sample %s%r" % (name, labels))

    def has(self, name, **labels):
        return any(n == name and l == labels for n, l, _ in self.samples)

    def label_sets(self, name):
        return [l for n, l, _ in self.samples if n == name]

    def route_total(self, route):
        return sum(self.get("sluice_http_requests_total", route=route, code_class=c)
                   for c in ("1xx", "2xx", "3xx", "4xx", "5xx"))


class ParserSelfTest(unittest.TestCase):
    """The parser must refuse what the format forbids, or the assertions below prove nothing."""

    def test_rejects_bad_text(self):
        Exposition("# TYPE a_total counter\na_total 1\n")
        bad = [
            "a_total 1\n",
            "# TYPE a_total counter\na_total 1",
            "# TYPE a gauge\na{x=\"1\",} 1\n",
            "# TYPE a gauge\na{x=\"a\"b\"} 1\n",
            "# TYPE a gauge\na{x=\"\\t\"} 1\n",
            "# TYPE a gauge\na 1\na 2\n",
            "# TYPE a counter\na 1\n",
            "# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 1\na_total 2\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
        ]
        for text in bad:
            with self.assertRaises(ExpositionError, msg=text):
                Exposition(text)


def promtool():
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    return path if path and os.access(path, os.X_OK) else None


def route(name, prefix, upstream=None, exact=False, direct=None):
    s = "- name: %s\n  match:\n    path: { %s: %s }\n" % (name, "exact" if exact else "prefix", prefix)
    if direct:
        s += "  direct_response: { status: %d, body: \"%s\" }\n" % direct
    else:
        s += "  upstream: %s\n" % upstream
    return s


class MetricsTest(ProxyTestCase):
    def scrape(self, s):
        status, headers, body = http_get(s.admin_port, "/metrics")
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(header(headers, "Content-Type"), CONTENT_TYPE)
        text = body.decode("utf-8")
        tool = promtool()
        if tool:
            p = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(p.returncode, 0, "promtool: %s%s" % (p.stdout, p.stderr))
            self.assertEqual(p.stdout.strip() + p.stderr.strip(), "", "promtool lint findings")
        return Exposition(text)

    def scrape_settled(self, s):
        """A scrape once every client connection has closed (they close just after the reply)."""
        def settled():
            m = self.scrape(s)
            return m if m.get("sluice_client_connections_open") == 0 else None
        return wait_until(settled, message="client connections closed")

    def setup_proxy(self, workers=1, extra_routes=""):
        self.demo = self.start_demo("sf1")
        self.dead_port = free_port()  # nothing listens there: connection refused, 502
        self.upstreams = (upstream_yaml("storefront", [self.demo.address]) +
                          upstream_yaml("dead", ["127.0.0.1:%d" % self.dead_port]))
        self.routes = (route("shop", "/api", "storefront") + route("demo", "/__demo", "storefront") +
                       route("dead", "/dead", "dead") +
                       route("ping", "/ping", exact=True, direct=(200, "pong")) + extra_routes)
        self.port, self.admin_port = free_port(), free_port()
        text = default_config(self.port, self.admin_port, self.upstreams, self.routes)
        self.text = text.replace("workers: 1\n", "workers: %d\n" % workers, 1)
        self.s = self.start_sluice_text(self.text, self.port, self.admin_port)
        return self.s

    def test_counters_match_the_requests_sent(self):
        s = self.setup_proxy()
        before = self.scrape(s)
        self.assertEqual(before.route_total("shop"), 0)
        # The harness's wait for the port made one connection already.
        accepted0 = before.get("sluice_client_connections_accepted_total")
        self.assertEqual(before.get("sluice_reloads_total", result="ok"), 0)
        self.assertEqual(before.get("sluice_build_info", version=before.label_sets("sluice_build_info")[0]["version"]), 1)
        start = before.get("process_start_time_seconds")
        self.assertLess(abs(start - time.time()), 60)

        sent = []  # (route, status, request body bytes, response body bytes)

        def get(path, expect, route_name, method="GET", body=None):
            status, _, rbody = http_get(self.port, path, method=method, body=body)
            self.assertEqual(status, expect, (path, rbody[:200]))
            sent.append((route_name, status, len(body or b""), len(rbody)))

        for _ in range(5):
            get("/api/items/1", 200, "shop")
        for _ in range(2):
            get("/__demo/echo", 200, "demo", method="POST", body=b"hello world")
        get("/__demo/status/503", 503, "demo")   # an upstream's own 5xx
        get("/__demo/status/301", 301, "demo")
        get("/nothing", 404, "(none)")           # no route
        get("/dead", 502, "dead")                # connection refused
        get("/ping", 200, "ping")                # direct response
        get("/ping", 200, "ping")

        m = self.scrape_settled(s)
        for route_name in ("shop", "demo", "dead", "ping", "(none)"):
            mine = [x for x in sent if x[0] == route_name]
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
                want = sum(1 for x in mine if "%dxx" % (x[1] // 100) == cls)
                self.assertEqual(m.get("sluice_http_requests_total", route=route_name, code_class=cls),
                                 want, (route_name, cls))
            self.assertEqual(m.get("sluice_http_request_duration_seconds_count", route=route_name),
                             len(mine), route_name)
            self.assertEqual(m.get("sluice_http_request_body_bytes_total", route=route_name),
                             sum(x[2] for x in mine), route_name)
            self.assertEqual(m.get("sluice_http_response_body_bytes_total", route=route_name),
                             sum(x[3] for x in mine), route_name)
        self.assertEqual(m.get("sluice_http_request_body_bytes_total", route="demo"), 22)
        # Upstream side: every completed upstream response is timed, the refused ones are not.
        proxied = sum(1 for x in sent if x[0] in ("shop", "demo"))
        self.assertEqual(m.get("sluice_upstream_response_duration_seconds_count", upstream="storefront"), proxied)
        self.assertEqual(m.get("sluice_upstream_response_duration_seconds_count", upstream="dead"), 0)
        self.assertGreater(m.get("sluice_upstream_response_duration_seconds_sum", upstream="storefront"), 0)
        sf = dict(upstream="storefront", server=self.demo.address)
        dead = dict(upstream="dead", server="127.0.0.1:%d" % self.dead_port)
        self.assertEqual(m.get("sluice_upstream_server_requests_total", **sf), proxied)
        self.assertEqual(m.get("sluice_upstream_server_failures_total", **sf), 0)
        retries = m.get("sluice_upstream_retries_total", upstream="dead")
        self.assertEqual(m.get("sluice_upstream_server_requests_total", **dead), 1 + retries)
        self.assertEqual(m.get("sluice_upstream_server_failures_total", **dead), 1 + retries)
        self.assertEqual(m.get("sluice_upstream_retries_total", upstream="storefront"), 0)
        self.assertEqual(m.get("sluice_upstream_server_healthy", **sf), 1)
        self.assertEqual(m.get("sluice_upstream_server_ejected", **sf), 0)
        self.assertEqual(m.get("sluice_upstream_server_active_requests", **sf), 0)
        # Sequential requests on one worker reuse one keep-alive connection.
        self.assertEqual(m.get("sluice_upstream_pool_idle_connections", upstream="storefront"), 1)
        self.assertEqual(m.get("sluice_upstream_pool_idle_connections", upstream="dead"), 0)
        self.assertEqual(m.get("sluice_client_connections_accepted_total") - accepted0, len(sent))
        self.assertEqual(m.get("sluice_client_connections_open"), 0)
        self.assertEqual(m.get("sluice_config_generation"), before.get("sluice_config_generation"))
        self.assertGreater(m.get("process_resident_memory_bytes"), 0)
        self.assertGreater(m.get("process_open_fds"), 0)
        self.assertEqual(m.get("process_start_time_seconds"), start)

        # Scrapes (admin API calls) are not proxy traffic: nothing moved.
        again = self.scrape(s)
        for name in ("sluice_http_requests_total", "sluice_client_connections_accepted_total",
                     "sluice_http_request_duration_seconds_count"):
            self.assertEqual([x for x in again.samples if x[0] == name],
                             [x for x in m.samples if x[0] == name], name)

    def test_workers_sum_exactly_under_concurrency(self):
        s = self.setup_proxy(workers=2)
        threads, per_thread = 8, 25
        accepted0 = self.scrape_settled(s).get("sluice_client_connections_accepted_total")
        errors = []

        def client():
            for _ in range(per_thread):
                status, _, _ = http_get(self.port, "/api/items/7")
                if status != 200:
                    errors.append(status)

        ts = [threading.Thread(target=client) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        total = threads * per_thread
        m = self.scrape_settled(s)
        self.assertEqual(m.get("sluice_http_requests_total", route="shop", code_class="2xx"), total)
        self.assertEqual(m.route_total("shop"), total)
        self.assertEqual(m.get("sluice_http_request_duration_seconds_count", route="shop"), total)
        self.assertEqual(m.get("sluice_http_request_duration_seconds_bucket", route="shop", le="+Inf"), total)
        self.assertEqual(m.get("sluice_upstream_response_duration_seconds_count", upstream="storefront"), total)
        self.assertEqual(m.get("sluice_client_connections_accepted_total") - accepted0, total)
        self.assertEqual(m.get("sluice_upstream_server_requests_total", upstream="storefront",
                               server=self.demo.address), total)
        idle = m.get("sluice_upstream_pool_idle_connections", upstream="storefront")
        self.assertGreaterEqual(idle, 1)
        self.assertLessEqual(idle, threads * 2)

    def test_reload_moves_generation_and_reload_counters(self):
        s = self.setup_proxy()
        for _ in range(3):
            self.assertEqual(http_get(self.port, "/api/items/1")[0], 200)
        m0 = self.scrape(s)
        gen0 = m0.get("sluice_config_generation")
        self.assertEqual(m0.get("sluice_reloads_total", result="ok"), 0)
        self.assertEqual(m0.get("sluice_reloads_total", result="failed"), 0)
        self.assertFalse(m0.has("sluice_http_requests_total", route="extra", code_class="2xx"))

        # A new route: its series appear (at zero), the old ones keep their counts.
        write_config(s, self.text.replace("routes:\n", "routes:\n" + "".join(
            "  " + line + "\n" for line in route("extra", "/extra", exact=True,
                                                  direct=(200, "x")).splitlines()), 1))
        code, body = admin_reload(s)
        self.assertEqual(code, 200, body)
        m1 = self.scrape(s)
        self.assertEqual(m1.get("sluice_config_generation"), body["generation"])
        self.assertGreater(m1.get("sluice_config_generation"), gen0)
        self.assertEqual(m1.get("sluice_reloads_total", result="ok"), 1)
        self.assertEqual(m1.get("sluice_reloads_total", result="failed"), 0)
        self.assertEqual(m1.get("sluice_http_requests_total", route="extra", code_class="2xx"), 0)
        self.assertEqual(m1.get("sluice_http_requests_total", route="shop", code_class="2xx"), 3)
        self.assertEqual(http_get(self.port, "/extra")[0], 200)
        self.assertEqual(http_get(self.port, "/api/items/1")[0], 200)
        m2 = self.scrape(s)
        self.assertEqual(m2.get("sluice_http_requests_total", route="extra", code_class="2xx"), 1)
        self.assertEqual(m2.get("sluice_http_requests_total", route="shop", code_class="2xx"), 4)
        # The retired pool's idle connection closed, the new pool holds one: no double count.
        self.assertEqual(m2.get("sluice_upstream_pool_idle_connections", upstream="storefront"), 1)

        # A broken file: the reload fails, the generation stays.
        write_config(s, self.text + "this is: [not valid\n")
        code, body = admin_reload(s)
        self.assertEqual(code, 400, body)
        m3 = self.scrape(s)
        self.assertEqual(m3.get("sluice_config_generation"), m1.get("sluice_config_generation"))
        self.assertEqual(m3.get("sluice_reloads_total", result="ok"), 1)
        self.assertEqual(m3.get("sluice_reloads_total", result="failed"), 1)

        # Back to the original file (the extra route removed): its series keep their last value.
        write_config(s, self.text)
        code, body = admin_reload(s)
        self.assertEqual(code, 200, body)
        m4 = self.scrape(s)
        self.assertEqual(m4.get("sluice_reloads_total", result="ok"), 2)
        self.assertEqual(m4.get("sluice_config_generation"), body["generation"])
        self.assertEqual(m4.get("sluice_http_requests_total", route="extra", code_class="2xx"), 1)
        self.assertEqual(http_get(self.port, "/extra")[0], 404)
        m5 = self.scrape(s)
        self.assertEqual(m5.get("sluice_http_requests_total", route="(none)", code_class="4xx"), 1)


if __name__ == "__main__":
    unittest.main()
