#!/usr/bin/env python3
"""libsae's `sae bench` against SAELens's own training step (saelens_step.py), fp32 and bf16
autocast, on the same shapes and threads; prints one markdown report.

For each arch: `sae bench`, then saelens_step.py without and with `--autocast bf16`, each
in its own process (so each has its own peak RSS). SAELens has no OrtSAE: for `ortsae` the
SAELens columns are its BatchTopK step (the yardstick issue 15 names), marked in the table. All three print one JSON object as their
last stdout line. The report has the CPU model and its relevant flags, the load average at
start and end (and before each run, in --json), the versions, the date and every command.
This script needs no torch itself; --python names the interpreter that has sae-lens.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from benchutil import arch_list, cpuinfo

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "ortsae")
DEFAULT_ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
SAELENS_ARCH = {"ortsae": "batchtopk"}  # SAELens has no OrtSAE
SAELENS_STEP = Path(__file__).resolve().with_name("saelens_step.py")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
NOISY_LOAD = 2.5  # 1-minute load average above which the run is called noisy


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", required=True, help="path to the sae executable")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter with sae-lens and torch, for saelens_step.py")
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help=f"from {', '.join(ARCHS)}")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="libsae's --precision (the TopK family's encoder product; same codes)")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3, help="timed steps of every run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of every run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write machine info, commands and raw results")
    a = p.parse_args()
    a.archs = arch_list(p, a.archs, ARCHS)
    return a


def machine_info():
    model, flags = cpuinfo()
    return {
        "cpu_model": model,
        "flags": {f: f in flags for f in FLAGS},
        "logical_cpus": os.cpu_count(),
        "kernel": platform.release(),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOMP_", "SAE_"))},
    }


def run(cmd):
    """Run cmd; return (parsed last stdout line or None, error text or None, loadavg before)."""
    load = os.getloadavg()
    print("running: " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        return None, str(e), load
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return None, f"exit {proc.returncode}: " + (err[-1] if err else "no output"), load
    try:
        return json.loads(lines[-1]), None, load
    except json.JSONDecodeError:
        return None, "last stdout line is not JSON: " + lines[-1][:200], load


def ratio(num, den):
    return num / den if isinstance(num, (int, float)) and isinstance(den, (int, float)) and den \
        else None


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    a = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info()
    load_start = os.getloadavg()
    shape = ["--d-in", str(a.d_in), "--d-sae", str(a.d_sae), "--k", str(a.k),
             "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
             "--threads", str(a.threads), "--seed", str(a.seed)]
    results, failed = [], False
    for arch in a.archs:
        row = {"arch": arch}
        cmds = {
            "libsae": [a.sae, "bench", "--arch", arch, *shape, "--no-bound", "--precision", a.precision],
            "fp32": [a.python, str(SAELENS_STEP), "--arch", SAELENS_ARCH.get(arch, arch), *shape,
                     "--autocast", "none"],
            "bf16": [a.python, str(SAELENS_STEP), "--arch", SAELENS_ARCH.get(arch, arch), *shape,
                     "--autocast", "bf16"],
        }
        for name, cmd in cmds.items():
            res, err, load = run(cmd)
            row[name] = {"command": shlex.join(cmd), "result": res, "error": err,
                         "loadavg_before": load}
            if err:
                failed = True
                print(f"{arch} {name}: {err}", file=sys.stderr)
        results.append(row)
    load_end = os.getloadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)

    get = lambda row, name, key: (row[name]["result"] or {}).get(key)  # noqa: E731
    first_saelens = next((r[n]["result"] for r in results for n in ("fp32", "bf16")
                          if r[n]["result"]), {}) or {}
    first_lib = next((r["libsae"]["result"] for r in results if r["libsae"]["result"]), {}) or {}

    out = []
    out.append(f"Shape d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {a.batch}; "
               f"{a.threads} threads; {a.warmup} warmup + {a.steps} timed steps per run "
               "(tokens/s = batch / median step time).")
    out.append("")
    out.append("| arch | SAELens fp32 tok/s | SAELens bf16-autocast tok/s | libsae tok/s "
               "| libsae products | libsae / SAELens fp32 | libsae / SAELens bf16 | SAELens fp32 MB "
               "| SAELens bf16 MB | libsae MB |")
    out.append("|---|--:|--:|--:|---|--:|--:|--:|--:|--:|")
    for r in results:
        lib, f32, b16 = (get(r, n, "tokens_per_s") for n in ("libsae", "fp32", "bf16"))
        name = r["arch"] + (f" (SAELens: {SAELENS_ARCH[r['arch']]})" if r["arch"] in SAELENS_ARCH else "")
        enc = get(r, "libsae", "encoder_precision")  # bf16: exact proposals (TopK family) or mixed precision
        out.append(
            f"| {name} | {fmt(f32, '.0f')} | {fmt(b16, '.0f')} | {fmt(lib, '.0f')} | {enc or '?'} "
            f"| {fmt(ratio(lib, f32), '.2f')}× | {fmt(ratio(lib, b16), '.2f')}× "
            f"| {fmt(get(r, 'fp32', 'training_mb'), '.0f')} "
            f"| {fmt(get(r, 'bf16', 'training_mb'), '.0f')} "
            f"| {fmt(get(r, 'libsae', 'training_mb'), '.0f')} |")
    out.append("")
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in info["flags"].items())
    out.append(f"- CPU: {info['cpu_model']} ({info['logical_cpus']} logical CPUs); {flags}")
    noisy = max(load_start[0], load_end[0]) > NOISY_LOAD
    out.append("- load average (1/5/15 min): start "
               + " / ".join(f"{x:.2f}" for x in load_start) + ", end "
               + " / ".join(f"{x:.2f}" for x in load_end)
               + (f" — above {NOISY_LOAD}: other work shared the cores, the numbers are noisy"
                  if noisy else ""))
    out.append(f"- sae-lens {first_saelens.get('sae_lens_version', '?')}, torch "
               f"{first_saelens.get('torch_version', '?')} (CPU kernels: "
               f"{first_saelens.get('torch_cpu_capability', '?')}, MKL "
               f"{(first_saelens.get('mkl_version') or '?').split(' ')[0]}); libsae encoder "
               f"GEMM: {first_lib.get('gemm_backend', '?')}")
    out.append(f"- run {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC, kernel {info['kernel']}"
               + (f", environment {info['env']}" if info["env"] else ""))
    out.append("- MB = training MB: peak RSS minus the RSS before the model is built "
               "(SAELens: after importing torch and sae_lens), 2^20 bytes")
    out.append("")
    out.append("Commands:")
    out.append("")
    out.append("```")
    out.append(shlex.join([sys.executable, *sys.argv]))
    for r in results:
        for n in ("libsae", "fp32", "bf16"):
            out.append(r[n]["command"])
    out.append("```")
    errors = [f"- {r['arch']} {n}: {r[n]['error']}" for r in results
              for n in ("libsae", "fp32", "bf16") if r[n]["error"]]
    if errors:
        out += ["", "Failed runs:", *errors]
    print("\n".join(out))

    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": info, "loadavg_start": load_start, "loadavg_end": load_end,
                       "started": started.isoformat(), "finished": finished.isoformat(),
                       "args": vars(a), "results": results}, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
