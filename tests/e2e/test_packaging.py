"""`make install` (cmake --install) into a staging prefix: the binary, the operator's config and
policies, the docs and a systemd unit rewritten to the prefix; the installed binary validates
the installed config, and the unit passes `systemd-analyze verify` where systemd is present."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import SLUICE_BIN


class InstallTest(unittest.TestCase):
    def test_install_into_a_staging_prefix(self):
        build_dir = os.path.dirname(os.path.dirname(os.path.abspath(SLUICE_BIN)))
        prefix = tempfile.mkdtemp(prefix="sluice-install-")
        self.addCleanup(shutil.rmtree, prefix, True)
        r = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for rel in ("bin/sluice", "etc/sluice/conf/sluice.yaml", "etc/sluice/conf/policies/item_page.lua",
                    "share/doc/sluice/operations.md", "lib/systemd/system/sluice.service"):
            self.assertTrue(os.path.exists(os.path.join(prefix, rel)), rel)
        with open(os.path.join(prefix, "lib/systemd/system/sluice.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=%s/bin/sluice -c %s/etc/sluice/conf/sluice.yaml" % (prefix, prefix), unit)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
        self.assertNotIn("/usr/local", unit)
        # The shipped config reads its admin token from a file the operator provides.
        etc = os.path.join(prefix, "etc/sluice")
        os.makedirs(os.path.join(etc, "conf"), exist_ok=True)
        with open(os.path.join(etc, "conf/admin.token"), "w") as f:
            f.write("installed-token\n")
        r = subprocess.run([os.path.join(prefix, "bin/sluice"), "-t", "-c", "conf/sluice.yaml"], cwd=etc,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", os.path.join(prefix, "lib/systemd/system/sluice.service")],
                               capture_output=True, text=True, timeout=60)
            # Only the unit's own syntax matters here, not whether this machine runs systemd.
            self.assertNotIn("Unknown key", r.stderr)
            self.assertNotIn("Unknown section", r.stderr)


if __name__ == "__main__":
    unittest.main()
