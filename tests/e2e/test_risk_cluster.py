"""Risk state shared between instances through Redis (issue 6, redis.share_risk): a score earned
on one instance follows the device to another, and a solved challenge ticket redeems once across
the cluster. Two real sluice instances and one real redis-server."""
import json
import time
import unittest

from harness import admin_call, wait_until
import test_lists
from test_risk import chrome_headers, hdr, log_for, raw_request, solve_pow, ticket_nonce_hex

SHARE = ("  share_risk: true\n  share_interval: 50ms\n  share_min_score: 30\n"
         "  expected_instances: 2\n")
# A low per-device rate limit, so a client spread over both instances is over it only in sum.
BEHAVIOUR = "  behaviour: {rate_max: 10}\n"


def sync_status(s):
    return admin_call(s, "GET", "/risk")[2]["cluster_sync"]


class TestRiskShared(test_lists.TestListsClusterSync):
    REDIS_EXTRA = SHARE
    RISK_EXTRA = test_lists.LISTS + BEHAVIOUR
    # The list tests of the base class need sync_lists; here only the shared risk state runs.
    test_entry_added_on_one_instance_blocks_on_the_other_within_a_second = None
    test_expiry_travels_and_a_new_instance_reads_existing_entries = None
    test_external_writer_and_redis_restart = None

    def test_score_earned_on_one_instance_follows_the_device_to_another(self):
        a, b = self.instances
        # A clean browser on b first: allowed, nothing carried.
        st, _, _ = raw_request(b.port, "GET", "/item/1", chrome_headers("device=dev-x"))
        self.assertEqual(st, 200)
        # The same device scripted against a scores high there.
        script = [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"), ("Cookie", "device=dev-x")]
        st, _, _ = raw_request(a.port, "GET", "/api/items/1/checkout", script)
        self.assertIn(st, (403, 429))
        wait_until(lambda: sync_status(b)["risk_applied"] >= 1, timeout=2.0,
                   message="b to merge a's update")
        self.assertGreaterEqual(sync_status(a)["risk_sent"], 1)
        # Back on b with browser headers: the carried score challenges it.
        st, _, body = raw_request(b.port, "GET", "/item/2", chrome_headers("device=dev-x"))
        entry = log_for(b, lambda e: e.get("path") == "/item/2")[-1]
        self.assertIn("score.carried", json.dumps(entry["risk"]), body[:200])
        self.assertNotEqual(entry["risk"]["action"], "allow")
        device_score = entry["risk"]["score"]
        # A device nobody scored carries only the shared IP's share (ip_carry_percent), less.
        st, _, _ = raw_request(b.port, "GET", "/item/3", chrome_headers("device=dev-clean"))
        entry = log_for(b, lambda e: e.get("path") == "/item/3")[-1]
        self.assertLess(entry["risk"]["score"], device_score)

    def test_request_counts_of_a_client_spread_over_both_instances_add_up(self):
        a, b = self.instances
        # 8 page views on each instance, alternating: under rate_max (10/min) on either one,
        # 16 in sum. Each instance tells the other once the device passes 10 / 2 here.
        fired = []
        for i in range(16):
            s = (a, b)[i % 2]
            raw_request(s.port, "GET", "/item/%d" % (100 + i), chrome_headers("device=dev-spread"))
            entry = log_for(s, lambda e: e.get("path") == "/item/%d" % (100 + i))[-1]
            fired.append("behaviour.rate_high" in json.dumps(entry["risk"]))
            time.sleep(0.15)  # three share intervals
        self.assertFalse(any(fired[:8]), fired)
        self.assertTrue(any(fired[10:]), fired)
        self.assertGreater(sync_status(a)["risk_applied"], 0)
        self.assertGreater(sync_status(b)["risk_applied"], 0)

    def test_a_solved_ticket_redeems_once_across_instances(self):
        a, b = self.instances
        ua = [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"), ("Cookie", "device=d-pow")]
        st, _, body = raw_request(a.port, "GET", "/?x=5", ua)
        self.assertEqual(st, 403, body)
        j = json.loads(body)
        n = solve_pow(ticket_nonce_hex(j["ticket"]), j["difficulty"])
        form = "ticket=%s&counter=%d" % (j["ticket"], n)
        post = ua + [("Content-Type", "application/x-www-form-urlencoded")]
        st, h, body = raw_request(a.port, "POST", "/.sluice/pow", post, form)
        self.assertEqual(st, 200, body)
        self.assertTrue(hdr(h, "Set-Cookie").startswith("sluice_pass="))
        token = hdr(h, "Set-Cookie").split(";")[0].split("=", 1)[1]
        # The challenge passed on a is honoured on b (same secret, and the pass was shared).
        st, _, body = raw_request(b.port, "GET", "/?x=5",
                                  [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"),
                                   ("Cookie", "device=d-pow; sluice_pass=" + token)])
        self.assertEqual(st, 200, body)
        # b never saw the ticket locally, but Redis did: no second token.
        st, h, body = raw_request(b.port, "POST", "/.sluice/pow", post, form)
        self.assertEqual(st, 409, body)
        self.assertIsNone(hdr(h, "Set-Cookie"))
        entry = log_for(b, lambda e: e.get("path") == "/.sluice/pow")[-1]
        self.assertEqual(entry["risk"]["result"], "replayed_cluster")

    def test_redis_away_redemption_fails_open_on_the_local_spent_set(self):
        a, b = self.instances
        ua = [("User-Agent", "curl/8.5.0"), ("Accept", "application/json"), ("Cookie", "device=d-down")]
        st, _, body = raw_request(a.port, "GET", "/?x=6", ua)
        j = json.loads(body)
        n = solve_pow(ticket_nonce_hex(j["ticket"]), j["difficulty"])
        form = "ticket=%s&counter=%d" % (j["ticket"], n)
        post = ua + [("Content-Type", "application/x-www-form-urlencoded")]
        self.redis.kill()
        t0 = time.monotonic()
        st, h, body = raw_request(a.port, "POST", "/.sluice/pow", post, form)
        self.assertEqual(st, 200, body)
        self.assertLess(time.monotonic() - t0, 2.0)
        entry = log_for(a, lambda e: e.get("path") == "/.sluice/pow")[-1]
        self.assertEqual(entry["risk"]["result"], "ok_redis_down")
        # The local spent set still refuses a replay on the same instance.
        st, _, _ = raw_request(a.port, "POST", "/.sluice/pow", post, form)
        self.assertEqual(st, 409)


if __name__ == "__main__":
    unittest.main()
