"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint alone is enough to generate text: it carries the model config and the vocabulary.
`last` checkpoints also carry the optimiser state, the RNG states and the progress counters,
everything `tinygpt resume` needs. A SHA-256 digest of all tensor bytes is stored in the
metadata and checked on load, so a truncated or zero-filled file is detected.

Tensor names:  model.<param name>            weights (the tied lm_head is stored once, as tok_emb)
               optim.<param index>.<key>     AdamW state (step, exp_avg, exp_avg_sq)
               rng.torch, rng.data, rng.cuda.<i>   RNG states as uint8 tensors
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from . import __version__
from .config import ModelConfig
from .errors import CheckpointError
from .fsutil import atomic_path
from .model import GPT
from .vocab import Vocabulary

CHECKPOINT_FORMAT = "tinygpt-checkpoint"
CHECKPOINT_VERSION = 1
MAX_HEADER_BYTES = 100 * 2**20
TIED_WEIGHT = "lm_head.weight"  # same tensor as tok_emb.weight: stored once


class CheckpointMeta(BaseModel):
    """The metadata keys every checkpoint must carry, with their types (checked on load)."""

    model_config = ConfigDict(extra="allow")

    format: str
    format_version: int
    tinygpt_version: str
    kind: str
    model_config_json: dict
    vocab: dict
    iteration: int
    best_val_loss: float | None
    val_loss: float | None
    digest: str


@dataclass
class Checkpoint:
    kind: str  # "last" or "best"
    model_config: ModelConfig
    vocab: Vocabulary
    iteration: int
    weights: dict[str, torch.Tensor]
    best_val_loss: float | None = None
    val_loss: float | None = None
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None  # torch optimizer state_dict
    rng: dict[str, Any] | None = None  # torch / data / cuda tensors, python / numpy JSON
    progress: dict[str, Any] = field(default_factory=dict)  # elapsed seconds, last evaluated step, precision


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the tied head, on CPU, ready to store."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != TIED_WEIGHT}


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically: a crash at any instant leaves the previous file loadable."""
    tensors = {f"model.{k}": v for k, v in ckpt.weights.items()}
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "tinygpt_version": __version__,
        "kind": ckpt.kind,
        "model_config_json": ckpt.model_config.model_dump(),
        "vocab": ckpt.vocab.to_dict(),
        "iteration": ckpt.iteration,
        "best_val_loss": ckpt.best_val_loss,
        "val_loss": ckpt.val_loss,
        "train_config": ckpt.train_config,
        "progress": ckpt.progress,
    }
    if ckpt.optimizer is not None:
        optim_tensors, groups = _optimizer_tensors(ckpt.optimizer)
        tensors.update(optim_tensors)
        meta["optimizer_param_groups"] = groups
    if ckpt.rng is not None:
        for key in ("torch", "data"):
            tensors[f"rng.{key}"] = ckpt.rng[key]
        for i, state in enumerate(ckpt.rng.get("cuda", [])):
            tensors[f"rng.cuda.{i}"] = state
        meta["rng_python"] = ckpt.rng["python"]
        meta["rng_numpy"] = ckpt.rng["numpy"]
    meta["digest"] = tensor_digest(tensors)
    # safetensors metadata is str -> str: every value is stored as JSON text.
    str_meta = {k: json.dumps(v) for k, v in meta.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=str_meta)
    except (OSError, SafetensorError) as e:  # a full disk, a read-only or vanished folder...
        raise CheckpointError(f"cannot write checkpoint {path}: {_write_failure(e)}",
                              "free some disk space or pass a writable folder, then try again") from e


def _write_failure(error: Exception) -> str:
    """The reason of a failed write, as the OS words it ("No space left on device")."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    found = re.search(r"os error (\d+)", str(error))  # safetensors: "I/O error: ... (os error 28)"
    return os.strerror(int(found.group(1))) if found else str(error)


def read_header(data: bytes, path: Path) -> dict[str, Any]:
    """The JSON-decoded metadata of a safetensors file's header, checked for sanity."""
    if len(data) < 8:
        raise CheckpointError(f"{path} is not a safetensors file ({len(data)} bytes, too short for a header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise CheckpointError(f"{path} is not a valid safetensors file (header length {header_len:,} does not fit a {len(data):,}-byte file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        return {k: json.loads(v) for k, v in header["__metadata__"].items()}
    except (ValueError, AttributeError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has an unreadable header (not safetensors JSON with tinygpt metadata)") from e


def _read_bytes(path: Path, header_only: bool = False) -> bytes:
    """The file's bytes (or just its 8-byte length and header); I/O failures as CheckpointError."""
    try:
        if not header_only:
            return path.read_bytes()
        with open(path, "rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            return head + f.read(min(length, MAX_HEADER_BYTES))
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {path}", "tinygpt train --preset cpu  (creates runs/<name>/best.safetensors)") from e
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e


def _checked_metadata(data: bytes, path: Path) -> tuple[dict[str, Any], CheckpointMeta]:
    """The header's metadata, refused unless it is a tinygpt checkpoint's, complete and typed."""
    meta = read_header(data, path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a tinygpt checkpoint")
    try:
        checked = CheckpointMeta(**meta)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
        raise CheckpointError(f"{path} has missing or mistyped metadata: {fields}") from e
    if checked.format_version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {checked.format_version}; this tinygpt reads up to {CHECKPOINT_VERSION}", "pip install -U tinygpt")
    return meta, checked


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the metadata (model config, vocabulary, iteration...), without reading the tensors."""
    path = Path(path)
    return _checked_metadata(_read_bytes(path, header_only=True), path)[0]


def _read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    data = _read_bytes(path)
    meta, checked = _checked_metadata(data, path)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path} is damaged: {e}") from e
    if tensor_digest(tensors) != checked.digest:
        raise CheckpointError(f"{path} is damaged: its tensor data does not match the stored digest (truncated or overwritten?)")
    return tensors, meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; every kind of damage is a one-line CheckpointError."""
    path = Path(path)
    tensors, meta = _read_verified(path)
    try:
        model_config = ModelConfig(**meta["model_config_json"])
        vocab = Vocabulary.from_dict(meta["vocab"], f"vocabulary in {path}")
    except Exception as e:
        raise CheckpointError(f"{path} has an invalid model config or vocabulary: {e}") from e
    if vocab.size != model_config.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {vocab.size} does not match vocab_size {model_config.vocab_size}")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    rng = None
    if "rng.torch" in tensors:
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
        rng = {"torch": tensors["rng.torch"], "data": tensors["rng.data"], "cuda": cuda,
               "python": meta.get("rng_python"), "numpy": meta.get("rng_numpy")}
    return Checkpoint(
        kind=meta["kind"],
        model_config=model_config,
        vocab=vocab,
        iteration=meta["iteration"],
        weights=weights,
        best_val_loss=meta["best_val_loss"],
        val_loss=meta["val_loss"],
        train_config=meta.get("train_config"),
        optimizer=_optimizer_state(optim, meta["optimizer_param_groups"]) if "optimizer_param_groups" in meta else None,
        rng=rng,
        progress=meta.get("progress") or {},
    )


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy checkpoint weights into `model`; names or shapes that do not fit are a CheckpointError."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED_WEIGHT}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {tuple(weights[k].shape)}, the config needs {tuple(expected[k])}")
        raise CheckpointError(f"{source} does not fit its model config: {'; '.join(parts)}")
    model.load_state_dict(weights, strict=False)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Checkpoint]:
    """A ready-to-use model (eval mode) and its checkpoint, from a verified file."""
    ckpt = load_checkpoint(path)
    model = GPT(ckpt.model_config)
    load_model_weights(model, ckpt.weights, path)
    return model.to(device).eval(), ckpt
