"""`tinygpt serve` under 1, 8 and 32 clients at once, against `generate` in one process.

For each model (the cpu preset's shape, 4/4/128, and the baby GPT, 6/6/384, both with a 65-char
vocabulary; speed does not depend on what the weights learned, so they are fresh), it measures:
- `generate`'s steady state: tokens per second once the first token came, in this process, with
  the threads `init_process` gives (what `tinygpt generate` runs with);
- the server (a `tinygpt serve` process, its default threads) through the `openai` client,
  streamed: each client's first-token latency, one client's tokens per second once its first
  token came, and all clients' tokens together per second of wall time; and one client's
  tokens per second not streamed (one answer at the end), start to end.
Clients send prompts of one length (they step as one batch), and at 8 clients also prompts of 8
lengths (8 groups that take turns: no batching). The two are alternated in one run, `--repeats`
times, and the medians reported with the load average. The server's thread policy looks at the
machine's load once a second, and the client's own share of the 2 cores counts as load: the
benchmark pauses after its own `generate` so that the server does not see it.

Goals (issue #30): one client at least 90% of generate's steady state; 8 clients together at
least 2x one client.

Usage: python benchmarks/bench_serve.py [--repeats 3] [--tokens 200]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import TINYGPT, median, report
from tinygpt_cli.checkpoint import Checkpoint, model_weights, save_checkpoint
from tinygpt_cli.config import PRESETS, ModelConfig
from tinygpt_cli.data.vocab import Vocabulary
from tinygpt_cli.model import GPT
from tinygpt_cli.sampling import generate, set_sampling_precision
from tinygpt_cli.system.process import init_process
from tinygpt_cli.system.threads import CHECK_EVERY_S

PROMPT = "ABCDEFGHIJKLMNOP"
VOCAB = Vocabulary(tuple(chr(c) for c in range(58, 58 + 65)))  # 65 printable characters, "A" among them


def make_run(folder: Path, preset: str) -> GPT:
    shape = {k: PRESETS[preset][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB.size, **shape)).eval()
    folder.mkdir(parents=True)
    save_checkpoint(folder / "best.safetensors", Checkpoint("best", model.config, VOCAB, 0, model_weights(model)))
    return model


def generate_steady(model: GPT, tokens: int) -> float:
    """generate's tokens per second after its first token."""
    ids = VOCAB.encode(PROMPT)
    stream = generate(model, ids, tokens + 1, temperature=1.0, seed=1)
    next(stream)
    t0 = time.perf_counter()
    n = sum(1 for _ in stream)
    return n / (time.perf_counter() - t0)


def start_server(runs: Path) -> tuple[subprocess.Popen, str]:
    log = runs / "serve.log"
    proc = subprocess.Popen(TINYGPT + ["serve", "--runs-dir", str(runs), "--port", "0"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while "(Ctrl-C" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, re.search(r"OpenAI API  (\S+)", log.read_text()).group(1)


def clients(client, model: str, n: int, tokens: int, same_length: bool) -> dict:
    """`n` streamed requests started together: first-token latencies, one client's rate, the total rate."""
    start = threading.Barrier(n + 1)
    results: list[tuple[float, float, int]] = [None] * n  # (first token, end, tokens), from the barrier

    def one(i: int) -> None:
        prompt = PROMPT if same_length else PROMPT[: 4 + i]
        start.wait()
        t0 = time.perf_counter()
        first, count = None, 0
        for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=tokens, seed=i, temperature=1.0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter() - t0
                count += len(chunk.choices[0].text)  # one character per token; a chunk may hold several
        results[i] = (first, time.perf_counter() - t0, count)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    firsts = sorted(r[0] for r in results)
    return {"first_token_s": median(firsts), "first_token_max_s": firsts[-1],
            "one_client_tokens_per_s": median([(r[2] - 1) / (r[1] - r[0]) for r in results]),
            "total_tokens_per_s": sum(r[2] for r in results) / wall}


def whole(client, model: str, tokens: int) -> float:
    """One client's tokens per second, not streamed (start to end)."""
    t0 = time.perf_counter()
    client.completions.create(model=model, prompt=PROMPT, max_tokens=tokens, seed=0, temperature=1.0)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    from openai import OpenAI

    init_process()
    cases = [(1, True), (8, True), (8, False), (32, True)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        models = {preset: make_run(runs / preset, preset) for preset in ("cpu", "baby")}
        for model in models.values():
            set_sampling_precision(model, "auto")
        proc, url = start_server(runs)
        try:
            client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            for preset, model in models.items():
                clients(client, preset, 1, 20, True)  # loads the model and warms up
                measured: dict = {"generate": [], "whole": [], **{case: [] for case in cases}}
                loads = []
                for _ in range(args.repeats):
                    measured["generate"].append(generate_steady(model, args.tokens))
                    time.sleep(2 * CHECK_EVERY_S)  # the server's thread policy then sees this process idle again
                    measured["whole"].append(whole(client, preset, args.tokens))
                    for case in cases:
                        measured[case].append(clients(client, preset, *case[:1], args.tokens, case[1]))
                    loads.append(os.getloadavg()[0])
                steady = median(measured["generate"])
                rows.append({"model": preset, "clients": "generate", "prompts": "-", "first_token_s": None,
                             "one_client_tokens_per_s": steady, "total_tokens_per_s": steady, "vs_generate": 1.0,
                             "load_avg": median(loads)})
                rate = median(measured["whole"])
                rows.append({"model": preset, "clients": 1, "prompts": "not streamed", "first_token_s": None,
                             "one_client_tokens_per_s": rate, "total_tokens_per_s": rate, "vs_generate": rate / steady,
                             "load_avg": median(loads)})
                one = None
                for case in cases:
                    row = {k: median([m[k] for m in measured[case]]) for k in measured[case][0]}
                    one = one or row["total_tokens_per_s"]
                    rows.append({"model": preset, "clients": case[0], "prompts": "one length" if case[1] else "8 lengths",
                                 "first_token_s": row["first_token_s"], "one_client_tokens_per_s": row["one_client_tokens_per_s"],
                                 "total_tokens_per_s": row["total_tokens_per_s"],
                                 "vs_generate": row["one_client_tokens_per_s"] / steady if case[0] == 1 else row["total_tokens_per_s"] / one,
                                 "load_avg": median(loads)})
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    report("serve", rows, {"tokens_per_request": args.tokens, "repeats": args.repeats,
                           "vs_generate": "1 client: its tokens/s over generate's; more clients: their total over 1 client's total",
                           "command": " ".join([sys.executable, *sys.argv])})


if __name__ == "__main__":
    main()
