#!/usr/bin/env python3
"""Kill-and-resume, streaming and numerical-fault tests of `sae train`.

1. Streams 4 .npy files (one float16) from a directory through a shuffle buffer smaller than
   the data, with activation normalisation, and trains a reference run without interruption.
2. Starts the same run with --checkpoint-every, SIGKILLs it mid-run, checks that the last
   checkpoint parses (by hand: safetensors header, tensors, the JSON state), resumes it, kills
   the resumed run again later, resumes again, and requires the final sae_weights.safetensors
   to be byte-for-byte the reference's (and the training log's losses to be identical).
3. Resumes the single-file (full shuffle) path from a mid-run checkpoint of a finished run.
4. A NaN in one file stops training with a one-line error naming the step, file and row, and
   the last checkpoint (written before the bad step) is intact.

Pure Python (struct/json): no numpy needed. Environment: SAE_BIN (the sae executable),
SAE_TMP (scratch directory). Exit 77 (skipped) if the sae binary is missing.
"""
import ast
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

SAE = os.environ.get("SAE_BIN", "sae")
if not shutil.which(SAE) and not os.path.exists(SAE):
    print(f"sae binary not found ({SAE}): skipping")
    sys.exit(77)
TMP = tempfile.mkdtemp(prefix="sae_resume_", dir=os.environ.get("SAE_TMP") or None)
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  {detail}"))
    if not cond:
        failures.append(name)


def run(*args, ok=True):
    p = subprocess.run([SAE, *map(str, args)], capture_output=True, text=True, timeout=900)
    if ok and p.returncode != 0:
        raise AssertionError(f"sae {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def last_json(p):
    return json.loads([l for l in p.stdout.splitlines() if l.strip()][-1])


# ---- .npy by hand ----------------------------------------------------------------------------
def read_npy(path):
    raw = open(path, "rb").read()
    assert raw[:6] == b"\x93NUMPY"
    if raw[6] == 1:
        (hlen,) = struct.unpack("<H", raw[8:10])
        start = 10 + hlen
        header = raw[10:start]
    else:
        (hlen,) = struct.unpack("<I", raw[8:12])
        start = 12 + hlen
        header = raw[12:start]
    h = ast.literal_eval(header.decode("latin1"))
    return h, raw[start:]


def write_npy(path, descr, shape, data):
    d = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (descr, shape[0], shape[1])
    pad = 64 - (10 + len(d) + 1) % 64
    header = (d + " " * (pad % 64) + "\n").encode("latin1")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data)


# ---- safetensors by hand ---------------------------------------------------------------------
def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def checkpoint_step(path):
    """Step of a checkpoint file, or None if it is not there (yet)."""
    try:
        header, _ = read_safetensors(path)
        return json.loads(header["__metadata__"]["state"])["step"]
    except (OSError, ValueError, KeyError, struct.error):
        return None


def kill_when(args, ckpt, at_least):
    """Starts `sae train ARGS`, SIGKILLs it once CKPT holds step >= at_least. Returns (rc, step)."""
    p = subprocess.Popen([SAE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step = None
    while p.poll() is None:
        step = checkpoint_step(ckpt)
        if step is not None and step >= at_least:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    p.wait()
    return p.returncode, checkpoint_step(ckpt)


def log_losses(path):
    return [(j["step"], j["loss"], j["l0"], j["fvu"]) for j in map(json.loads, open(path))]


def main():
    # ---- data: 24,000 tokens of d = 32 in 4 files, the second one float16
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 32, "--features", 64, "--samples", 24000, "--seed", 5)
    h, data = read_npy(toy)
    n, d = h["shape"]
    parts = os.path.join(TMP, "parts")
    os.makedirs(parts)
    bounds = [0, 4000, 11000, 15500, 24000]
    for i in range(4):
        rows = data[bounds[i] * d * 4 : bounds[i + 1] * d * 4]
        if i == 1:
            vals = struct.unpack("<%df" % (len(rows) // 4), rows)
            write_npy(os.path.join(parts, f"part{i}.npy"), "<f2", (bounds[i + 1] - bounds[i], d),
                      struct.pack("<%de" % len(vals), *vals))
        else:
            write_npy(os.path.join(parts, f"part{i}.npy"), "<f4", (bounds[i + 1] - bounds[i], d), rows)

    steps, batch = 800, 256
    common = ["--data", parts, "--shuffle-buffer", 5000, "--normalize", "unit-mean-square", "--arch", "batchtopk",
              "--d-sae", 128, "--k", 4, "--steps", steps, "--batch", batch, "--seed", 7, "--threads", 2,
              "--dead-tokens", 10000, "--log-every", 50]

    # ---- 1. the uninterrupted reference (no checkpoints at all)
    ref = os.path.join(TMP, "ref")
    t0 = time.time()
    j = last_json(run("train", *common, "--out", ref))
    check("streaming: 4 files, buffer 5000 < 24000 tokens, trained", j["steps"] == steps and j["tokens"] == steps * batch, str(j))
    check("streaming: normalisation reported", j.get("normalize", {}).get("method") == "unit-mean-square", str(j))
    cfg = json.load(open(os.path.join(ref, "cfg.json")))
    md = cfg["metadata"]
    check("cfg: normalisation folded into the weights", cfg["normalize_activations"] == "none"
          and md["activation_normalization"]["folded_into_weights"] is True, str(md))
    print(f"     reference run: {time.time() - t0:.1f}s")
    ref2 = os.path.join(TMP, "ref2")
    run("train", *common, "--out", ref2)
    ref_bytes = open(os.path.join(ref, "sae_weights.safetensors"), "rb").read()
    check("streaming: same seed, same bytes", open(os.path.join(ref2, "sae_weights.safetensors"), "rb").read() == ref_bytes)
    e = last_json(run("eval", "--sae", ref, "--data", toy))
    check("normalised SAE works on raw activations (fvu < 0.3)", e["fvu"] < 0.3, str(e))

    # ---- 2. kill, check the checkpoint, resume, kill again, resume again
    out = os.path.join(TMP, "run")
    ckpt = os.path.join(out, "checkpoint", "checkpoint.safetensors")
    rc, step1 = kill_when(["train", *common, "--checkpoint-every", 25, "--out", out], ckpt, 200)
    check("kill 1: process was SIGKILLed mid-run", rc == -signal.SIGKILL and step1 is not None and 200 <= step1 < steps,
          f"rc={rc} step={step1} (the run finished before it could be killed?)")
    check("kill 1: no SAE written yet", not os.path.exists(os.path.join(out, "cfg.json")))
    header, buf = read_safetensors(ckpt)
    state = json.loads(header["__metadata__"]["state"])
    check("checkpoint: libsae format, step and tokens", header["__metadata__"]["format"] == "libsae-checkpoint"
          and state["step"] == step1 and state["step"] % 25 == 0 and state["tokens"] == step1 * batch, str(state)[:300])
    t = header["model.W_enc"]
    check("checkpoint: tensors (model, Adam moments, AuxK counters)",
          t["dtype"] == "F32" and t["shape"] == [128, 32] and header["adam.v.W_dec"]["shape"] == [128, 32]
          and header["loss.auxk_loss.since_fired"]["dtype"] == "I64" and "threshold_bits" in state["activation"],
          str(sorted(header))[:300])
    b, e_ = t["data_offsets"]
    vals = struct.unpack("<%df" % ((e_ - b) // 4), buf[b:e_])
    check("checkpoint: weights finite", all(v == v and abs(v) != float("inf") for v in vals))
    check("checkpoint: data position and settings", state["extra"]["source"]["position"] == step1 * batch
          and state["extra"]["source"]["kind"] == "streaming" and state["extra"]["args"]["steps"] == steps)

    p = run("train", "--resume", out, "--lr", 1, ok=False)
    check("resume: changing --lr is refused in one line", p.returncode != 0 and "--lr" in p.stderr
          and len(p.stderr.strip().splitlines()) == 1, p.stderr)

    rc, step2 = kill_when(["train", "--resume", out], ckpt, step1 + 250)
    check("kill 2: the resumed run was SIGKILLed later", rc == -signal.SIGKILL and step2 is not None and step2 >= step1 + 250,
          f"rc={rc} step={step2}")
    p = run("train", "--resume", out)
    j = last_json(p)
    check("resume: completes from the last checkpoint", j["steps"] == steps and j.get("resumed_from_step") == step2, str(j))
    got = open(os.path.join(out, "sae_weights.safetensors"), "rb").read()
    check(f"resume: weights bit-identical to the uninterrupted run (killed at >= {step1} and {step2})",
          got == ref_bytes, f"{len(got)} vs {len(ref_bytes)} bytes")
    check("resume: training log has the same losses at the same steps",
          log_losses(os.path.join(out, "train_log.jsonl")) == log_losses(os.path.join(ref, "train_log.jsonl")))
    check("resume: no temporary files left", os.listdir(os.path.join(out, "checkpoint")) == ["checkpoint.safetensors"],
          str(os.listdir(os.path.join(out, "checkpoint"))))

    # ---- 3. the single-file path (full shuffle), topk: resume a finished run's mid-run checkpoint
    single = ["--data", toy, "--arch", "topk", "--d-sae", 64, "--k", 3, "--steps", 200, "--batch", 256, "--seed", 2,
              "--threads", 2, "--dead-tokens", 5000]
    a = os.path.join(TMP, "single")
    run("train", *single, "--checkpoint-every", 70, "--checkpoint-dir", os.path.join(TMP, "single_ckpt"), "--out", a)
    check("single file: checkpoint at step 140", checkpoint_step(os.path.join(TMP, "single_ckpt", "checkpoint.safetensors")) == 140)
    b_ = os.path.join(TMP, "single_resumed")
    j = last_json(run("train", "--resume", os.path.join(TMP, "single_ckpt"), "--out", b_))
    check("single file: resumed from step 140", j.get("resumed_from_step") == 140, str(j))
    check("single file: resumed weights bit-identical",
          open(os.path.join(a, "sae_weights.safetensors"), "rb").read()
          == open(os.path.join(b_, "sae_weights.safetensors"), "rb").read())
    plain = os.path.join(TMP, "single_plain")
    run("train", *single, "--out", plain)
    check("single file: checkpointing does not change the result",
          open(os.path.join(a, "sae_weights.safetensors"), "rb").read()
          == open(os.path.join(plain, "sae_weights.safetensors"), "rb").read())

    # ---- 4. a NaN in the data: one-line error with step, file and row; checkpoint intact
    bad = os.path.join(TMP, "bad")
    shutil.copytree(parts, bad)
    h2, data2 = read_npy(os.path.join(bad, "part2.npy"))
    data2 = bytearray(data2)
    data2[(123 * d + 5) * 4 : (123 * d + 6) * 4] = struct.pack("<f", float("nan"))
    write_npy(os.path.join(bad, "part2.npy"), "<f4", h2["shape"], bytes(data2))
    nan_out = os.path.join(TMP, "nan_run")
    nan_args = [bad if x == parts else x for x in common]
    nan_args[nan_args.index("--normalize") + 1] = "none"  # (the estimate would meet the NaN first)
    p = run("train", *nan_args, "--checkpoint-every", 5, "--out", nan_out, ok=False)
    err = p.stderr.strip().splitlines()
    line = err[-1] if err else ""
    where = os.path.join(bad, "part2.npy") + " row 123, dimension 5"
    check("nan: non-zero exit, error names the file, row and dimension", p.returncode == 1 and where in line
          and "input activation is nan" in line and p.stdout.strip() == "", p.stderr[-500:])
    try:
        bad_step = int(line.split("step ")[1].split(":")[0])
    except (IndexError, ValueError):
        bad_step = -1
    kept = checkpoint_step(os.path.join(nan_out, "checkpoint", "checkpoint.safetensors"))
    print(f"     nan: stopped at step {bad_step}, checkpoint kept at step {kept}: {line}")
    check("nan: the last checkpoint is the last good step", bad_step > 0 and
          (kept == (bad_step - 1) // 5 * 5 if bad_step >= 6 else kept is None), f"bad step {bad_step}, checkpoint {kept}")
    check("nan: no SAE written", not os.path.exists(os.path.join(nan_out, "cfg.json")))

    # ---- errors: files whose d_in differ
    odd = os.path.join(TMP, "odd")
    shutil.copytree(parts, odd)
    write_npy(os.path.join(odd, "part9.npy"), "<f4", (10, 16), b"\0" * (10 * 16 * 4))
    p = run("train", "--data", odd, "--d-sae", 16, "--out", os.path.join(TMP, "odd_out"), ok=False)
    check("d_in mismatch: one-line error naming both files", p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
          and "part9.npy: d_in is 16, but" in p.stderr and "part0.npy has d_in 32" in p.stderr, p.stderr)
    p = run("train", "--resume", os.path.join(TMP, "parts"), ok=False)
    check("resume without a checkpoint: one-line error", p.returncode == 1 and "no checkpoint found" in p.stderr, p.stderr)

    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
