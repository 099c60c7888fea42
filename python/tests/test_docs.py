"""The Python examples of README.md and docs/python.md run as written (in a scratch directory)
and print what they claim."""
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(encoding="utf-8"), re.S)


def run_block(code, cwd):
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p


def test_readme_example(tmp_path):
    blocks = python_blocks("README.md")
    assert blocks, "README.md has no ```python block"
    p = run_block(blocks[0], tmp_path)
    fvu = float(p.stdout.strip().splitlines()[-1])
    assert 0 < fvu < 1
    assert (tmp_path / "my_sae" / "cfg.json").exists()
    assert "step 300/300" in p.stderr


def test_docs_python_worked_example(tmp_path):
    blocks = python_blocks("docs/python.md")
    assert blocks, "docs/python.md has no ```python block"
    p = run_block(blocks[0], tmp_path)
    lines = p.stdout.strip().splitlines()
    metrics = eval(lines[0], {"nan": float("nan")})  # the printed dict
    assert metrics["mmcs"] > 0.95 and metrics["fvu"] < 0.2 and 3.0 < metrics["l0"] <= 4.0, metrics
    assert abs(float(lines[1]) - metrics["l0"]) < 1e-9
    assert lines[2].startswith("libsae.Sae(architecture='topk'") and lines[2].endswith("(512, 64)")
    assert (tmp_path / "toy_sae" / "sae_weights.safetensors").exists()
