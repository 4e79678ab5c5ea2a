#!/usr/bin/env python3
"""Fails when a prefetch probe in the unit-test binary has no prefetch instruction.

Regression check for the bug where GCC deleted every inlined call of
BehaviourTracker::prefetch (tests/unit/risk/behaviour_prefetch_codegen_test.cc): a cache hint
changes no result, so only the machine code can show it is there. Usage: check_prefetch.py BINARY
"""
import platform
import subprocess
import sys

PROBES = ["sluice_codegen_behaviour_prefetch", "sluice_codegen_key_table_prefetch"]
MNEMONICS = ("prefetch", "prfm")


def main():
    binary = sys.argv[1]
    failed = False
    for probe in PROBES:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "--disassemble=" + probe, binary],
                             capture_output=True, text=True, check=True).stdout
        body = out.split("<%s>:" % probe, 1)
        if len(body) < 2:
            print("%s: probe %s not found in the binary" % (binary, probe))
            failed = True
            continue
        code = body[1].strip().split("\n\n", 1)[0]  # up to the next symbol
        # "  addr:<TAB>mnemonic operands": look at the mnemonic only (the probes' names say prefetch).
        hints = [line.strip() for line in code.splitlines()
                 if "\t" in line and line.split("\t", 1)[1].startswith(MNEMONICS)]
        if not hints:
            print("%s: %s has no prefetch instruction (%s):\n%s" % (binary, probe, platform.machine(),
                                                                    code))
            failed = True
        else:
            print("%s: %d prefetch instruction(s): %s" % (probe, len(hints), "; ".join(hints)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
