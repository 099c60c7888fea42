#!/usr/bin/env python3
"""Faults while `sae` writes an SAE directory (issue 13, items 7, 8, 9 and 11).

An SAE directory changes as a whole (include/sae/io/directory.hpp): whatever kills the writer,
the directory holds the old SAE or the new one, never new weights with an old cfg.json, and its
other entries (checkpoint/, the user's notes) survive. Checked here with strace's fault
injection on the real binary:
  - a SIGKILL at every rename, renameat2, linkat and mkdir of `sae convert` and `sae train`
    over an existing SAE, then a clean re-run that must leave exactly the new directory and no
    temporaries (the next writer recovers what a killed one left);
  - a full disk (ENOSPC from write) and a failing fsync (EIO): exit 1, the message, and the
    directory exactly as before, nothing created for a new one;
  - a run that fails before its first checkpoint leaves no checkpoint directory;
  - an --out that cannot be written is refused before the first step;
  - --resume of a copied run writes the SAE into the copy, never into the original;
  - stale temporaries of dead processes are removed, a live process's are kept.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory). Exit 77 (skipped)
without strace.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np

from saetest import SAE, check, finish, run

TMP = tempfile.mkdtemp(prefix="sae_faults_", dir=os.environ.get("SAE_TMP") or None)
STRACE = shutil.which("strace")
SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def snapshot(d):
    """{relative path: bytes} of every file under d (directories as a trailing '/')."""
    out = {}
    for root, dirs, files in os.walk(d):
        rel = os.path.relpath(root, d)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name)) + "/"] = b""
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = f.read()
    return out


def model_of(snap):
    """What identifies the SAE in a snapshot: cfg.json without its metadata (which holds
    timings) and the weights' bytes."""
    cfg = snap.get("cfg.json")
    if cfg is not None:
        cfg = json.loads(cfg)
        cfg.pop("metadata", None)
    return cfg, snap.get("sae_weights.safetensors")


def normalized(snap):
    """The snapshot with timings left out: cfg.json as model_of, train_log.jsonl as a line count."""
    out = dict(snap)
    if "cfg.json" in out:
        out["cfg.json"] = json.dumps(model_of(snap)[0], sort_keys=True).encode()
    if "train_log.jsonl" in out:
        out["train_log.jsonl"] = out["train_log.jsonl"].count(b"\n")
    return out


def leftovers(parent, name):
    """Temporaries a writer left: PARENT/.NAME.tmp.* and *.tmp.* inside PARENT/NAME."""
    found = [e for e in os.listdir(parent) if e.startswith("." + name + ".tmp.")]
    d = os.path.join(parent, name)
    if os.path.isdir(d):
        for root, _, files in os.walk(d):
            found += [os.path.join(root, f) for f in files if ".tmp." in f]
    return found


def syscall_events(cmd, cwd, syscalls, only=None):
    """The order in which `cmd` makes SYSCALLS: [(name, n-th call of that name)], keeping only
    the calls whose strace line (with file descriptors shown as paths) contains ONLY."""
    log = os.path.join(TMP, "strace.log")
    subprocess.run([STRACE, "-f", "-qq", "-y", "-o", log, "-e", "trace=" + ",".join(syscalls), *cmd], cwd=cwd,
                   capture_output=True, text=True, check=True)
    events, counts = [], {}
    with open(log) as f:
        for line in f:
            m = re.match(r"(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\(", line)
            if m and m.group(1) in syscalls:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
                if only is None or only in line:
                    events.append((m.group(1), counts[m.group(1)]))
    return events


def inject(cmd, cwd, spec):
    return subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "inject=" + spec, *cmd], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def fresh(trial, base):
    """TMP/trial/out as a copy of base (its own parent, so temporaries are easy to see)."""
    parent = os.path.join(TMP, trial)
    shutil.rmtree(parent, ignore_errors=True)
    os.makedirs(parent)
    if base is not None:
        shutil.copytree(base, os.path.join(parent, "out"), symlinks=True)
    return parent


def kill_everywhere(label, cmd, base):
    """Kills `cmd` (writing PARENT/out over a copy of base) at each of its renames, links and
    mkdirs; checks the directory after the kill and after a clean re-run."""
    ref = fresh(label + "_ref", base)
    p = subprocess.run(cmd, cwd=ref, capture_output=True, text=True)
    check(f"{label}: clean run", p.returncode == 0, p.stderr[-300:])
    new = snapshot(os.path.join(ref, "out"))
    old = snapshot(base) if base is not None else {}
    events = syscall_events(cmd, fresh(label + "_count", base), ["rename", "renameat", "renameat2", "linkat", "mkdir"])
    check(f"{label}: the save makes renames", sum(e[0].startswith("rename") for e in events) >= 2, str(events))
    bad = []
    for name, nth in events:
        parent = fresh(f"{label}_kill", base)
        out = os.path.join(parent, "out")
        p = inject(cmd, parent, f"{name}:signal=KILL:when={nth}")
        if p.returncode == 0:
            bad.append(f"{name}#{nth}: not killed")
            continue
        after = snapshot(out) if os.path.isdir(out) else {}
        if model_of(after) not in (model_of(old), model_of(new)):
            bad.append(f"{name}#{nth}: mixed SAE {sorted(after)}")
        if base is not None and not os.path.isdir(out):
            bad.append(f"{name}#{nth}: the old SAE is gone")
        # The next run recovers everything a killed one left.
        p = subprocess.run(cmd, cwd=parent, capture_output=True, text=True)
        if p.returncode != 0:
            bad.append(f"{name}#{nth}: re-run failed: {p.stderr[-200:]}")
        elif normalized(snapshot(out)) != normalized(new):
            bad.append(f"{name}#{nth}: re-run left {sorted(snapshot(out))}, expected {sorted(new)}")
        elif leftovers(parent, "out"):
            bad.append(f"{name}#{nth}: temporaries left: {leftovers(parent, 'out')}")
    check(f"{label}: killed at each of {len(events)} renames/links/mkdirs: old or new SAE, recovered", not bad,
          "; ".join(bad[:4]))
    return new


def host_tag():
    return "".join(c for c in socket.gethostname() if c.isalnum() or c == "-") or "host"


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def main():
    if not STRACE:
        print("strace is not installed: skipped")
        return 77
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 16, "--features", 32, "--samples", 3000, "--seed", 2)
    common = ["--data", toy, "--arch", "topk", "--d-sae", "64", "--batch", "256", "--threads", "1"]
    A, B = os.path.join(TMP, "A"), os.path.join(TMP, "B")
    run("train", *common, "--steps", 10, "--k", 4, "--out", A)
    run("train", *common, "--steps", 10, "--k", 8, "--seed", 5, "--out", B)

    # The directory to overwrite: SAE A, a training log, a checkpoint/ and a file of the user's.
    base = os.path.join(TMP, "base")
    shutil.copytree(A, base)
    os.makedirs(os.path.join(base, "checkpoint"))
    with open(os.path.join(base, "checkpoint", "keep.txt"), "w") as f:
        f.write("keep")
    with open(os.path.join(base, "notes.txt"), "w") as f:
        f.write("mine")

    # 7: sae convert over an existing SAE.
    new = kill_everywhere("convert", [SAE, "convert", "--in", B, "--out", "out"], base)
    check("convert: the new SAE is B's", model_of(new) == model_of(snapshot(B)))
    check("convert: checkpoint/ and the user's file are kept",
          new.get("checkpoint/keep.txt") == b"keep" and new.get("notes.txt") == b"mine", sorted(new))
    check("convert: A's training log does not stay beside B", "train_log.jsonl" not in new, sorted(new))
    # ... into a directory that does not exist yet, and sae train over an existing SAE.
    kill_everywhere("convert-new", [SAE, "convert", "--in", B, "--out", "out"], None)
    trained = kill_everywhere("train", [SAE, "train", *common, "--steps", "10", "--k", "8", "--out", "out"], base)
    check("train: its log replaces A's, checkpoint/ kept",
          trained.get("train_log.jsonl") not in (None, snapshot(A)["train_log.jsonl"])
          and trained.get("checkpoint/keep.txt") == b"keep", sorted(trained))

    # 8: a full disk and a failing fsync while saving: exit 1, the reason, nothing changed.
    for target in ("existing", "new"):
        out_arg = "out" if target == "existing" else os.path.join("deep", "out")
        cmd = [SAE, "convert", "--in", B, "--out", out_arg]
        writes = syscall_events(cmd, fresh("disk_count", base if target == "existing" else None), ["write"], ".tmp.")
        check(f"{target} directory: the save writes its files", len(writes) >= 2, str(writes))
        faults = [(f"ENOSPC at write #{n} of the files", f"write:error=ENOSPC:when={n}") for _, n in writes]
        faults.append(("EIO from fsync", "fsync:error=EIO:when=1"))
        for label, spec in faults:
            parent = fresh("disk", base if target == "existing" else None)
            out = os.path.join(parent, "out")
            before = snapshot(out) if os.path.isdir(out) else None
            p = inject(cmd, parent, spec)
            after = snapshot(out) if os.path.isdir(out) else None
            reason = "No space left" in p.stderr or "Input/output error" in p.stderr
            check(f"{label}, {target} directory: exit 1 with the reason, nothing changed or created",
                  p.returncode == 1 and reason and after == before and not os.path.exists(os.path.join(parent, "deep"))
                  and not leftovers(parent, "out"), f"rc={p.returncode} {p.stderr[-200:]} {os.listdir(parent)}")

    # 8: a run that diverges at its first step writes no checkpoint directory.
    bad = os.path.join(TMP, "diverge.npy")
    np.save(bad, np.full((512, 16), 3e38, dtype=np.float32))
    out = os.path.join(TMP, "diverged")
    p = run("train", "--data", bad, "--arch", "topk", "--d-sae", 32, "--k", 4, "--batch", 256, "--steps", 5,
            "--checkpoint-every", 1, "--out", out, ok=False)
    check("a run that fails at step 1: exit 1, no checkpoint/ and no SAE left",
          p.returncode == 1 and not os.path.exists(out), f"rc={p.returncode} {p.stderr[-300:]}")

    # 9: an --out that cannot be written is refused before the first step.
    ro = os.path.join(TMP, "readonly")
    os.makedirs(ro)
    os.chmod(ro, 0o555)
    os.chmod(TMP, 0o755)
    cmd = [SAE, "train", *common, "--steps", "10", "--k", "4", "--out", os.path.join(ro, "sae")]
    if os.geteuid() == 0:  # root writes anywhere: run as nobody (setpriv, util-linux)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check("--out in a read-only directory: exit 1 before training, naming it",
          p.returncode == 1 and "cannot be created" in p.stderr and ro in p.stderr and "step " not in p.stderr,
          f"rc={p.returncode} {p.stderr[-300:]}")

    # 9: a run that cannot fit in memory is refused before anything is allocated.
    p = run("train", "--data", toy, "--arch", "topk", "--batch", 256, "--steps", 2, "--k", 4, "--d-sae", 400000000,
            "--out", os.path.join(TMP, "huge"), ok=False)
    check("--d-sae far beyond memory: exit 2 with the estimate, nothing created",
          p.returncode == 2 and "needs about" in p.stderr and "GiB available" in p.stderr
          and not os.path.exists(os.path.join(TMP, "huge")), f"rc={p.returncode} {p.stderr[-300:]}")

    # 11: --resume of a copied run writes into the copy.
    orig = os.path.join(TMP, "orig")
    run("train", *common, "--k", 4, "--steps", 20, "--checkpoint-every", 10, "--out", orig)
    copy = os.path.join(TMP, "elsewhere", "copy")
    shutil.copytree(orig, copy)
    for n in SAE_FILES + ("train_log.jsonl",):
        os.remove(os.path.join(copy, n))
    before = snapshot(orig)
    elsewhere = os.path.join(TMP, "elsewhere")
    p = subprocess.run([SAE, "train", "--resume", "copy"], cwd=elsewhere, capture_output=True, text=True)
    check("--resume of a copied run: the SAE goes into the copy, the original is untouched",
          p.returncode == 0 and os.path.exists(os.path.join(copy, "cfg.json")) and snapshot(orig) == before,
          p.stderr[-300:])
    p = subprocess.run([SAE, "train", "--resume", os.path.relpath(os.path.join(copy, "checkpoint"), TMP)], cwd=TMP,
                       capture_output=True, text=True)
    check("--resume DIR/checkpoint from another directory: the SAE goes into DIR",
          p.returncode == 0 and os.path.exists(os.path.join(copy, "cfg.json")) and snapshot(orig) == before,
          p.stderr[-300:])

    # 11: stale temporaries of dead processes go, a live process's stay.
    ck = os.path.join(copy, "checkpoint")
    dead = os.path.join(ck, f"checkpoint.safetensors.tmp.{dead_pid()}.0.{host_tag()}")
    live = os.path.join(ck, f"checkpoint.safetensors.tmp.{os.getpid()}.0.{host_tag()}")
    other = os.path.join(ck, f"checkpoint.safetensors.tmp.{dead_pid()}.0.another-host")
    stale_dir = os.path.join(elsewhere, f".copy.tmp.{dead_pid()}.3.{host_tag()}")
    os.makedirs(stale_dir)
    for f in (dead, live, other, os.path.join(stale_dir, "cfg.json")):
        with open(f, "w") as fh:
            fh.write("partial")
    run("train", *common, "--k", 4, "--steps", 20, "--checkpoint-every", 10, "--out", copy)
    check("a dead process's checkpoint temporary is removed", not os.path.exists(dead))
    check("a live process's and another host's temporaries are kept", os.path.exists(live) and os.path.exists(other))
    check("a dead writer's staging directory is removed", not os.path.exists(stale_dir))
    return finish()


if __name__ == "__main__":
    sys.exit(main())
