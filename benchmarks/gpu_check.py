"""One prepared check of the CUDA path, and a race with nanoGPT on the same card.

On a machine with one GPU, from the project root, with the project's environment:

    python benchmarks/gpu_check.py --source PATH/TO/input.txt --nanogpt-dir PATH/TO/nanoGPT --out gpu-check

The stages, each recorded whatever happens to the others (a failed stage is reported, the
check goes on):
1. machine: the GPU, its memory and driver, torch and CUDA versions;
2. correctness: `pytest -m gpu` (tests/test_gpu.py: bfloat16, compile, KV cache, a GPU
   checkpoint sampled on a CPU, resume, torchrun over NCCL);
3. time to quality: `tinygpt train` on tiny Shakespeare until the first val loss <= 1.47
   (`--stop-at-val-loss`), compiled, in `--dtype auto`'s precision (bfloat16 on a card that
   multiplies it in hardware, float16 on a T4 or V100): a fast recipe (Muon, rotary positions) and
   the classic baby GPT (AdamW, learned positions, nanoGPT's recipe); wall time of the whole
   process and the loss curve against time; then the fast recipe in float16 with loss scaling,
   what `--dtype auto` trains in on a card without bfloat16 (a T4), for a shorter time;
4. nanoGPT: its own train.py with config/train_shakespeare_char.py (compile on), on the same
   card, from a scratch copy of the nanoGPT folder; wall time to its first printed val <= 1.47;
5. sampling: tokens per second at batch 1 and 16, with and without the KV cache, and the peak
   GPU memory.
It writes OUT/results.json and OUT/results.md. Each stage has a time limit, so the whole check
stays under 10 minutes.

`--dry-run` runs every stage on a tiny configuration on the CPU, nanoGPT's side included, in
about a minute: tests/test_gpu_check.py runs it, so the script cannot rot while no GPU is around.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from common import cpu_name

ROOT = Path(__file__).resolve().parent.parent
TINYGPT = [sys.executable, "-m", "tinygpt_cli"]
TARGET = 1.47  # nanoGPT's baby GPT reaches val 1.4697 (its README, about 3 minutes on one A100)
DRY_TARGET = 3.3  # the tiny dry-run model gets there within its 60 steps on most seeds

# tinygpt's recipes: the flags after `train --preset baby`, and the LIMITS entry that bounds each.
FAST = ["--optimizer", "muon", "--pos-embedding", "rope", "--compile"]
RECIPES = {
    "tinygpt fast (Muon, rotary)": (FAST, "recipe"),
    "tinygpt classic (AdamW, learned positions)": (["--compile"], "recipe"),
    # What `--dtype auto` trains in on a card without bfloat16 (a T4, Colab's free GPU): float16
    # with loss scaling, forced here on any card. Bounded shorter: its speed and curve are the
    # figures, the target may or may not come within its time.
    "tinygpt fast in float16 (auto on a T4)": ([*FAST, "--dtype", "float16"], "float16"),
}
TINY_TINYGPT = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
                "--max-iters", "60", "--eval-interval", "20", "--eval-iters", "4", "--warmup-iters", "5",
                "--learning-rate", "3e-3", "--dropout", "0", "--device", "cpu"]
TINY_NANOGPT = ["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=32",
                "--block_size=32", "--batch_size=8", "--max_iters=60", "--lr_decay_iters=60", "--eval_interval=20",
                "--eval_iters=4", "--warmup_iters=5", "--learning_rate=3e-3", "--dropout=0.0", "--log_interval=20"]
# Seconds each stage may take on the GPU (the dry run's stages take a few seconds each).
LIMITS = {"tests": 120, "recipe": 100, "float16": 60, "nanogpt": 170, "sampling": 40}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for results.json and results.md")
    parser.add_argument("--source", type=Path, help="a local copy of tiny Shakespeare (input.txt)")
    parser.add_argument("--nanogpt-dir", type=Path, help="nanoGPT's files (train.py, model.py, config/, data/shakespeare_char/)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on a tiny config on the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check = GpuCheck(args.out.resolve(), args.source, args.nanogpt_dir, args.dry_run)
    results = check.run()
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print((args.out / "results.md").read_text())
    sys.exit(0 if all(s["status"] != "failed" for s in results["stages"].values()) else 1)


class GpuCheck:
    def __init__(self, out: Path, source: Path | None, nanogpt_dir: Path | None, dry_run: bool):
        self.out, self.source, self.nanogpt_dir, self.dry_run = out, source, nanogpt_dir, dry_run
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.target = DRY_TARGET if dry_run else TARGET
        self.limits = {k: 60 for k in LIMITS} if dry_run else LIMITS
        self.device = "cpu" if dry_run else "cuda"

    def run(self) -> dict:
        results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": self.dry_run, "target_val_loss": self.target,
                   "stages": {}}
        text = self.corpus()
        stages = [("machine", self.machine), ("tests", self.tests), ("tinygpt", lambda: self.tinygpt(text)),
                  ("nanogpt", lambda: self.nanogpt(text)), ("sampling", self.sampling)]
        try:
            for name, stage in stages:
                print(f"== {name}", flush=True)
                t0 = time.perf_counter()
                try:
                    record = {"status": "ok", **stage()}
                except Skipped as e:
                    record = {"status": "skipped", "reason": str(e)}
                except Exception as e:  # one stage failing must not lose the others' results
                    record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                record["stage_seconds"] = round(time.perf_counter() - t0, 1)
                results["stages"][name] = record
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return results

    # --- the stages ---------------------------------------------------------------------
    def machine(self) -> dict:
        import torch

        info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "gpus": torch.cuda.device_count(), "driver": nvidia_smi("driver_version")}
        elif not self.dry_run:
            raise RuntimeError("no CUDA GPU is visible to torch")
        return info

    def tests(self) -> dict:
        junit = self.out / "gpu_tests.xml"
        env = {**os.environ, "TINYGPT_TEST_DEVICE": self.device}
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   str(ROOT / "tests" / "test_gpu.py")]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=self.limits["tests"])
        cases = junit_cases(junit)
        if proc.returncode != 0 or not cases:
            raise RuntimeError(f"pytest exited with {proc.returncode}: {proc.stdout[-1500:]}")
        return {"tests": cases}

    def tinygpt(self, text: Path) -> dict:
        data = self.scratch / "data"
        run_checked(TINYGPT + ["prepare", "text", str(text), "--data-dir", str(data)], cwd=self.scratch)
        recipes = {}
        for name, (flags, limit) in RECIPES.items():
            if self.dry_run:  # compiling on a CPU takes most of a minute: the tests compile once
                flags = [f for f in flags if f != "--compile"] + TINY_TINYGPT + ([] if "--dtype" in flags else ["--dtype", "float32"])
            run = self.scratch / f"run-{len(recipes)}"
            command = TINYGPT + ["train", "--preset", "baby", *flags, "--data-dir", str(data),
                                 "--stop-at-val-loss", str(self.target), "--out", str(run)]
            wall, timed_out = timed_process(command, self.scratch, self.limits[limit])
            curve = [{"iter": r["iter"], "elapsed_s": round(r["elapsed"], 2), "val_loss": r["val_loss"]}
                     for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
            reached = next((r for r in curve if r["val_loss"] <= self.target), None)
            recipes[name] = {"command": " ".join(["tinygpt", *command[3:]]), "process_wall_s": round(wall, 1),
                             "timed_out": timed_out, "reached_target": reached is not None,
                             "wall_s_to_target": round(wall, 1) if reached and not timed_out else None,
                             "iters_to_target": reached["iter"] if reached else None, "curve": curve}
        return {"recipes": recipes}

    def nanogpt(self, text: Path) -> dict:
        if self.nanogpt_dir is None or not (self.nanogpt_dir / "train.py").exists():
            raise Skipped("no nanoGPT folder (--nanogpt-dir)")
        folder = self.scratch / "nanoGPT"
        shutil.copytree(self.nanogpt_dir, folder)
        data = folder / "data" / "shakespeare_char"
        shutil.copy(text, data / "input.txt")
        stub = self.scratch / "stub"  # prepare.py imports requests, only to download what is already there
        stub.mkdir()
        (stub / "requests.py").write_text("def get(url):\n    raise RuntimeError('offline: input.txt is already there')\n")
        run_checked([sys.executable, "prepare.py"], cwd=data, env={**os.environ, "PYTHONPATH": str(stub)})
        command = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--compile=True", f"--out_dir={folder / 'out'}",
                   *(TINY_NANOGPT if self.dry_run else [])]
        evals, wall, timed_out = nanogpt_evals(command, folder, self.target, self.limits["nanogpt"])
        reached = next((e for e in evals if e["val_loss"] <= self.target), None)
        return {"command": " ".join(["python", *command[1:]]), "timed_out": timed_out, "reached_target": reached is not None,
                "wall_s_to_target": reached["wall_s"] if reached else None, "iters_to_target": reached["iter"] if reached else None,
                "process_wall_s": round(wall, 1), "curve": evals}

    def sampling(self) -> dict:
        import torch

        from tinygpt_cli.config import resolve_config
        from tinygpt_cli.model import GPT

        shape = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32} if self.dry_run else {}
        config = resolve_config("baby", None, {**shape, "vocab_size": 65})
        device = torch.device(self.device)
        model = GPT(config.model).to(device).eval()
        new_tokens = 20 if self.dry_run else 200
        rows = []
        for batch in (1, 16):
            for kv_cache in (True, False):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                tokens_per_s = decode_tokens_per_s(model, batch, new_tokens, kv_cache)
                peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
                rows.append({"batch": batch, "kv_cache": kv_cache, "tokens_per_s": round(tokens_per_s, 1),
                             "peak_gpu_memory_mib": None if peak is None else round(peak, 1)})
        return {"model": f"baby preset shape ({config.model.n_layer} layers, {config.model.n_embd} wide), random weights, float32, greedy",
                "new_tokens": new_tokens, "rows": rows}

    def corpus(self) -> Path:
        """The text both sides train on: the given copy of tiny Shakespeare, or in a dry run
        without one, a made-up text of the same kind."""
        if self.source is not None:
            return self.source.resolve()
        if not self.dry_run:
            raise SystemExit("--source PATH/TO/input.txt is needed (tiny Shakespeare)")
        rng = random.Random(0)
        words = ["thou", "art", "the", "king", "and", "my", "lord", "shall", "not", "love", "what", "is", "this", "good", "night"]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?") for _ in range(4000)]
        path = self.scratch / "input.txt"
        path.write_text("\n".join(lines) + "\n")
        return path


class Skipped(Exception):
    """A stage that cannot run here, and why."""


# --- helpers -------------------------------------------------------------------------------

def nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def run_checked(command: list[str], cwd: Path, env: dict | None = None) -> None:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}: {proc.stderr[-1500:]}")


def timed_process(command: list[str], cwd: Path, limit: float) -> tuple[float, bool]:
    """Wall seconds of a process, start to exit (or to `limit`, when it is stopped there)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, True
    if proc.returncode != 0:
        raise RuntimeError(f"tinygpt train exited with {proc.returncode}: {proc.stderr[-1500:]}")
    return time.perf_counter() - t0, False


def nanogpt_evals(command: list[str], cwd: Path, target: float, limit: float) -> tuple[list[dict], float, bool]:
    """nanoGPT's printed evaluations ("step N: train loss X, val loss Y"), each with the wall
    time since its process started; the process is stopped at the first val <= target."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    evals, tail, timed_out = [], [], False
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
            wall = time.perf_counter() - t0
            if line.startswith("step ") and "val loss" in line:
                step = int(line.split(":")[0].split()[1])
                val = float(line.rsplit("val loss", 1)[1].strip().rstrip(","))
                evals.append({"iter": step, "wall_s": round(wall, 2), "val_loss": val})
                if val <= target:
                    break
            if wall > limit:
                timed_out = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not evals:
        raise RuntimeError(f"nanoGPT printed no evaluation (exit {proc.returncode}): {''.join(tail)[-1500:]}")
    return evals, time.perf_counter() - t0, timed_out


def decode_tokens_per_s(model, batch: int, new_tokens: int, kv_cache: bool) -> float:
    """Greedy decoding of `new_tokens` for `batch` sequences, the operations `generate` runs per
    token (one position with the KV cache, the whole window without)."""
    import torch

    from tinygpt_cli.model import KVCache

    device = next(model.parameters()).device
    block = model.config.block_size

    def decode() -> None:
        with torch.inference_mode():
            idx = torch.zeros((batch, 1), dtype=torch.long, device=device)
            cache = KVCache(model.config, batch, device, torch.float32, 1 + new_tokens) if kv_cache else None
            for _ in range(new_tokens):
                logits, _ = model(idx[:, -1:], cache=cache) if cache is not None else model(idx[:, -block:])
                idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    decode()  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    decode()
    return batch * new_tokens / (time.perf_counter() - t0)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def junit_cases(path: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0))})
    return cases


def markdown(results: dict) -> str:
    stages = results["stages"]
    lines = [f"# GPU check, {results['date']}" + (" (dry run on the CPU)" if results["dry_run"] else ""), ""]
    machine = stages.get("machine", {})
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['status']}{': ' + s.get('reason', s.get('error', '')) if s['status'] != 'ok' else ''} | {s['stage_seconds']} |"
              for name, s in stages.items()]
    if machine.get("status") == "ok":
        lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k not in ("status", "stage_seconds"))]
    if stages.get("tests", {}).get("status") == "ok":
        lines += ["", "| test | outcome | seconds |", "|---|---|---|"]
        lines += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} |" for c in stages["tests"]["tests"]]
    races = dict(stages.get("tinygpt", {}).get("recipes", {}))
    if stages.get("nanogpt", {}).get("status") == "ok":
        races["nanoGPT train.py (compile)"] = stages["nanogpt"]
    if races:
        baseline = races.get("nanoGPT train.py (compile)", {}).get("wall_s_to_target")
        lines += ["", f"Time to the first val loss <= {results['target_val_loss']} (whole process, evaluation included):", "",
                  "| recipe | wall s to target | iterations | last val | × nanoGPT |", "|---|---|---|---|---|"]
        for name, r in races.items():
            wall = r["wall_s_to_target"]
            last = f"{r['curve'][-1]['val_loss']:.4f}" if r["curve"] else "-"
            ratio = f"{baseline / wall:.2f}" if baseline and wall else "-"
            shown = f"{wall}" if wall is not None else f"not reached in {r['process_wall_s']} s"
            lines.append(f"| {name} | {shown} | {r['iters_to_target'] or '-'} | {last} | {ratio} |")
    if stages.get("sampling", {}).get("status") == "ok":
        s = stages["sampling"]
        lines += ["", f"Sampling, {s['model']}, {s['new_tokens']} new tokens:", "",
                  "| batch | KV cache | tokens/s | peak GPU MiB |", "|---|---|---|---|"]
        lines += [f"| {r['batch']} | {'on' if r['kv_cache'] else 'off'} | {r['tokens_per_s']:,} | {r['peak_gpu_memory_mib'] or '-'} |"
                  for r in s["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
