#!/usr/bin/python3
"""Run `sae bench` and the PyTorch measuring stick (torch_step.py) on the same shapes and
print a table of speed and memory ratios against the issue-5 targets.

Each measurement is its own subprocess (so each has its own peak RSS), libsae and PyTorch
alternating arch by arch. Both print one JSON object as the last line of stdout.
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from benchutil import arch_list, cpuinfo

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "ortsae")
TORCH_STEP = Path(__file__).resolve().with_name("torch_step.py")
# Issue 5: minimum speed-up over PyTorch and, where given, minimum fraction of the GEMM bound.
TARGETS = {
    "topk": (8.0, 0.70),
    "batchtopk": (8.0, 0.70),
    "ortsae": (6.0, None),
    "relu": (1.8, None),
    "jumprelu": (1.8, None),
}
MEMORY_TARGET = 0.5  # libsae training MB / PyTorch training MB


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", required=True, help="path to the sae executable")
    p.add_argument("--archs", default="topk,batchtopk,ortsae,relu,jumprelu")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--python", default=sys.executable,
                   help="interpreter with torch for torch_step.py (default: this one)")
    p.add_argument("--json", metavar="FILE", help="write machine info, commands and raw results")
    p.add_argument("--markdown", action="store_true",
                   help="print the whole report as markdown (headings, lists, code block)")
    a = p.parse_args()
    a.archs = arch_list(p, a.archs, ARCHS)
    return a


def machine_info():
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = cpuinfo()[1]
    return {
        "cpu_model": model,
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "logical_cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        # OpenBLAS reads these; both runs inherit them (OPENBLAS_CORETYPE picks its kernels).
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOMP_"))},
    }


def run(cmd):
    """Run cmd; return (parsed last stdout line or None, error text or None)."""
    print("running: " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        return None, str(e)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = proc.stderr.strip().splitlines()
        return None, f"exit {proc.returncode}: " + (err[-1] if err else "no output")
    try:
        return json.loads(lines[-1]), None
    except json.JSONDecodeError:
        return None, "last stdout line is not JSON: " + lines[-1][:200]


def ratio(num, den):
    try:
        return num / den if den else None
    except TypeError:
        return None


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def evaluate(arch, lib, torch_res):
    """One table row: numbers, ratios, and whether each target is met (None = unknown)."""
    get = lambda r, key: r.get(key) if r else None  # noqa: E731
    speedup = ratio(get(lib, "tokens_per_s"), get(torch_res, "tokens_per_s"))
    frac = get(lib, "fraction_of_gemm_bound")
    mem = ratio(get(lib, "training_mb"), get(torch_res, "training_mb"))
    min_speedup, min_frac = TARGETS[arch]
    checks = {"speed-up": None if speedup is None else speedup >= min_speedup,
              "memory": None if mem is None else mem <= MEMORY_TARGET}
    target = [f"≥{min_speedup:g}×"]
    if min_frac is not None:
        checks["gemm bound"] = None if frac is None else frac >= min_frac
        target.append(f"≥{min_frac:.0%} bound")
    target.append(f"mem ≤{MEMORY_TARGET:g}×")
    if any(v is False for v in checks.values()):
        met = "no (" + ", ".join(k for k, v in checks.items() if v is False) + ")"
    elif any(v is None for v in checks.values()):
        met = "?"
    else:
        met = "yes"
    return {
        "arch": arch, "speedup": speedup, "memory_ratio": mem, "checks": checks, "met": met,
        "cells": [
            arch, fmt(get(lib, "tokens_per_s"), ",.0f"), fmt(get(torch_res, "tokens_per_s"), ",.0f"),
            fmt(speedup, ".2f") + ("×" if speedup is not None else ""),
            fmt(frac * 100 if frac is not None else None, ".0f") + ("%" if frac is not None else ""),
            fmt(get(lib, "training_mb"), ",.0f"), fmt(get(torch_res, "training_mb"), ",.0f"),
            fmt(mem, ".2f") + ("×" if mem is not None else ""),
            ", ".join(target), met,
        ],
    }


HEADER = ["arch", "libsae tok/s", "PyTorch tok/s", "speed-up", "libsae % of GEMM bound",
          "libsae training MB", "PyTorch training MB", "memory ratio", "target", "met"]


def table(rows):
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" if i == 0 else "--:" for i in range(len(HEADER) - 2))
             + "|---|---|"]
    lines += ["| " + " | ".join(r["cells"]) + " |" for r in rows]
    return "\n".join(lines)


def main():
    a = parse_args()
    info = machine_info()
    shape = ["--d-in", str(a.d_in), "--d-sae", str(a.d_sae), "--k", str(a.k),
             "--batch", str(a.batch), "--steps", str(a.steps), "--threads", str(a.threads)]
    results, commands, rows = [], [], []
    torch_version = None
    for arch in a.archs:
        lib_cmd = [a.sae, "bench", "--arch", arch] + shape
        torch_cmd = [a.python, str(TORCH_STEP), "--arch", arch] + shape
        lib, lib_err = run(lib_cmd)
        tor, tor_err = run(torch_cmd)
        commands += [shlex.join(lib_cmd), shlex.join(torch_cmd)]
        torch_version = torch_version or (tor or {}).get("torch_version")
        row = evaluate(arch, lib, tor)
        rows.append(row)
        results.append({"arch": arch, "libsae": lib, "libsae_error": lib_err,
                        "pytorch": tor, "pytorch_error": tor_err,
                        "speedup": row["speedup"], "memory_ratio": row["memory_ratio"],
                        "checks": row["checks"], "met": row["met"]})
    errors = [(r["arch"], who, r[who + "_error"]) for r in results
              for who in ("libsae", "pytorch") if r[who + "_error"]]
    backends = sorted({r["libsae"].get("gemm_backend") for r in results
                       if r["libsae"] and r["libsae"].get("gemm_backend")})

    shape_text = (f"d_in={a.d_in}, d_sae={a.d_sae}, k={a.k}, batch={a.batch}, "
                  f"steps={a.steps}, threads={a.threads}")
    machine = [
        f"CPU: {info['cpu_model']} ({info['logical_cpus']} logical CPUs), "
        f"avx512f: {'yes' if info['avx512f'] else 'no'}",
        f"load average at start: {', '.join(f'{x:.2f}' for x in info['loadavg'])}",
        f"torch: {torch_version or 'unknown'}; libsae GEMM backend: {', '.join(backends) or 'unknown'}",
        "environment: " + (", ".join(f"{k}={v}" for k, v in info["env"].items()) or "(none set)"),
        f"shape: {shape_text}",
    ]
    if a.markdown:
        print("## libsae vs PyTorch, one training step\n")
        print("\n".join("- " + m for m in machine) + "\n")
        print(table(rows) + "\n")
        print("Commands:\n\n```\n" + "\n".join(commands) + "\n```")
        if errors:
            print("\nErrors:\n\n" + "\n".join(f"- {arch} {who}: {e}" for arch, who, e in errors))
    else:
        print("\n".join(machine) + "\n")
        print(table(rows) + "\n")
        print("commands:\n" + "\n".join("  " + c for c in commands))
        for arch, who, e in errors:
            print(f"error: {arch} {who}: {e}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": info, "torch_version": torch_version, "args": vars(a),
                       "targets": {k: {"min_speedup": s, "min_fraction_of_gemm_bound": f,
                                       "max_memory_ratio": MEMORY_TARGET}
                                   for k, (s, f) in TARGETS.items()},
                       "commands": commands, "results": results}, fh, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
