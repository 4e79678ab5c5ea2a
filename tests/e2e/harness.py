"""End-to-end harness: starts the real sluice binary in front of real demo storefronts.

Every test gets free loopback ports, its own temp dir and config, and tears everything down,
so suites never collide with `make run` or with each other. Binaries come from the environment
ctest sets (SLUICE_BIN, SLUICE_DEMO_BIN); run by hand with those set, e.g.
  SLUICE_BIN=build/proxy/sluice SLUICE_DEMO_BIN=build/demo/sluice-demo-storefront \
    python3 -m unittest -v test_proxy_basic
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import textwrap
import threading
import time
import unittest

ROOT = os.environ.get("SLUICE_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
SLUICE_BIN = os.path.abspath(os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "proxy", "sluice")))
DEMO_BIN = os.path.abspath(os.environ.get("SLUICE_DEMO_BIN", os.path.join(ROOT, "build", "demo", "sluice-demo-storefront")))


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on now and that this process has not handed out before: the kernel
    may give a just-closed port again, and a test that keeps one port dead (an upstream that must
    refuse) while it starts servers on others must not find one of them there."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on port %d after %.1fs" % (port, timeout))


class Process:
    def __init__(self, args, log_path, env=None):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def output(self):
        if not self.log.closed:  # stop() closes it; the file stays readable
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class Demo(Process):
    """One demo storefront server on its own port."""

    def __init__(self, tmpdir, name="sf", threads=1, port=None):
        self.port = port or free_port()
        self.name = name
        super().__init__([DEMO_BIN, "--port", str(self.port), "--name", name,
                          "--threads", str(threads), "--quiet"],
                         os.path.join(tmpdir, "demo-%s.log" % name))
        wait_port(self.port, proc=self.proc)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port


def default_config(port, admin_port, upstreams, routes=None, extra=""):
    """A minimal config. `upstreams` is YAML text for the upstreams: map (indented under it)."""
    routes = routes or textwrap.dedent("""\
        - name: all
          match:
            path: { prefix: / }
          upstream: storefront
        """)
    return (
        "workers: 1\n"
        "listeners:\n  - address: 127.0.0.1:%d\n"
        "admin:\n  address: 127.0.0.1:%d\n  token: e2e-admin-token\n"
        "log:\n  level: info\n  access: access.log\n"
        "%s"
        "upstreams:\n%s"
        "routes:\n%s" % (port, admin_port, extra, textwrap.indent(upstreams, "  "),
                         textwrap.indent(routes, "  ")))


def upstream_yaml(name, servers, extra=""):
    s = "%s:\n  servers:\n" % name
    for addr in servers:
        s += "    - address: %s\n" % addr
    if extra:
        s += textwrap.indent(textwrap.dedent(extra), "  ")
    return s


class Sluice(Process):
    """The proxy under test, started from a config text in `tmpdir` (its working directory)."""

    def __init__(self, tmpdir, config_text, port, admin_port, preexec_fn=None):
        """`preexec_fn` runs in the child before exec (e.g. resource.setrlimit for fd limits)."""
        self.port = port
        self.admin_port = admin_port
        self.tmpdir = tmpdir
        self.config_path = os.path.join(tmpdir, "sluice.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(tmpdir, "sluice.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SLUICE_BIN, "-c", self.config_path], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=tmpdir, preexec_fn=preexec_fn)
        wait_port(port, proc=self.proc)
        # The admin listener starts on the control thread after the workers' listeners: under
        # a sanitizer that gap is long enough for a test's first admin call to be refused.
        if admin_port and not re.search(r"^admin:\n(?:  .*\n)*?  enabled: (?:false|no)\b",
                                        config_text, re.M):
            wait_port(admin_port, proc=self.proc)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def access_log(self):
        path = os.path.join(self.tmpdir, "access.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def cpu_ticks(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])


def curl(*args, timeout=30):
    """Runs curl; returns (returncode, stdout bytes, stderr text)."""
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args),
                       capture_output=True, timeout=timeout + 10)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


class RawClient:
    """A raw-socket HTTP/1.1 client for malformed input, pipelining and exact bytes."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def read_response(self, head_request=False):
        """Reads one response; returns (status, headers list of (name, value), body bytes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        hmap = {k.lower(): v for k, v in headers}
        body = b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, body
        if "content-length" in hmap:
            n = int(hmap["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif hmap.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            try:
                while True:
                    self._fill()
            except (EOFError, ConnectionResetError):
                pass
            body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self, timeout=5.0):
        """True if the server closes the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def header(headers, name):
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


# What ASan, UBSan, LSan and TSan print (make test-asan / make test-tsan): any of these in a
# process's log fails the test that ran it, even if every assertion passed.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")
# Exits no test asks for: a crash, or a sanitizer's exit code at the end of the run.
CRASH_SIGNALS = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)


def sanitizer_problems(proc, rc):
    """Why `proc` (stopped, exit status `rc`) fails its test: a sanitizer report in its log, a
    crash, or a non-zero exit of its own. Empty when all is well."""
    problems = []
    try:
        text = proc.output()
    except Exception:  # noqa: BLE001 - no log, nothing to judge
        text = ""
    for marker in SANITIZER_MARKERS:
        at = text.find(marker)
        if at >= 0:
            line = text[at:].split("\n", 1)[0]
            problems.append("%s: %s" % (os.path.basename(proc.log_path), line[:300]))
            break
    if rc is not None and (rc > 0 or -rc in CRASH_SIGNALS):
        problems.append("%s: process exited with status %d" % (os.path.basename(proc.log_path), rc))
    return problems


class ProxyTestCase(unittest.TestCase):
    """Base class: self.tmp (a temp dir), self.start_demo(), self.start_sluice()."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="sluice-e2e-")
        self.tmp = self._tmp.name
        self._procs = []

    def tearDown(self):
        problems = []
        for p in reversed(self._procs):
            rc = p.stop(signal.SIGKILL if not p.alive() else signal.SIGTERM, timeout=10)
            problems += sanitizer_problems(p, rc)
        if self._failed() or problems:
            for p in self._procs:
                try:
                    print("---- %s ----\n%s" % (p.log_path, p.output()[-4000:]))
                except Exception:
                    pass
        self._tmp.cleanup()
        if problems:
            self.fail("; ".join(problems))

    def _failed(self):
        # Python 3.11+ records errors on the result as they happen; older ones on the outcome.
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return False
        result = getattr(outcome, "result", None)
        if result is not None:
            for test, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
                if test is self:
                    return True
        return any(e for _, e in getattr(outcome, "errors", []) if e)

    def start_demo(self, name="sf", threads=1, port=None):
        d = Demo(self.tmp, name=name, threads=threads, port=port)
        self._procs.append(d)
        return d

    def start_sluice(self, upstreams, routes=None, extra=""):
        port, admin = free_port(), free_port()
        s = Sluice(self.tmp, default_config(port, admin, upstreams, routes, extra), port, admin)
        self._procs.append(s)
        return s


# ---------------------------------------------------------------------------------------------
# Generic helpers added for the upstream / streaming / lifecycle suites (additions only).

def wait_until(predicate, timeout=5.0, interval=0.02, message="condition"):
    """Polls `predicate` until it returns a truthy value; returns it, or fails after `timeout`."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError("%s not reached within %.1fs" % (message, timeout))
        time.sleep(interval)


def http_get(port, path, headers=None, method="GET", body=None, timeout=10.0):
    """One request on a fresh connection (RawClient): returns (status, headers, body)."""
    c = RawClient(port, timeout=timeout)
    try:
        headers = dict(headers or {})
        lines = ["%s %s HTTP/1.1" % (method, path),
                 "Host: %s" % headers.pop("Host", "127.0.0.1:%d" % port), "Connection: close"]
        for k, v in headers.items():
            lines.append("%s: %s" % (k, v))
        if body is not None:
            lines.append("Content-Length: %d" % len(body))
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if body is not None:
            data += body if isinstance(body, bytes) else body.encode()
        c.send(data)
        return c.read_response(head_request=(method == "HEAD"))
    finally:
        c.close()


def admin_json(sluice, path):
    """GET on the admin port, decoded from JSON."""
    status, _, body = http_get(sluice.admin_port, path)
    if status != 200:
        raise AssertionError("admin %s answered %d: %r" % (path, status, body[:200]))
    return json.loads(body)


def upstream_servers(sluice, upstream="storefront"):
    """The admin API's server list of one upstream, keyed by address."""
    for u in admin_json(sluice, "/upstreams")["upstreams"]:
        if u["name"] == upstream:
            return {s["address"]: s for s in u["servers"]}
    raise AssertionError("upstream %s not in admin /upstreams" % upstream)


def tcp_sockets(port):
    """Every TCP socket (any state but LISTEN) with `port` at either end, as ss lines split."""
    out = subprocess.run(["ss", "-tanH", "( sport = :%d or dport = :%d )" % (port, port)],
                         capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines() if line.strip() and not line.startswith("LISTEN")]


class RssSampler:
    """Samples a process's VmRSS (kB) from /proc in a background thread; .peak_kb after stop()."""

    def __init__(self, pid, interval=0.01):
        import threading
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self):
        while not self._stop.is_set():
            v = self.read()
            if v:
                self.samples.append(v)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    @property
    def peak_kb(self):
        return max(self.samples) if self.samples else 0


def _start_sluice_text(self, config_text, port, admin_port, preexec_fn=None):
    """ProxyTestCase.start_sluice_text: starts sluice from a whole config text (custom listeners)."""
    s = Sluice(self.tmp, config_text, port, admin_port, preexec_fn=preexec_fn)
    self._procs.append(s)
    return s


ProxyTestCase.start_sluice_text = _start_sluice_text


# ---------------------------------------------------------------------------------------------
# Generic helpers added for the protocol / bad-input suites (additions only).

def demo_counter(demo):
    """The demo's count of completed requests (excluding /__demo/counter), asked directly."""
    status, _, body = http_get(demo.port, "/__demo/counter")
    if status != 200:
        raise AssertionError("demo counter answered %d" % status)
    return json.loads(body)["requests"]


def read_until_close(client, timeout=5.0):
    """Reads from a RawClient until the peer closes (or `timeout`); returns (bytes, closed)."""
    client.sock.settimeout(timeout)
    closed = False
    try:
        while True:
            chunk = client.sock.recv(65536)
            if not chunk:
                closed = True
                break
            client.buf += chunk
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    data, client.buf = client.buf, b""
    return data, closed


class CannedUpstream:
    """A scripted upstream on a free port: answers every request with `response` bytes and keeps
    the raw request heads it saw in .requests. For responses the demo cannot produce."""

    def __init__(self, response):
        import threading
        self.response = response if isinstance(response, bytes) else response.encode()
        self.requests = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        import threading
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        conn.settimeout(10)
        try:
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(head.decode("latin-1"))
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        n = int(value.strip())
                        while len(buf) < n:
                            chunk = conn.recv(65536)
                            if not chunk:
                                return
                            buf += chunk
                        buf = buf[n:]
                conn.sendall(self.response)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop = True
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Generic helpers added for the reload suite (additions only).

ADMIN_TOKEN = "e2e-admin-token"


def write_config(sluice, text):
    """Replaces the running sluice's config file atomically (a reload never sees half a file)."""
    tmp = sluice.config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, sluice.config_path)


def admin_call(sluice, method, path, token=ADMIN_TOKEN, body=b""):
    """One admin request; returns (status, headers, decoded JSON body or None if not JSON)."""
    headers = {"Authorization": "Bearer %s" % token} if token else {}
    status, hdrs, raw = http_get(sluice.admin_port, path, headers=headers, method=method,
                                 body=body if method != "GET" else None)
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    return status, hdrs, decoded


def admin_reload(sluice, token=ADMIN_TOKEN):
    """POST /reload on the admin; returns (status, decoded JSON reply)."""
    status, _, body = admin_call(sluice, "POST", "/reload", token=token)
    return status, body


def fd_count(pid):
    """How many file descriptors the process has open (/proc/PID/fd)."""
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_targets(pid):
    """What each open file descriptor of the process points at (readlink of /proc/PID/fd/*)."""
    out = []
    base = "/proc/%d/fd" % pid
    for name in os.listdir(base):
        try:
            out.append(os.readlink(os.path.join(base, name)))
        except OSError:
            pass
    return out


def process_sockets(pid):
    """The process's TCP sockets as `ss` shows them (state, local, peer): what an fd count means."""
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True).stdout
    tag = "pid=%d," % pid
    return [" ".join(line.split()[:1] + line.split()[3:5]) for line in out.splitlines() if tag in line]


# ---------------------------------------------------------------------------------------------
# Generic helpers added for the connection-limit suites (additions only).

def metric_value(sluice, name, labels=""):
    """One sample from the admin /metrics text: `name` with exactly the label text `labels`
    (e.g. 'reason="fd_limit"'), summed if it repeats; 0 when absent."""
    status, _, body = http_get(sluice.admin_port, "/metrics")
    if status != 200:
        raise AssertionError("admin /metrics answered %d" % status)
    want = name + ("{%s}" % labels if labels else "")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            total += float(line.split()[-1])
    return total


def cpu_share(proc, seconds):
    """Share of one core `proc` (a harness Process with cpu_ticks) used over `seconds`."""
    tck = os.sysconf("SC_CLK_TCK")
    t0, w0 = proc.cpu_ticks(), time.monotonic()
    time.sleep(seconds)
    t1, w1 = proc.cpu_ticks(), time.monotonic()
    return (t1 - t0) / tck / (w1 - w0)


# ---------------------------------------------------------------------------------------------
# A scripted upstream that records what each connection carried.

class UpConn:
    """One accepted upstream connection, as a script sees it. Every byte received is kept in
    .received (in order), so a test can check what the connection carried after the fact."""

    def __init__(self, sock, index):
        self.sock = sock
        self.index = index  # 1-based, in accept order
        self.received = b""
        self.buf = b""
        self.requests = []  # (head text, body bytes) of each complete request read
        self.eof = False

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise EOFError("peer closed")
        self.received += chunk
        self.buf += chunk

    def wait_head(self):
        """Reads until a request head is buffered (its body may still be on its way); nothing is
        consumed, read_request() then returns that request."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()

    def read_request(self):
        """The next whole request: (head, body). EOFError if the peer closes before it is whole
        (what arrived stays in .buf)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        hmap = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hmap[k.strip().lower()] = v.strip()
        if hmap.get("transfer-encoding", "").lower() == "chunked":
            while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                self._fill()
                rest = self.buf.split(b"\r\n\r\n", 1)[1]
            end = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
            body, rest = rest[:end], rest[end:]
        else:
            n = int(hmap.get("content-length", "0"))
            while len(rest) < n:
                self._fill()
                rest = self.buf.split(b"\r\n\r\n", 1)[1]
            body, rest = rest[:n], rest[n:]
        self.buf = rest
        self.requests.append((head.decode("latin-1"), body))
        return head.decode("latin-1"), body

    def send(self, data):
        self.sock.sendall(data)

    def answer(self, body):
        self.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def reset(self):
        """Close with an RST (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def wait_eof(self, timeout=5.0):
        """Reads (and records) until the peer closes; True if it did within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except EOFError:
            return True
        except OSError:
            return self.eof


def serve_normally(c):
    """The well-behaved script: answers every request with 'conn N req K'."""
    while True:
        c.read_request()
        c.answer(b"conn %d req %d" % (c.index, len(c.requests)))


class ScriptedUpstream:
    """An upstream on a free loopback port: each accepted connection runs `script(UpConn)` in its
    own thread (EOF and socket errors end it quietly); .conns lists them in accept order."""

    def __init__(self, script):
        self.script = script
        self.conns = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while not self._closed:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                c = UpConn(sock, len(self.conns) + 1)
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.sock.settimeout(15)
        try:
            self.script(c)
        except (EOFError, OSError):
            pass
        finally:
            try:
                c.sock.close()
            except OSError:
                pass

    def close(self):
        self._closed = True
        self.sock.close()
