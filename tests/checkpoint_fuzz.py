"""Crafted-file fuzzer for checkpoints: every command that opens one, on every mutation.

Run by `test_untrusted.py` in a subprocess under a memory limit (RLIMIT_AS), so that a large
allocation fails instead of passing unnoticed:

    python checkpoint_fuzz.py RUN DATA_DIR WORK SEED COUNT

RUN is a finished run folder, DATA_DIR its dataset. The mutations are the issue's hand-made
cases, then COUNT seeded random ones over the header bytes, the metadata values and the tensor
table. Each mutated file goes through `params`, `generate`, `eval` and `resume` (the real
entry point, in this process). One JSON line per command is printed: the mutation, the command,
its exit code, its stderr, whether its stdout equals that of the intact file, and whether the
mutation kept the digests valid (a file that then loads is a different but genuine checkpoint).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import struct
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tinygpt_cli.checkpoint import metadata_digest, tensor_digest
from tinygpt_cli.cli.app import main

ODD_VALUES = [-5, 0, -1, 2**63, 10**30, 1e308, -0.0, 0.5, "x", "", [], {}, None, True, False, [1, 2], {"a": 1}]
DEEP = "[" * 100_000 + "]" * 100_000


def read_parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], recompute: bool) -> None:
    meta = dict(meta)
    if recompute:  # what a careful forger (or a buggy writer) would do: digests that match
        meta["digest"] = json.dumps(tensor_digest(tensors))
        meta["metadata_digest"] = json.dumps(metadata_digest(meta))
    save_file(tensors, str(path), metadata=meta)


def split_file(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def set_nested(meta: dict[str, str], key: str, path: list, value) -> None:
    obj = json.loads(meta[key])
    target = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    meta[key] = json.dumps(obj)


# --- the cases, by hand --------------------------------------------------------------

def crafted(original: Path, out: Path) -> list[tuple[str, bool]]:
    """Write the hand-made mutations into `out`; return (file name, digests kept valid)."""
    tensors, meta = read_parts(original)
    cases: list[tuple[str, bool]] = []

    def case(name: str, t: dict, m: dict, recompute: bool) -> None:
        write(out / name, t, m, recompute)
        cases.append((name, recompute))

    first_moment = sorted(k for k in tensors if k.endswith(".exp_avg"))[0]
    bad = dict(tensors, **{first_moment: torch.zeros(3, 5)})
    case("optim_wrong_shape.safetensors", bad, meta, True)
    big = dict(meta)
    set_nested(big, "model_config_json", ["n_layer"], 16)
    set_nested(big, "model_config_json", ["n_embd"], 4096)
    set_nested(big, "model_config_json", ["n_head"], 16)
    case("claims_a_big_model.safetensors", tensors, big, True)
    for field, value in (("n_head", 1), ("norm", "rmsnorm"), ("activation", "relu2")):
        changed = dict(meta)
        set_nested(changed, "model_config_json", [field], value)
        case(f"changed_{field}.safetensors", tensors, changed, False)
    vocab = json.loads(meta["vocab"])
    vocab["chars"] = ["`" if c == "a" else c for c in vocab["chars"]]
    flipped = dict(meta, vocab=json.dumps(vocab))
    case("vocab_bit_flip.safetensors", tensors, flipped, False)
    case("negative_iteration.safetensors", tensors, dict(meta, iteration="-5"), True)
    case("rng_data_missing.safetensors", {k: v for k, v in tensors.items() if k != "rng.data"}, meta, True)
    case("deeply_nested.safetensors", tensors, dict(meta, progress=DEEP), True)
    nan = dict(tensors, **{"model.tok_emb.weight": torch.full_like(tensors["model.tok_emb.weight"], float("nan"))})
    case("nan_weights.safetensors", nan, meta, True)
    out_of_range = dict(meta)
    set_nested(out_of_range, "train_config", ["learning_rate"], -1)
    case("train_config_out_of_range.safetensors", tensors, out_of_range, True)
    step_state = sorted(k for k in tensors if k.endswith(".step"))[0]
    case("optim_step_in_the_future.safetensors", dict(tensors, **{step_state: torch.tensor(1e9)}), meta, True)
    groups = json.loads(meta["optimizer_param_groups"])
    groups[0]["fused"] = not groups[0].get("fused", False)
    case("optim_group_flag.safetensors", tensors, dict(meta, optimizer_param_groups=json.dumps(groups)), True)

    # 20 GB on disk (sparse) whose tensor table and size agree: refused before reading.
    header, data = split_file(original.read_bytes())
    rows = 20 * 2**30 // (4 * header["model.tok_emb.weight"]["shape"][1])
    emb = header["model.tok_emb.weight"]
    grow = rows * emb["shape"][1] * 4 - (emb["data_offsets"][1] - emb["data_offsets"][0])
    for entry in header.values():
        if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] >= emb["data_offsets"][1]:
            entry["data_offsets"] = [entry["data_offsets"][0] + grow, entry["data_offsets"][1] + grow]
    emb["shape"][0] = rows
    emb["data_offsets"][1] += grow
    sparse = out / "sparse_20gb.safetensors"
    with open(sparse, "wb") as f:
        head = join_file(header, b"")
        f.write(head)
        f.truncate(len(head) + len(data) + grow)
    cases.append((sparse.name, False))
    return cases


# --- seeded random mutations -----------------------------------------------------------------

def random_mutation(rng: random.Random, original: Path, target: Path) -> bool:
    """Write one random mutation of `original` to `target`; return whether digests were recomputed."""
    raw = original.read_bytes()
    kind = rng.choice(["header_bits", "meta_value", "nested_value", "tensor", "table", "tail"])
    if kind == "header_bits":
        (n,) = struct.unpack("<Q", raw[:8])
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(0, 8 + n)] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        return False
    if kind == "tail":
        cut = rng.randrange(len(raw))
        target.write_bytes(raw[:cut] if rng.random() < 0.5 else raw + bytes(rng.randint(1, 64)))
        return False
    tensors, meta = read_parts(original)
    recompute = rng.random() < 0.7
    if kind == "meta_value":
        key = rng.choice(sorted(meta))
        meta[key] = DEEP if rng.random() < 0.05 else json.dumps(rng.choice(ODD_VALUES))
    elif kind == "nested_value":
        key = rng.choice([k for k in ("model_config_json", "train_config", "progress", "vocab", "optimizer_param_groups") if k in meta])
        obj = json.loads(meta[key])
        path: list = []
        while isinstance(obj, (dict, list)) and obj:
            step = rng.choice(sorted(obj)) if isinstance(obj, dict) else rng.randrange(len(obj))
            path.append(step)
            obj = obj[step]
        if path:
            set_nested(meta, key, path, rng.choice(ODD_VALUES))
    elif kind == "tensor":
        name = rng.choice(sorted(tensors))
        action = rng.choice(["drop", "reshape", "retype", "extra"])
        if action == "drop":
            del tensors[name]
        elif action == "reshape":
            tensors[name] = torch.zeros(rng.randint(0, 5), rng.randint(1, 70))
        elif action == "retype":
            tensors[name] = tensors[name].to(rng.choice([torch.float16, torch.int64, torch.uint8, torch.float64]))
        else:
            tensors[f"model.extra{rng.randint(0, 9)}"] = torch.zeros(2)
    else:  # the table of a valid file, edited without touching the data
        header, data = split_file(raw)
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        field = rng.choice(["dtype", "shape", "data_offsets"])
        header[name][field] = rng.choice([["F32"], "F16", "I64", "X", [10**12], [0, 10**12], [-1, 4], [1, 2, 3], None, 7])
        target.write_bytes(join_file(header, data))
        return False
    write(target, tensors, meta, recompute)
    return recompute


# --- running the commands --------------------------------------------------------------------

def run_command(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["tinygpt", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - whatever escapes is what the test reports
            code, err = -1, io.StringIO(f"escaped: {type(e).__name__}: {e}")
    return code, out.getvalue(), err.getvalue()


def commands(checkpoint: Path, data_dir: Path, run_copy: Path) -> dict[str, list[str]]:
    return {
        "params": ["params", "--checkpoint", str(checkpoint), "--json"],
        "generate": ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "8", "--seed", "1", "--dtype", "float32"],
        "eval": ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--json"],
        "resume": ["resume", "--run", str(run_copy), "--max-iters", "31"],
    }


def fresh_run_copy(run: Path, checkpoint: Path, work: Path) -> Path:
    copy = work / "resumed"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(run / name, copy / name)
    os.link(checkpoint, copy / "last.safetensors")  # a link: the sparse 20 GB case is never read
    return copy


def main_fuzz(run: Path, data_dir: Path, work: Path, seed: int, count: int) -> None:
    os.environ["COLUMNS"] = "200"
    original = run / "last.safetensors"
    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    reference = {name: run_command(args)[1] for name, args in commands(original, data_dir, fresh_run_copy(run, original, work)).items()}
    cases = crafted(original, files) if seed == 0 else []
    rng = random.Random(seed)
    for i in range(count):
        name = f"random_{seed}_{i}.safetensors"
        cases.append((name, random_mutation(rng, original, files / name)))
    for name, recomputed in cases:
        path = files / name
        changed = not path.exists() or path.stat().st_size != original.stat().st_size or path.read_bytes() != original.read_bytes()
        for command, args in commands(path, data_dir, fresh_run_copy(run, path, work)).items():
            code, out, err = run_command(args)
            same = out.replace(str(path), str(original)) == reference[command]
            print(json.dumps({"mutation": name, "command": command, "code": code, "stderr": err,
                              "same_output": same, "recomputed": recomputed, "changed": changed}), flush=True)


if __name__ == "__main__":
    main_fuzz(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
