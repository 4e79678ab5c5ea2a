"""Bugs the fuzz targets found (tests/fuzz, docs/security.md), held end to end through the real
binary: each test is named after its bug, and the unit regression tests in
tests/unit/proxy/http/http_parser_fuzz_regressions_test.cc pin the parser-level cause."""
import unittest

from harness import (CannedUpstream, ProxyTestCase, RawClient, read_until_close, upstream_yaml)


class FuzzRegressions(ProxyTestCase):
    def proxy_to(self, response):
        up = CannedUpstream(response)
        self.addCleanup(up.stop)
        s = self.start_sluice(upstream_yaml("storefront", [up.address]))
        return up, s

    def exchange(self, s, request):
        c = RawClient(s.port)
        self.addCleanup(c.close)
        c.send(request)
        data, _ = read_until_close(c, timeout=3)
        return data

    def test_blank_lines_ahead_of_a_request_hid_an_obs_fold(self):
        up, s = self.proxy_to("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        data = self.exchange(s, b"\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n"
                                b" Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc")
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:200])
        self.assertEqual(up.requests, [], "a folded header reached the upstream")

    def test_upstream_1xx_with_a_body_desynchronised_the_client(self):
        # Content-Length on a 1xx: its "body" was the final response's first bytes.
        up, s = self.proxy_to("HTTP/1.1 150 Odd\r\nContent-Length: 17\r\n\r\n"
                              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        data = self.exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        interim, _, final = data.partition(b"\r\n\r\n")
        self.assertTrue(interim.startswith(b"HTTP/1.1 150 Odd"), data[:300])
        self.assertTrue(final.startswith(b"HTTP/1.1 200 OK\r\n"), data[:300])
        self.assertTrue(final.endswith(b"\r\n\r\nok"), data[:300])

    def test_upstream_1xx_with_a_chunked_body_injected_bytes(self):
        up, s = self.proxy_to("HTTP/1.1 150 Odd\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5\r\nEVIL!\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        data = self.exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertNotIn(b"EVIL!", data)
        interim, _, final = data.partition(b"\r\n\r\n")
        self.assertTrue(interim.startswith(b"HTTP/1.1 150 Odd"), data[:300])
        # What followed the 1xx is no response: the client gets a clean 502.
        self.assertTrue(final.startswith(b"HTTP/1.1 502 "), data[:300])

    def test_upstream_status_below_100_went_out_malformed(self):
        up, s = self.proxy_to("HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok")
        data = self.exchange(s, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 502 "), data[:200])


if __name__ == "__main__":
    unittest.main()
