#!/usr/bin/env python3
"""User-space instructions (callgrind Ir) per request through sluice, 1 worker, for four routes
of one config: plain proxying, + a no-op access policy, + a trivial header_filter/body_filter,
and the item_page aggregation (GET /api/items/1/page: http.multi of three sub-requests).
Instrumentation is on only while N keep-alive GETs run (after 300 warm-up ones), so start-up,
reloads and timers are not counted. Deterministic, unlike CPU time on a shared box.

  bench/lua/callgrind_cost.py [BUILD_DIR] [N=1000] [routes=plain,noop,filters,page]

Takes about a minute per 1000 requests per route."""
import os, socket, subprocess, sys, time, glob, re, shutil
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ROOT + "/build"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
routes_to_run = sys.argv[3].split(",") if len(sys.argv) > 3 else ["plain", "noop", "filters", "page"]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def wait_port(p):
    for _ in range(600):
        try: socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit("no port")
import tempfile
tmp = tempfile.mkdtemp(prefix="sluice-cg-"); os.makedirs(tmp + "/policies")
open(tmp + "/policies/noop.lua", "w").write('return { name = "noop", phases = { access = function(conf, ctx) end } }\n')
shutil.copy(ROOT + "/conf/policies/item_page.lua", tmp + "/policies/item_page.lua")
open(tmp + "/policies/filters.lua", "w").write('return { name = "filters", phases = { header_filter = function(conf, ctx) end, body_filter = function(conf, ctx, chunk, eof) end } }\n')
dp, port, admin = free_port(), free_port(), free_port()
up = "    servers: [{ address: 127.0.0.1:%d }]\n    keepalive: { max_idle: 64 }\n" % dp
cfg = ("workers: 1\nlisteners:\n  - address: 127.0.0.1:%d\nadmin:\n  address: 127.0.0.1:%d\n  token: bench\n"
       "log:\n  level: warn\n  access: off\nlua:\n  policies_dir: policies\n  time_budget: 5s\n"
       "upstreams:\n  storefront:\n%s  items:\n%s  prices:\n%s  stock:\n%sroutes:\n"
       # Host-matched like noop and filters, so the plain route's matching is not changed by it.
       "  - name: page\n    match: { host: page.bench, path: { regex: \"^/api/items/[^/]+/page$\" } }\n"
       "    aggregate: item_page\n"
       "  - name: noop\n    match: { host: noop.bench, path: { prefix: / } }\n    upstream: storefront\n    policies: [noop]\n"
       "  - name: filters\n    match: { host: filters.bench, path: { prefix: / } }\n    upstream: storefront\n    policies: [filters]\n"
       "  - name: plain\n    match: { path: { prefix: / } }\n    upstream: storefront\n" % (port, admin, up, up, up, up))
open(tmp + "/sluice.yaml", "w").write(cfg)
demo = subprocess.Popen([BUILD + "/demo/sluice-demo-storefront", "--port", str(dp), "--quiet"])
wait_port(dp)
sl = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + tmp + "/cg.%p",
                       BUILD + "/proxy/sluice", "-c", "sluice.yaml"], cwd=tmp, stderr=subprocess.DEVNULL)
try:
    wait_port(port)
    def load(target, n):
        host, path = target
        s = socket.create_connection(("127.0.0.1", port))
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode()
        buf = b""
        for _ in range(n):
            s.sendall(req)
            while True:
                i = buf.find(b"\r\n\r\n")
                if i >= 0:
                    m = re.search(rb"content-length: (\d+)", buf[:i].lower())
                    if m:
                        need = i + 4 + int(m.group(1))
                    else:
                        e = buf.find(b"\r\n0\r\n\r\n", i)
                        need = e + 7 if e >= 0 else len(buf) + 1
                    if len(buf) >= need:
                        assert buf.startswith(b"HTTP/1.1 200"), buf[:80]
                        buf = buf[need:]; break
                buf += s.recv(65536)
        s.close()
    hosts = {"plain": ("x", "/api/items/1"), "noop": ("noop.bench", "/api/items/1"),
             "filters": ("filters.bench", "/api/items/1"), "page": ("page.bench", "/api/items/1/page")}
    res = {}
    for r in routes_to_run:
        load(hosts[r], 300)  # warm-up
        subprocess.run(["callgrind_control", "-z", str(sl.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-i", "on", str(sl.pid)], capture_output=True)
        load(hosts[r], N)
        subprocess.run(["callgrind_control", "-i", "off", str(sl.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-d", r, str(sl.pid)], capture_output=True)
        time.sleep(0.5)
        files = sorted(glob.glob(tmp + "/cg.%d*" % sl.pid), key=os.path.getmtime)
        f = files[-1]
        tot = None
        for line in open(f):
            if line.startswith("summary:") or line.startswith("totals:"):
                tot = int(line.split()[1])
        res[r] = tot / N
        shutil.copy(f, os.path.join(os.getcwd(), "callgrind.%s.out" % r))  # for callgrind_annotate
        print("%-8s %8.0f Ir/request" % (r, res[r]), flush=True)
finally:
    sl.terminate(); sl.wait(); demo.terminate(); demo.wait()
    shutil.rmtree(tmp, ignore_errors=True)
for r in res:
    if r != "plain" and "plain" in res:
        print("%-8s +%.0f Ir/request over plain" % (r, res[r] - res["plain"]))
