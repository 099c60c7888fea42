"""Shared helpers of the Python tests that drive the `sae` tool (not a test itself).

run() calls $SAE_BIN, last_json() reads the JSON result on the last stdout line, check()
prints one ok/FAIL line and collects failures.
"""
import json
import os
import subprocess

SAE = os.environ.get("SAE_BIN", "sae")
failures = []


def run(*args, ok=True, timeout=600):
    p = subprocess.run([SAE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"sae {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def last_json(p):
    lines = [l for l in p.stdout.strip().splitlines() if l.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])


def check(name, cond, detail=""):
    if cond:
        print(f"ok   {name}")
    else:
        print(f"FAIL {name} {detail}")
        failures.append(name)


def finish():
    """The exit status of a test script: 1 (after a count) if any check failed, else 0."""
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0
