"""benchmarks/gpu_check.py's dry run: every stage of the GPU check on a tiny config on the CPU, so
that the script a GPU session runs once cannot rot while no GPU is around."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_env


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_every_stage(tmp_path):
    nanogpt = os.environ.get("TINYGPT_NANOGPT_DIR")
    source = os.environ.get("TINYGPT_SHAKESPEARE_SOURCE")
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path / "out"),
               *(["--nanogpt-dir", nanogpt] if nanogpt else []), *(["--source", source] if source else [])]
    proc = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    stages = results["stages"]
    assert results["dry_run"] and list(stages) == ["machine", "tests", "tinygpt", "nanogpt", "sampling"]
    assert {name for name, s in stages.items() if s["status"] != "ok"} <= ({"nanogpt"} if nanogpt is None else set())
    assert [c["outcome"] for c in stages["tests"]["tests"]] == ["passed"] * 8
    recipes = stages["tinygpt"]["recipes"]
    for recipe in recipes.values():
        assert recipe["curve"] and recipe["curve"][0]["iter"] == 0 and recipe["process_wall_s"] > 0
    assert [name for name, r in recipes.items() if "--dtype float16" in r["command"]] == ["tinygpt fast in float16 (auto on a T4)"]
    if nanogpt:
        assert stages["nanogpt"]["curve"][0]["iter"] == 0
    assert {(r["batch"], r["kv_cache"]) for r in stages["sampling"]["rows"]} == {(1, True), (1, False), (16, True), (16, False)}
    assert "| recipe | wall s to target |" in (tmp_path / "out" / "results.md").read_text()
