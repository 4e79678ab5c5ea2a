"""The shortest path a newcomer takes: a demo item through sluice."""
import json

from harness import ProxyTestCase, curl, upstream_yaml


class SmokeTest(ProxyTestCase):
    def test_item_through_proxy(self):
        demo = self.start_demo("sf1")
        s = self.start_sluice(upstream_yaml("storefront", [demo.address]))
        rc, out, err = curl("-i", s.url("/api/items/42"))
        self.assertEqual(rc, 0, err)
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertIn(b"200 OK", head.split(b"\r\n")[0])
        self.assertIn(b"X-Served-By: sf1", head)
        self.assertEqual(json.loads(body)["id"], "42")


if __name__ == "__main__":
    import unittest
    unittest.main()
