"""Crafted tokenizer files and transformers folders: JSON mutations (keys gone, types changed, ids
duplicated or out of order, nesting), and files that are no files (FIFOs, folders, endless
devices, dangling or looping links). `prepare text --tokenizer` and `train --init-from` answer
each with a result or one `Error:` line, in time, and leave the crafted files as they were."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_error, make_text

from tinygpt_cli.checkpoint import load_checkpoint
from tinygpt_cli.interop.export import export_hf
from tinygpt_cli.interop.hf import char_tokenizer_json
from tinygpt_cli.data.tokenizer import BPETokenizer
from tinygpt_cli.data.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("torch_one_thread", "alarm")

HOSTILE_JSON = [None, True, False, 0, -1, 2**63, 2**70, 1.5, -0.0, 1e308, "", "x" * 1000, "\u0000", [], {}, [[]], {"a": {}}]
MUTATIONS_PER_FILE = 30


def paths_of(node, prefix=(), limit=4000) -> list[tuple]:
    """The paths (keys and indexes) of the nodes of a JSON tree, the root excluded."""
    found = []
    stack = [(prefix, node)]
    while stack and len(found) < limit:
        at, value = stack.pop()
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in children:
            found.append((*at, key))
            stack.append(((*at, key), child))
    return found


def parent_of(tree, path: tuple):
    for key in path[:-1]:
        tree = tree[key]
    return tree


def mutate(tree, rng: random.Random):
    """One to three random changes to a copy of a JSON tree."""
    tree = copy.deepcopy(tree)
    for _ in range(rng.randint(1, 3)):
        paths = paths_of(tree)
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = parent_of(tree, path), path[-1]
        ints = [k for k, v in parent.items() if type(v) is int] if isinstance(parent, dict) else []
        op = rng.choice(["delete", "replace", "replace", "id", "add"])
        if op == "id" and len(ints) > 1:  # a vocabulary: a duplicate, a gap, a negative or a swapped id
            a, b = rng.sample(ints, 2)
            choice = rng.randrange(4)
            if choice == 0:
                parent[a] = parent[b]
            elif choice == 1:
                parent[a] = max(parent.values(), key=lambda v: v if type(v) is int else -1) + rng.randint(1, 50)
            elif choice == 2:
                parent[a] = -rng.randint(1, 5)
            else:
                parent[a], parent[b] = parent[b], parent[a]
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[f"crafted{rng.randrange(99)}"] = rng.choice(HOSTILE_JSON)
        else:
            parent[key] = copy.deepcopy(rng.choice(HOSTILE_JSON))
    return tree


def write_crafted(path: Path, how: str, original: bytes) -> None:
    """A file that is not what its name says (`how`), in place of `path`."""
    path.unlink(missing_ok=True)
    if how == "fifo":
        os.mkfifo(path)
    elif how == "folder":
        path.mkdir()
    elif how == "endless":
        path.symlink_to("/dev/zero")
    elif how == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif how == "loop":
        path.symlink_to(path)
    else:
        path.write_bytes({"empty": b"", "null": b"null", "truncated": original[: len(original) // 2],
                          "not-utf8": b"\xff\xfe" + original[:100], "nested-list": b"[" * 200_000 + b"]" * 200_000,
                          "nested-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "bom": b"\xef\xbb\xbf" + original,
                          "garbage": bytes(random.Random(len(original)).randrange(256) for _ in range(4096))}[how])


FILE_KINDS = ["fifo", "folder", "endless", "dangling", "loop", "empty", "null", "truncated", "not-utf8", "nested-list",
              "nested-object", "bom", "garbage"]


# --- tokenizer files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_texts() -> dict[str, str]:
    text = make_text(20_000, seed=11)
    return {"bpe": BPETokenizer.train([text], 300).to_json(), "char": char_tokenizer_json(Vocabulary.from_text(text))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(make_text(20_000, seed=11), encoding="utf-8")
    return path


def assert_result_or_one_error(code: int, err: str) -> None:
    if code:
        assert_one_error(code, err, 1 if code == 1 else 2)


TOKENIZER_CASES = [(kind, f"json-{i}") for kind in ("bpe", "char") for i in range(MUTATIONS_PER_FILE)] + \
                  [(kind, how) for kind in ("bpe", "char") for how in FILE_KINDS]


@pytest.mark.parametrize("kind, how", TOKENIZER_CASES, ids=[f"{k}-{h}" for k, h in TOKENIZER_CASES])
def test_a_crafted_tokenizer_file_prepares_or_fails_in_one_line(tinygpt, tokenizer_texts, corpus, tmp_path, kind, how):
    path = tmp_path / "tokenizer.json"
    original = tokenizer_texts[kind]
    if how.startswith("json-"):
        path.write_text(json.dumps(mutate(json.loads(original), random.Random(f"{kind}{how}"))))
    else:
        write_crafted(path, how, original.encode())
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    code, _, err = tinygpt("prepare", "text", corpus, "--tokenizer", path, "--data-dir", tmp_path / "data")
    assert_result_or_one_error(code, err)
    if code == 0:  # it loaded: the dataset it made decodes back to the text
        from tinygpt_cli.data.dataset import load_dataset

        dataset = load_dataset(tmp_path / "data")
        assert dataset.tokenizer.decode(dataset.train[:50].tolist())
    if before is not None:
        assert path.read_bytes() == before


# --- transformers folders ------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "hf"
    export_hf(load_checkpoint(tiny_run / "best.safetensors"), tiny_run / "best.safetensors", folder, "tinygpt train")
    return folder


@pytest.fixture(scope="module")
def exported_dataset(exported, corpus, tmp_path_factory) -> Path:
    """The corpus prepared with the export's own tokenizer, so that an intact export trains on it."""
    from tinygpt_cli.data.prepare import prepare_text
    from tinygpt_cli.interop.pretrained import tokenizer_choice

    folder = tmp_path_factory.mktemp("exported_data") / "data"
    prepare_text(corpus, folder, "text", 0.1, tokenizer_choice(str(exported), None))
    return folder


FOLDER_FILES = ["config.json", "tokenizer.json", "model.safetensors"]
# Each hostile JSON value in each key of config.json that tinygpt reads: on top of the random mutations.
CONFIG_KEYS = ["model_type", "hidden_act", "hidden_size", "num_attention_heads", "max_position_embeddings", "rope_parameters",
               "use_parallel_residual", "tie_word_embeddings", "vocab_size", "layer_norm_eps", "intermediate_size"]
FOLDER_CASES = [(name, f"json-{i}") for name in FOLDER_FILES[:2] for i in range(MUTATIONS_PER_FILE)] + \
               [("config.json", f"key-{key}-{i}") for key in CONFIG_KEYS for i in range(len(HOSTILE_JSON))] + \
               [(name, how) for name in FOLDER_FILES for how in FILE_KINDS] + [(name, "missing") for name in FOLDER_FILES]


@pytest.mark.parametrize("name, how", FOLDER_CASES, ids=[f"{n}-{h}" for n, h in FOLDER_CASES])
def test_a_crafted_transformers_folder_fine_tunes_or_fails_in_one_line(tinygpt, exported, exported_dataset, tmp_path, name, how):
    folder = Path(shutil.copytree(exported, tmp_path / "hf"))
    path = folder / name
    if how == "missing":
        path.unlink()
    elif how.startswith("json-"):
        path.write_text(json.dumps(mutate(json.loads(path.read_text()), random.Random(f"{name}{how}"))))
    elif how.startswith("key-"):
        key, index = how.removeprefix("key-").rsplit("-", 1)
        path.write_text(json.dumps({**json.loads(path.read_text()), key: HOSTILE_JSON[int(index)]}))
    else:
        write_crafted(path, how, path.read_bytes())
    code, _, err = tinygpt("train", "--init-from", folder, "--data-dir", exported_dataset, "--max-iters", "2", "--warmup-iters", "0",
                           "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run")
    assert_result_or_one_error(code, err)


def test_the_intact_export_fine_tunes(tinygpt, exported, exported_dataset, tmp_path):
    """The cases above start from a folder that works: their errors come from what was crafted."""
    code, _, err = tinygpt("train", "--init-from", exported, "--data-dir", exported_dataset, "--max-iters", "2", "--warmup-iters", "0",
                           "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
