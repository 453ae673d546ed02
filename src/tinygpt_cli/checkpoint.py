"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint alone is enough to generate text: it carries the model config and the tokenizer
(the `vocab` metadata key: a character vocabulary, or a BPE's whole tokenizer.json).
`last` checkpoints also carry the optimiser state, the RNG states and the progress counters,
everything `tinygpt resume` needs. Two SHA-256 digests are stored in the metadata and checked on
load: `digest` over the tensors, `metadata_digest` over every other metadata value (format 2 on),
so a truncated, zero-filled or bit-flipped file is detected, in its numbers and in its settings.

Tensor names:  model.<param name>            weights (the tied lm_head is stored once, as tok_emb)
               optim.<param index>.<key>     optimiser state: AdamW's step, exp_avg, exp_avg_sq; Muon's momentum_buffer
               rng.torch, rng.data, rng.cuda.<i>   RNG states as uint8 tensors
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from . import __version__
from .config import ModelConfig, TrainConfig, first_problem
from .system.devices import device_memory_bytes
from .errors import Command, CheckpointError, TinyGPTError
from .system.fsutil import atomic_path, open_for_reading
from .model import GPT, weight_shapes
from .data.tokenizer import Tokenizer, tokenizer_from_dict

CHECKPOINT_FORMAT = "tinygpt-checkpoint"
# 2: `metadata_digest` covers every metadata value too. Format 1 files still load, with a note.
# 3: `vocab` may hold a BPE tokenizer; format 2 files (always characters) read as they are.
CHECKPOINT_VERSION = 4  # 4: the training's own RNG states, without Python's and numpy's
MAX_HEADER_BYTES = 100 * 2**20
TIED_WEIGHT = "lm_head.weight"  # same tensor as tok_emb.weight: stored once
# Bytes per element of the safetensors dtypes, to check the header's table before reading data.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_OPTIM_NAME = re.compile(r"^optim\.(0|[1-9][0-9]{0,8})\.(step|exp_avg|exp_avg_sq|momentum_buffer)$")
_RNG_NAME = re.compile(r"^rng\.(torch|data|cuda\.(0|[1-9][0-9]{0,3}))$")
_PRECISIONS = Literal["float32", "bfloat16", "float16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LossScale(_Strict):
    """float16's GradScaler where the run stood: its scale and the steps since it last grew."""

    scale: float = Field(gt=0)
    growth_tracker: int = Field(ge=0)


class FinalEval(_Strict):
    """A finished run's best checkpoint scored as `tinygpt eval` scores it (lifecycle.py)."""

    val_loss: float = Field(ge=0)
    val_bits_per_byte: float = Field(ge=0)
    tokens: int = Field(ge=1)  # the validation tokens predicted
    whole_split: bool  # every one of them, or windows spread through a split larger than the cap


class SavedProgress(_Strict):
    """Where a run stood when it saved: for the start line and the elapsed time of a resume."""

    elapsed: float = Field(0.0, ge=0)
    evaluated_at: int = Field(-1, ge=-1)
    dtype: _PRECISIONS | None = None
    val_bytes_per_token: float | None = Field(None, gt=0)  # val loss / ln 2 / this = bits per byte
    data_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # DatasetInfo.digest of the data trained on
    loss_scale: LossScale | None = None  # float16 training only
    eval_tokens: int | None = Field(None, ge=0)  # tokens each val loss estimate is taken over (all ranks together)
    final_eval: FinalEval | None = None  # `best` of a finished run: its loss over the validation split


class CheckpointMeta(BaseModel):
    """The metadata of a checkpoint, with the type and range of every value (checked on load)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["tinygpt-checkpoint"]
    format_version: int = Field(ge=1)
    tinygpt_version: str
    kind: Literal["last", "best"]
    model_config_json: ModelConfig
    vocab: dict
    iteration: int = Field(ge=0, le=10**9)
    best_val_loss: float | None = Field(ge=0)
    val_loss: float | None = Field(ge=0)
    train_config: TrainConfig | None = None
    progress: SavedProgress | None = None
    optimizer_param_groups: list[dict] | None = None
    # Checkpoints written before tinygpt kept its own generators (system/rng.py) also hold these; read, not used.
    # random.getstate(): version 3, 624 words and the position, the cached Gaussian
    rng_python: tuple[Literal[3], Annotated[list[Annotated[int, Field(ge=0, lt=2**32)]], Field(min_length=625, max_length=625)], float | None] | None = None
    # np.random.get_state(): name, 624 words, position, has a cached Gaussian, the Gaussian
    rng_numpy: tuple[Literal["MT19937"], Annotated[list[Annotated[int, Field(ge=0, lt=2**32)]], Field(min_length=624, max_length=624)],
                     Annotated[int, Field(ge=0, le=624)], Literal[0, 1], float] | None = None
    chat_template: str | None = Field(None, max_length=65536)  # trained on conversations: their Jinja template (data/chat.py)
    digest: str
    metadata_digest: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointMeta:
        if self.train_config is not None and self.iteration > self.train_config.max_iters:
            raise ValueError(f"iteration {self.iteration} is past max_iters {self.train_config.max_iters}")
        if self.progress is not None and self.progress.evaluated_at > self.iteration:
            raise ValueError(f"evaluated at {self.progress.evaluated_at}, after iteration {self.iteration}")
        if self.rng_python is not None and self.rng_python[1][-1] > 624:
            raise ValueError("rng_python: position past the state")
        if self.format_version >= 2 and self.metadata_digest is None:
            raise ValueError("metadata_digest: missing")
        return self


@dataclass
class Checkpoint:
    kind: str  # "last" or "best"
    model_config: ModelConfig
    tokenizer: Tokenizer
    iteration: int
    weights: dict[str, torch.Tensor]
    best_val_loss: float | None = None
    val_loss: float | None = None
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None  # torch optimizer state_dict
    rng: dict[str, Any] | None = None  # torch / data / cuda tensors (system/rng.py:TrainingRNG)
    progress: dict[str, Any] = field(default_factory=dict)  # elapsed seconds, last evaluated step, precision
    # False for format 1 files (older tinygpt): their digest covers the tensors, not the metadata.
    metadata_covered: bool = True
    chat_template: str | None = None  # a model trained on conversations: their template (data/chat.py)

    @property
    def data_dir(self) -> Path | None:
        """The dataset folder the checkpoint trained on, as its settings record it."""
        folder = (self.train_config or {}).get("data_dir")
        return Path(folder) if folder else None


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metadata_digest(str_meta: dict[str, str]) -> str:
    """SHA-256 of every metadata entry as stored (JSON text), `metadata_digest` itself aside.
    It includes the tensor digest, so one value checks the whole file."""
    entries = sorted((k, v) for k, v in str_meta.items() if k != "metadata_digest")
    return hashlib.sha256(json.dumps(entries, ensure_ascii=True).encode()).hexdigest()


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
        "vocab": ckpt.tokenizer.to_dict(),
        "iteration": ckpt.iteration,
        "best_val_loss": ckpt.best_val_loss,
        "val_loss": ckpt.val_loss,
        "train_config": ckpt.train_config,
        "progress": ckpt.progress,
        **({"chat_template": ckpt.chat_template} if ckpt.chat_template is not None else {}),
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
    meta["digest"] = tensor_digest(tensors)
    # safetensors metadata is str -> str: every value is stored as JSON text.
    str_meta = {k: json.dumps(v) for k, v in meta.items()}
    str_meta["metadata_digest"] = json.dumps(metadata_digest(str_meta))
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


# --- reading: every check before the allocation it guards ---------------------------------------
#
# A checkpoint may come from anywhere. The order below makes sure that nothing is allocated
# that the file does not pay for: the header is read with a bounded read, its tensor table is
# checked against the file's size, the config against the table (the model the config describes
# is exactly the tensors the file holds), and only then are the tensor bytes read; the digests
# and the range of every value are checked before anything is returned.


@dataclass
class _Header:
    size: int  # bytes of the whole file
    data_start: int  # offset of the tensor data
    str_meta: dict[str, str]  # the metadata as stored (JSON text values)
    table: dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (dtype, shape)


def _unreadable(path: Path) -> CheckpointError:
    return CheckpointError(f"{path} has an unreadable header (not safetensors JSON with tinygpt metadata)")


def _parse_header(head: bytes, size: int, path: Path) -> _Header:
    """The header of a safetensors file of `size` bytes whose first bytes are `head`."""
    (header_len,) = struct.unpack("<Q", head[:8])
    if len(head) != 8 + header_len:
        raise CheckpointError(f"{path} is damaged: its header is shorter than its length says")
    try:
        header = json.loads(head[8 : 8 + header_len])
        str_meta = header.pop("__metadata__")
    except (ValueError, RecursionError, AttributeError, TypeError, KeyError) as e:
        raise _unreadable(path) from e
    if not isinstance(str_meta, dict) or not all(isinstance(v, str) for v in str_meta.values()):
        raise _unreadable(path)
    data_start = 8 + header_len
    return _Header(size, data_start, str_meta, _tensor_table(header, size - data_start, path))


def _tensor_table(header: dict, data_bytes: int, path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's dtype and shape, once the table is shown to tile the data exactly."""
    table, spans = {}, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (dtype in _ITEM_BYTES and len(shape) <= 8 and all(type(n) is int and n >= 0 for n in (*shape, begin, end))
                  and end - begin == math.prod(shape) * _ITEM_BYTES[dtype])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path} is damaged: the header's entry for tensor {name!r} is inconsistent")
        table[name] = (dtype, shape)
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            break
        position = end
    if position != data_bytes or len(spans) != len({b for b, _ in spans}):
        raise CheckpointError(f"{path} is damaged: its tensor table does not match its {data_bytes:,} bytes of data (truncated?)")
    return table


def _checked_metadata(header: _Header, path: Path) -> tuple[dict[str, Any], CheckpointMeta]:
    """The metadata, refused unless it is a tinygpt checkpoint's, complete, typed, in range and
    (format 2 on) matching its digest."""
    try:
        meta = {k: json.loads(v) for k, v in header.str_meta.items()}
    except (ValueError, RecursionError) as e:
        raise _unreadable(path) from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a tinygpt checkpoint")
    version = meta.get("format_version")
    if isinstance(version, int) and version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {version}; this tinygpt reads up to {CHECKPOINT_VERSION}", "pip install -U tinygpt")
    stored = meta.get("metadata_digest")
    if (isinstance(version, int) and version >= 2 or stored is not None) and stored != metadata_digest(header.str_meta):
        raise CheckpointError(f"{path} is damaged: its metadata does not match the stored digest")
    try:
        checked = CheckpointMeta.model_validate(meta)
    except ValidationError as e:
        raise CheckpointError(f"{path} has invalid metadata: {first_problem(e, 'metadata')}") from e
    return meta, checked


def _check_table(header: _Header, checked: CheckpointMeta, path: Path) -> None:
    """The file holds exactly the model its config describes (and, for `last`, optimiser and RNG
    state of plausible names and types), before any tensor is read."""
    expected = {f"model.{k}": ("F32", shape) for k, shape in weight_shapes(checked.model_config_json).items()}
    problems = [f"missing {name}" for name in sorted(set(expected) - set(header.table))]
    for name, (dtype, shape) in header.table.items():
        if name in expected:
            if (dtype, shape) != expected[name]:
                problems.append(f"{name} is {dtype} {shape}, the config needs {expected[name][0]} {expected[name][1]}")
        elif _OPTIM_NAME.match(name):
            if dtype != "F32":
                problems.append(f"{name} is {dtype}, not F32")
        elif _RNG_NAME.match(name):
            if dtype != "U8" or len(shape) != 1:
                problems.append(f"{name} is {dtype} {shape}, not a U8 vector")
        else:
            problems.append(f"unexpected tensor {name}")
    rng = sorted(n for n in header.table if n.startswith("rng."))
    cuda = [n for n in rng if n.startswith("rng.cuda.")]
    if rng and ("rng.torch" not in rng or "rng.data" not in rng or cuda != sorted(f"rng.cuda.{i}" for i in range(len(cuda)))):
        problems.append(f"incomplete RNG state ({', '.join(rng)})")
    older_rng = (checked.rng_python is not None, checked.rng_numpy is not None)  # written before tinygpt kept its own
    if older_rng[0] != older_rng[1] or (any(older_rng) and not rng):
        problems.append("RNG state in the tensors and in the metadata do not go together")
    if any(n.startswith("optim.") for n in header.table) and checked.optimizer_param_groups is None:
        problems.append("optimiser state without its parameter groups")
    if problems:
        raise CheckpointError(f"{path} does not fit its model config: {'; '.join(problems[:3])}")


def _open_checkpoint(path: Path):
    """The open file and its size; only a regular file is a checkpoint (never a FIFO or a device)."""
    try:
        f = open_for_reading(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {path}", Command("train", options={"preset": "cpu"}, why="creates runs/<name>/best.safetensors")) from e
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
        f.close()
        raise CheckpointError(f"{path} is not a regular file, so it is not a checkpoint")
    return f, info.st_size


def _read_header(f, size: int, path: Path) -> _Header:
    """The header, read only once its length is known to fit the file and the limit."""
    try:
        head = f.read(8)
        if len(head) < 8:  # the size said otherwise: a special file, or one cut while we read
            raise CheckpointError(f"{path} is not a safetensors file ({len(head)} bytes, too short for a header)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CheckpointError(f"{path} is not a valid safetensors file (header length {length:,} does not fit a {size:,}-byte file)")
        return _parse_header(head + f.read(length), size, path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the metadata (model config, vocabulary, iteration...), checked but without reading
    the tensors; `metadata_covered` tells whether a digest vouches for it (format 2 on)."""
    path = Path(path)
    f, size = _open_checkpoint(path)
    with f:
        header = _read_header(f, size, path)
    meta, checked = _checked_metadata(header, path)
    _check_table(header, checked, path)
    return {**meta, "metadata_covered": checked.metadata_digest is not None}


def _read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], CheckpointMeta]:
    f, size = _open_checkpoint(path)
    with f:
        header = _read_header(f, size, path)
        meta, checked = _checked_metadata(header, path)
        _check_table(header, checked, path)
        memory = device_memory_bytes(torch.device("cpu"))
        if memory is not None and 2 * size > memory:  # the file's bytes, then its tensors
            raise CheckpointError(f"{path} is {size / 2**30:,.1f} GiB: loading it needs about twice that, and this machine has "
                                  f"{memory / 2**30:,.1f} GiB")
        try:
            f.seek(0)
            data = f.read(size)  # the size the table was checked against, from the same open file
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e
    if len(data) != size:
        raise CheckpointError(f"{path} is damaged: it changed size while being read")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path} is damaged: {e}") from e
    if tensor_digest(tensors) != checked.digest:
        raise CheckpointError(f"{path} is damaged: its tensor data does not match the stored digest (truncated or overwritten?)")
    broken = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if broken is not None:
        raise CheckpointError(f"{path} holds NaN or infinite values in {broken}: the model is broken (a diverged or damaged run)",
                              Command("runs", why="pick another run, or train this one again with a lower --learning-rate"))
    return tensors, meta, checked


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; every kind of damage is a one-line CheckpointError."""
    path = Path(path)
    tensors, meta, checked = _read_verified(path)
    model_config = checked.model_config_json
    try:
        tokenizer = tokenizer_from_dict(meta["vocab"], f"vocabulary in {path}")
    except TinyGPTError as e:
        raise CheckpointError(f"{path} has an invalid vocabulary: {e.message}") from e
    if tokenizer.size != model_config.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {tokenizer.size} does not match vocab_size {model_config.vocab_size}")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    rng = None
    if "rng.torch" in tensors:
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
        rng = {"torch": tensors["rng.torch"], "data": tensors["rng.data"], "cuda": cuda}
    return Checkpoint(
        kind=checked.kind,
        model_config=model_config,
        tokenizer=tokenizer,
        iteration=checked.iteration,
        weights=weights,
        best_val_loss=checked.best_val_loss,
        val_loss=checked.val_loss,
        train_config=meta.get("train_config"),
        optimizer=_optimizer_state(optim, meta["optimizer_param_groups"]) if checked.optimizer_param_groups is not None else None,
        rng=rng,
        progress=checked.progress.model_dump() if checked.progress is not None else {},
        metadata_covered=checked.metadata_digest is not None,
        chat_template=checked.chat_template,
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
    c = ckpt.model_config
    # Rotary tables are computed for the whole window, not read: the one thing a small file's
    # config can ask for beyond its own tensors (cos, sin and their angles, float32).
    tables = 3 * 2 * c.block_size * (c.head_size // 2) if c.pos_embedding == "rope" else 0
    memory = device_memory_bytes(torch.device("cpu"))
    if memory is not None and 4 * tables > memory:
        raise CheckpointError(f"{path}: its rotary tables for block_size {c.block_size:,} would need "
                              f"{4 * tables / 2**30:,.1f} GiB; this machine has {memory / 2**30:,.1f} GiB")
    model = GPT(ckpt.model_config, init=False)
    load_model_weights(model, ckpt.weights, path)
    return model.to(device).eval(), ckpt
