"""`tinygpt prepare text` at growing corpus sizes: wall time, MB/s and peak RSS, with a BPE.

A corpus of SIZE MB is made by repeating tiny Shakespeare, then prepared with a 4,096-token
byte-level BPE (trained on a sample) in a fresh process whose peak RSS is measured. The raw
encoding speed of the libraries alone, on 20 MB of the same text, is reported beside it: the
tiktoken encoder tinygpt uses when it gives the library's ids, and Hugging Face `tokenizers`.
Target (issue): at least 5 MB/s, and at most 1 GB of RSS whatever the size.

Usage: python benchmarks/bench_prepare.py --source PATH/TO/input.txt [--sizes 100,500,2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

MEASURE = ("import resource, subprocess, sys; "
           "done = subprocess.run([sys.executable, '-m', 'tinygpt_cli', *sys.argv[1:]], stdout=subprocess.DEVNULL); "
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_corpus(source: Path, path: Path, megabytes: int) -> int:
    text = source.read_bytes()
    with open(path, "wb") as f:
        written = 0
        while written < megabytes * 2**20:
            f.write(text)
            written += len(text)
    return written


def library_speeds(source: Path) -> dict:
    from tinygpt_cli.data.tokenizer import BPETokenizer, split_for_encoding

    text = source.read_text(encoding="utf-8")
    tokenizer = BPETokenizer.train([text], 4096)
    big = text * max(1, 20 * 2**20 // len(text))
    pieces = split_for_encoding(big)
    t0 = time.perf_counter()
    tokenizer._fast.encode_ordinary_batch(pieces, num_threads=os.cpu_count() or 1)
    t1 = time.perf_counter()
    tokenizer.hf.encode_batch(pieces, add_special_tokens=False)
    t2 = time.perf_counter()
    mb = len(big.encode("utf-8")) / 1e6
    return {"tiktoken_mb_per_s": round(mb / (t1 - t0), 2), "tokenizers_mb_per_s": round(mb / (t2 - t1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sizes", default="100,500,2000", help="corpus sizes in MB")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for size in map(int, args.sizes.split(",")):
            corpus = Path(tmp) / f"corpus{size}.txt"
            n_bytes = make_corpus(args.source, corpus, size)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", MEASURE, "prepare", "text", str(corpus), "--name", f"c{size}",
                                   "--data-dir", str(Path(tmp) / f"data{size}"), "--tokenizer", "bpe", "--vocab-size", "4096"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            code, peak_kib = map(int, proc.stdout.split())
            if code:
                raise SystemExit(f"prepare failed: {proc.stderr}")
            rows.append({"corpus_mb": round(n_bytes / 1e6), "wall_s": round(wall, 1), "mb_per_s": round(n_bytes / 1e6 / wall, 2),
                         "peak_rss_mib": round(peak_kib / 1024), "load_average_1min": round(os.getloadavg()[0], 2)})
            corpus.unlink()
    report("prepare", rows, {"tokenizer": "bpe 4096", "library_encode_speed_20mb": library_speeds(args.source)})


if __name__ == "__main__":
    main()
