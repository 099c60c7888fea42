#!/usr/bin/env python3
"""`sae train` stops cleanly on SIGINT and SIGTERM: after the step in progress, with a
checkpoint of that step when --checkpoint-every is on (named in the message), nothing saved
as if finished, exit 130 / 143; the checkpoint resumes to the same weights as an
uninterrupted run.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory).
"""
import os
import signal
import subprocess
import sys
import tempfile

from saetest import finish, SAE, check, failures, last_json, run

TMP = tempfile.mkdtemp(prefix="sae_signals_", dir=os.environ.get("SAE_TMP") or None)


def interrupt(args, sig):
    """Starts `sae train ARGS`, sends SIG after its second progress line; (rc, stderr)."""
    p = subprocess.Popen([SAE, "train", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    err = []
    for line in p.stderr:
        err.append(line)
        if line.startswith("step "):
            seen += 1
            if seen == 2:
                p.send_signal(sig)
                break
    out, rest = p.communicate(timeout=120)
    return p.returncode, "".join(err) + rest, out


def main():
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 16, "--features", 32, "--samples", 5000, "--seed", 2)
    common = ["--data", toy, "--arch", "topk", "--d-sae", 64, "--k", 4, "--batch", 256, "--seed", 1, "--threads", 2,
              "--log-every", 5]

    # SIGINT with checkpointing: checkpoint of the step it stopped after, exit 130
    run_dir = os.path.join(TMP, "run")
    rc, err, out = interrupt([*common, "--steps", 1000000, "--checkpoint-every", 100000, "--out", run_dir], signal.SIGINT)
    ckpt = os.path.join(run_dir, "checkpoint", "checkpoint.safetensors")
    check("SIGINT: exit 130", rc == 130, f"rc={rc} {err[-300:]}")
    check("SIGINT: message names the step and the checkpoint",
          "SIGINT: training interrupted after step" in err and ckpt in err, err[-300:])
    check("SIGINT: checkpoint written", os.path.exists(ckpt))
    check("SIGINT: nothing saved as if finished", not os.path.exists(os.path.join(run_dir, "cfg.json")))
    check("SIGINT: no JSON result on stdout", out.strip() == "", out)

    # SIGTERM without checkpointing: exit 143, says no checkpoint was written
    rc, err, _ = interrupt([*common, "--steps", 1000000, "--out", os.path.join(TMP, "term")], signal.SIGTERM)
    check("SIGTERM: exit 143", rc == 143, f"rc={rc} {err[-300:]}")
    check("SIGTERM: says no checkpoint was written", "no checkpoint" in err, err[-300:])

    # A checkpoint written on interruption resumes to the uninterrupted run's weights.
    steps = 300
    ref = os.path.join(TMP, "ref")
    run("train", *common, "--steps", steps, "--out", ref)
    part = os.path.join(TMP, "part")
    rc, err, _ = interrupt([*common, "--steps", steps, "--checkpoint-every", 1000, "--out", part], signal.SIGINT)
    check("interrupted short run: exit 130", rc == 130, f"rc={rc} {err[-300:]}")
    j = last_json(run("train", "--resume", part))
    check("resumed from the interruption's step", 0 < j.get("resumed_from_step", 0) < steps, str(j))
    same = open(os.path.join(ref, "sae_weights.safetensors"), "rb").read() == \
        open(os.path.join(part, "sae_weights.safetensors"), "rb").read()
    check("resumed weights bit-identical to the uninterrupted run", same)

    return finish()


if __name__ == "__main__":
    sys.exit(main())
