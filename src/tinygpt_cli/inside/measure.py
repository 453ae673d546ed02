"""Looking inside a trained model: its attention, its next-token distribution, its surprise at
each token of a text, and a map of its embeddings. The CLI draws them (cli/inside_cmds.py).

Every number comes from the code that trains and samples: the attention weights are recorded
by the model's own attention (model.py:GPT.attention_maps), the next-token distribution is the
one `generate` draws from (sampling.py:next_token_probs), and the surprise is the per-token loss
that `eval` averages (evaluate.py:token_losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..data.dataset import read_dataset_info, read_split
from ..errors import Command, TinyGPTError, UsageError
from ..evaluate import token_losses
from ..model import GPT, eval_mode
from ..sampling import next_token_probs
from ..data.tokenizer import Tokenizer, byte_lengths, load_tokenizer, token_counts, token_label, token_texts


# surprise shows each token of a text: up to a megabyte of it (a page of that is already long).
MAX_SURPRISE_BYTES = 2**20
SURPRISE_TOO_LARGE = Command("prepare text", ("FILE",), {"tokenizer": "RUN", "data_dir": "DIR"},
                             before="score a part of it, or the whole with eval: prepare it with the run's tokenizer",
                             why="then eval --run RUN --data-dir DIR scores it")


def prompt_ids(tokenizer: Tokenizer, text: str, block_size: int) -> tuple[list[int], int]:
    """The prompt's ids, the last `block_size` of them (what the model sees), and how many were
    dropped from the front. Unknown characters (a char model) are one usage error, as in generate."""
    if not text:
        raise UsageError("the prompt is empty: give some text with --prompt")
    ids = tokenizer.encode(text)
    return ids[-block_size:], max(0, len(ids) - block_size)


@torch.no_grad()
def attention(model: GPT, ids: list[int]) -> np.ndarray:
    """Attention weights of every layer and head for `ids`: (layers, heads, T, T), rows sum to 1,
    zero above the diagonal (a position sees only its past)."""
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    with eval_mode(model), model.attention_maps() as maps:
        model(idx, idx)  # targets: every position's output, not only the last one's
    return torch.stack([m[0] for m in maps]).float().cpu().numpy()


@dataclass(frozen=True)
class Candidate:
    token_id: int
    probability: float  # under the given temperature, top-k and top-p
    model_probability: float  # the model's own (temperature 1, no filter)


@torch.no_grad()
def predict(model: GPT, ids: list[int], temperature: float, top_k: int | None, top_p: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The next token's distribution after `ids`, as `generate` samples it, and the model's own."""
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    with eval_mode(model):
        logits, _ = model(idx)
    last = logits[:, -1, :]  # (1, vocab)
    shaped = next_token_probs(last, temperature, top_k, top_p)[0]
    raw = next_token_probs(last, 1.0, None, None)[0]
    return shaped.cpu().numpy(), raw.cpu().numpy()


def top_candidates(shaped: np.ndarray, raw: np.ndarray, k: int) -> list[Candidate]:
    order = np.argsort(-raw, kind="stable")[:k]
    return [Candidate(int(i), float(shaped[i]), float(raw[i])) for i in order]


def sampling_settings(temperature: float, top_k: int | None, top_p: float | None) -> str:
    """The settings that shape what generate draws from, in words."""
    return f"temperature {temperature:g}" + (f", top-k {top_k}" if top_k else "") + (f", top-p {top_p:g}" if top_p is not None else "")


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    return [token_label(tokenizer, i) for i in ids]


def candidates_report(tokenizer: Tokenizer, candidates: list[Candidate]) -> list[dict]:
    """The candidates as `predict --json` prints them (and the server's playground shows them)."""
    labels = token_labels(tokenizer, [c.token_id for c in candidates])
    return [{"id": c.token_id, "token": label, "model_probability": c.model_probability, "probability": c.probability}
            for c, label in zip(candidates, labels)]


@dataclass(frozen=True)
class Surprise:
    ids: list[int]  # the text's tokens
    losses: np.ndarray  # the loss of predicting each token after the first, in nats (len(ids) - 1)
    bytes: int  # UTF-8 bytes of the predicted tokens

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    @property
    def bits_per_byte(self) -> float:
        return float(self.losses.sum()) / self.bytes / math.log(2)

    def report(self, tokenizer: Tokenizer) -> dict:
        """As `surprise --json` prints it: each token's text (a character split over tokens shows
        with its last) and the loss of predicting it (None for the first)."""
        return {"tokens": list(token_texts(tokenizer, self.ids)), "losses": [None, *self.losses.tolist()], "loss": self.loss,
                "bits_per_byte": self.bits_per_byte}


def surprise(model: GPT, tokenizer: Tokenizer, text: str) -> Surprise:
    """How surprised the model is by each token of `text` (at most MAX_SURPRISE_BYTES): its loss
    there, scored in the windows `eval` uses, so the losses average to eval's loss on the same text."""
    if len(text) > MAX_SURPRISE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SURPRISE_BYTES:
        raise TinyGPTError(f"the text is over the {MAX_SURPRISE_BYTES:,}-byte limit for surprise, which shows every token",
                           SURPRISE_TOO_LARGE)
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise UsageError("the text needs at least two tokens: the first is only context")
    tokens = np.array(ids, dtype=np.int64)
    losses = token_losses(model, tokens)
    return Surprise(ids, losses, int(byte_lengths(tokenizer)[tokens[1:]].sum()))


def pca(matrix: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `matrix` on its `k` principal axes, and the share of the variance each axis
    explains (an SVD of the centred rows)."""
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    variance = s**2
    return u[:, :k] * s[:k], variance[:k] / max(variance.sum(), 1e-30)


def embedding_report(model: GPT, tokenizer: Tokenizer) -> dict:
    """The token embeddings on their two principal axes, as `embeddings --json` prints them."""
    coords, explained = pca(model.tok_emb.weight.detach().float().cpu().numpy())
    return {"tokens": token_labels(tokenizer, list(range(tokenizer.size))), "coordinates": coords.tolist(),
            "explained_variance": explained.tolist()}


def position_embeddings(model: GPT) -> np.ndarray | None:
    """The learned position table (block_size, n_embd); None with rotary positions, which have none."""
    return model.pos_emb.weight.detach().float().cpu().numpy() if hasattr(model, "pos_emb") else None


def cosine_similarity(matrix: np.ndarray) -> np.ndarray:
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def training_counts(ckpt: Checkpoint) -> np.ndarray | None:
    """How often each token occurs in the training split of the run's dataset, when it is still
    there with this tokenizer; None otherwise (a checkpoint from elsewhere). The split is read as
    it is, without the digests that a training checks: counts for a picture, at any corpus size."""
    folder = ckpt.data_dir
    info = read_dataset_info(folder) if folder is not None else None
    if info is None:
        return None
    try:
        if load_tokenizer(folder, info.tokenizer) != ckpt.tokenizer:
            return None
        return token_counts(read_split(folder / "train.bin", info.token_dtype), ckpt.tokenizer.size)
    except (TinyGPTError, OSError, ValueError):  # a folder changed or damaged since: no counts
        return None
