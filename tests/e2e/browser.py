"""Headless Chromium driven over the DevTools protocol, with the standard library only.

PyPI is not reachable from the build machines, so there is no selenium or playwright: this
module starts Debian's `chromium` with --remote-debugging-port=0, reads the port it chose from
DevToolsActivePort in its profile directory, finds the page target through /json/list and talks
CDP over a minimal RFC 6455 websocket client (client frames masked, server frames possibly
fragmented, pings answered). Enough for tests/e2e/test_dashboard.py: navigate, evaluate
JavaScript, real mouse clicks and typing, screenshots, and a record of the page's uncaught
exceptions and console/CSP errors.
"""
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """A blocking websocket client: text messages out, whole messages in."""

    def __init__(self, url, timeout=30.0):
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (path, hostport, key)).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError("websocket handshake refused: %r" % head[:200])

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("websocket closed by the browser")
        self.buf += chunk

    def _read(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self, timeout):
        """One whole message (continuation frames joined), or socket.timeout."""
        self.sock.settimeout(timeout)
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            message += payload
            if fin:
                return message.decode("utf-8")

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class BrowserError(AssertionError):
    pass


class Chromium:
    """One headless Chromium with one page, its profile in `tmpdir`."""

    def __init__(self, tmpdir, width=1440, height=1000, timeout=30.0):
        binary = chromium_binary()
        if not binary:
            raise BrowserError("no chromium found: run scripts/install-deps (Debian package chromium)")
        self.profile = os.path.join(tmpdir, "chromium-profile")
        os.makedirs(self.profile, exist_ok=True)
        self.log_path = os.path.join(tmpdir, "chromium.log")
        args = [binary, "--headless=new", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", "--user-data-dir=" + self.profile,
                "--no-first-run", "--no-default-browser-check", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows", "--mute-audio", "--hide-scrollbars",
                "--force-device-scale-factor=1", "--window-size=%d,%d" % (width, height), "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.ws = None
        self.ids = itertools.count(1)
        self.events = []
        self.exceptions = []
        self.console_errors = []
        try:
            port = self._devtools_port(timeout)
            page = self._page_target(port, timeout)
            self.ws = WebSocket(page["webSocketDebuggerUrl"], timeout=timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Log.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError("chromium exited with %s:\n%s" % (self.proc.returncode, self.output()[-3000:]))
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port within %.0fs:\n%s"
                           % (timeout, self.output()[-3000:]))

    def _page_target(self, port, timeout):
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=5) as r:
                    targets = json.loads(r.read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            if time.time() > deadline:
                raise BrowserError("no page target in chromium")
            time.sleep(0.1)

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- protocol ----------------------------------------------------------------------------
    def _note(self, msg):
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.exceptions.append((d.get("exception") or {}).get("description") or d.get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description")))
                                                for a in params.get("args", [])))
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            # Network entries are the page's own failed calls (e.g. a 401 it shows inline).
            if e.get("level") == "error" and e.get("source") != "network":
                self.console_errors.append("%s: %s" % (e.get("source"), e.get("text")))
        self.events.append(msg)

    def call(self, method, params=None, timeout=30.0):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise BrowserError("%s: no answer within %.0fs" % (method, timeout))
            try:
                msg = json.loads(self.ws.recv(left))
            except socket.timeout:
                continue
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._note(msg)

    def pump(self, seconds):
        """Reads events for `seconds` (exceptions and console errors get recorded)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                self._note(json.loads(self.ws.recv(max(0.01, deadline - time.time()))))
            except socket.timeout:
                pass

    def navigate(self, url, timeout=30.0):
        self.events.clear()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError("navigate %s: %s" % (url, result["errorText"]))
        deadline = time.time() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.time() > deadline:
                raise BrowserError("%s did not finish loading" % url)
            self.pump(0.1)

    def eval(self, expression, timeout=30.0):
        """Evaluates JavaScript in the page; returns its value (promises awaited)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError("JavaScript error in %r: %s" % (
                expression[:80], (d.get("exception") or {}).get("description") or d.get("text")))
        return r.get("result", {}).get("value")

    def wait_for(self, expression, timeout=15.0, message=None):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        last = None
        while True:
            last = self.eval(expression)
            if last:
                return last
            if time.time() > deadline:
                raise BrowserError("%s: still %r after %.0fs" % (message or expression, last, timeout))
            self.pump(0.2)

    def click(self, selector, attempts=5):
        """A real mouse click (moved, pressed, released) at the middle of the element. The page
        re-renders under it once a second: the element must be the one at that point."""
        for _ in range(attempts):
            box = self.eval(
                "(() => { const e = document.querySelector(%s); if (!e) return null;"
                " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                " const x = r.x + r.width / 2, y = r.y + r.height / 2, hit = document.elementFromPoint(x, y);"
                " return [x, y, hit === e || e.contains(hit)]; })()" % json.dumps(selector))
            if not box:
                raise BrowserError("nothing matches %s" % selector)
            if box[2]:
                for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                    self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                           "button": "left", "clickCount": 1})
                return
            self.pump(0.1)
        raise BrowserError("%s stays covered by another element" % selector)

    def type_into(self, selector, text):
        """Clicks the element (focusing it) and types `text` as keyboard input."""
        for _ in range(5):
            self.click(selector)
            if self.eval("document.activeElement === document.querySelector(%s)" % json.dumps(selector)):
                self.call("Input.insertText", {"text": text})
                return
            self.pump(0.1)
        raise BrowserError("clicking %s does not focus it" % selector)

    def screenshot(self, path):
        """A PNG of the whole page (not only the viewport), written to `path`."""
        height = self.eval("Math.ceil(document.documentElement.scrollHeight)")
        width = self.eval("Math.ceil(document.documentElement.scrollWidth)")
        data = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})["data"]
        png = base64.b64decode(data)
        with open(path, "wb") as f:
            f.write(png)
        return png

    def close(self):
        if self.ws:
            try:
                self.ws.close()
            except OSError:
                pass
            self.ws = None
        if self.proc.poll() is None:
            # Chromium runs a tree of processes; it has its own session (start_new_session).
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # helpers (zygote, renderers) that outlived the browser process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
