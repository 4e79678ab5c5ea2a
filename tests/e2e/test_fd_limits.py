"""File descriptors stay bounded (docs/security.md): at the open-file limit, or at
client.max_connections, a worker stops accepting instead of spinning or dropping what waits in
the backlog, logs it once, and accepts again once connections close."""
import resource
import select
import socket
import textwrap
import time

from harness import (ProxyTestCase, RawClient, cpu_share, default_config, fd_count, free_port,
                     http_get, metric_value, upstream_yaml, wait_until)

# A sluice at its limit sleeps: its listeners are not polled, only a 100 ms retry timer runs
# while it is out of fds. A busy loop would show ~100 %; 30 % leaves room for a noisy machine.
MAX_IDLE_CPU = 0.30


def open_idle(port, n):
    """`n` connected sockets that send nothing (connect() completes in the kernel backlog, so
    this works whether or not sluice accepts them)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def dropped(socks):
    """The sockets the server closed or reset (readable with EOF); they must wait, not go."""
    out = []
    readable, _, _ = select.select(socks, [], [], 0) if socks else ([], [], [])
    for sock in readable:
        try:
            sock.setblocking(False)
            if sock.recv(1) == b"":
                out.append(sock)
        except BlockingIOError:
            pass
        except OSError:
            out.append(sock)
        finally:
            sock.setblocking(True)
    return out


def get_on(sock, port, path="/api/items/1"):
    """One keep-alive GET on an already connected socket; returns the status."""
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    sock.settimeout(10)
    c.send("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port))
    return c.read_response()[0]


class FdLimitTest(ProxyTestCase):
    def start(self, client_extra, nofile=None):
        demo = self.start_demo()
        port, admin = free_port(), free_port()
        extra = "client:\n" + textwrap.indent(textwrap.dedent(client_extra), "  ")
        cfg = default_config(port, admin, upstream_yaml("storefront", [demo.address]), extra=extra)
        preexec = None
        if nofile:
            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        return self.start_sluice_text(cfg, port, admin, preexec_fn=preexec)

    def test_out_of_fds_pauses_accept_without_spinning_and_resumes(self):
        # A hard limit of 160 that sluice cannot raise, and max_connections far above it: the
        # open-file limit is what stops accept() (EMFILE). header_timeout long enough that no
        # idle connection is closed by sluice during the test.
        s = self.start("""\
            max_connections: 100000
            header_timeout: 60s
            keepalive_timeout: 60s
            """, nofile=160)
        self.assertEqual(http_get(s.port, "/api/items/1")[0], 200)
        socks = open_idle(s.port, 220)
        wait_until(lambda: "accept failed" in s.output(), timeout=10, message="the EMFILE pause log")
        self.assertGreaterEqual(fd_count(s.pid), 150)
        share = cpu_share(s, 1.5)
        self.assertLess(share, MAX_IDLE_CPU, "sluice at the fd limit used %.0f%% CPU" % (share * 100))
        # What waits in the backlog stays there (libuv's own EMFILE trick accepts and closes it).
        self.assertEqual(dropped(socks), [])
        time.sleep(0.5)  # several 100 ms retries, each failing again: still one log line
        self.assertEqual(s.output().count("accept failed"), 1)

        # Free 120 fds: sluice accepts the ~70 that waited, then a new client is served.
        for sock in socks[:120]:
            sock.close()
        rest = socks[120:]
        status = wait_until(lambda: http_get(s.port, "/api/items/2", timeout=5)[0], timeout=15,
                            message="a new client served after fds were freed")
        self.assertEqual(status, 200)
        wait_until(lambda: "accepting again" in s.output(), timeout=10, message="the resume log")
        # The connections that waited in the backlog were accepted, not dropped: one is served.
        self.assertEqual(get_on(rest[-1], s.port), 200)
        self.assertEqual(metric_value(s, "sluice_accept_paused_total", 'reason="fd_limit"'), 1)
        for sock in rest:
            sock.close()

    def test_max_connections_pauses_accept_and_resumes_when_connections_close(self):
        s = self.start("""\
            max_connections: 20
            header_timeout: 60s
            keepalive_timeout: 60s
            """)
        socks = open_idle(s.port, 30)
        wait_until(lambda: metric_value(s, "sluice_client_connections_open") == 20, timeout=10,
                   message="20 connections open")
        self.assertEqual(metric_value(s, "sluice_accept_paused_total", 'reason="max_connections"'), 1)
        share = cpu_share(s, 1.5)
        self.assertLess(share, MAX_IDLE_CPU, "sluice at max_connections used %.0f%% CPU" % (share * 100))
        # At the limit the open connections are still served (upstream fds are not the limit).
        self.assertEqual(get_on(socks[0], s.port), 200)
        # Ten wait in the backlog: not accepted, not dropped.
        self.assertEqual(metric_value(s, "sluice_client_connections_open"), 20)
        self.assertEqual(dropped(socks), [])
        self.assertEqual(s.output().count("client.max_connections"), 1)

        for sock in socks[:15]:
            sock.close()
        # The ten that waited come in, and there is room for a new client.
        self.assertEqual(get_on(socks[25], s.port), 200)
        self.assertEqual(http_get(s.port, "/api/items/3", timeout=10)[0], 200)
        wait_until(lambda: "accepting again" in s.output(), timeout=10, message="the resume log")
        self.assertEqual(metric_value(s, "sluice_accept_paused_total", 'reason="max_connections"'), 1)
        for sock in socks[15:]:
            sock.close()


if __name__ == "__main__":
    import unittest
    unittest.main()
