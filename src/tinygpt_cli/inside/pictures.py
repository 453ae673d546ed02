"""Pictures of a model's inside: attention grids and embedding maps (matplotlib, the `plot`
extra, imported only here and only when asked for), and surprise as coloured HTML. Each comes
back as an object that a notebook shows inline and that saves as a file (runs/plots.py).
"""

from __future__ import annotations

import html

import numpy as np

from ..runs.plots import Page, Picture, require_matplotlib


def attention_grid(weights: np.ndarray, labels: list[str]) -> Picture:
    """Every layer (rows) and head (columns), the prompt's tokens on both axes."""
    require_matplotlib()
    from matplotlib.figure import Figure

    n_layer, n_head, T, _ = weights.shape
    side = max(2.0, 0.22 * T)
    fig = Figure(figsize=(side * n_head + 1, side * n_layer + 0.5), layout="constrained")
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head], cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(T), labels, fontsize=6, rotation=90)
            ax.set_yticks(range(T), labels, fontsize=6)
    fig.suptitle("attention: each row is a token looking back at the columns")
    return Picture(fig, "attention")


MAP_LABELS = 150  # tokens labelled on the map at most: more make one black blot


def embedding_map(coords: np.ndarray, explained: np.ndarray, labels: list[str], positions: np.ndarray | None,
                  counts: np.ndarray | None = None) -> Picture:
    """The tokens on the embeddings' two principal axes; beside it, with learned positions, the
    cosine similarity of every pair of position embeddings. With the training text's token
    `counts`, the MAP_LABELS most frequent tokens are labelled, and the tokens the text never
    holds are told apart: nothing trained them, so they sit near where they started."""
    require_matplotlib()
    from matplotlib.figure import Figure

    from .measure import cosine_similarity

    fig = Figure(figsize=(14 if positions is not None else 8, 7), layout="constrained")
    axes = fig.subplots(1, 2 if positions is not None else 1, squeeze=False)[0]
    ax = axes[0]
    unseen = counts == 0 if counts is not None else np.zeros(len(labels), dtype=bool)
    ax.scatter(coords[~unseen, 0], coords[~unseen, 1], s=6, color="C0", alpha=0.4, label="in the training text")
    if unseen.any():
        ax.scatter(coords[unseen, 0], coords[unseen, 1], s=6, color="0.6", alpha=0.4,
                   label=f"never in the training text ({int(unseen.sum()):,} tokens: untrained, near their start)")
        ax.legend(loc="best", fontsize=8)
    order = np.argsort(-counts, kind="stable") if counts is not None else np.arange(len(labels))
    shown = order[:MAP_LABELS]
    for i in shown:
        ax.annotate(labels[i], (coords[i, 0], coords[i, 1]), fontsize=7, ha="center", va="center")
    ax.set_xlabel(f"first principal axis ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"second principal axis ({explained[1]:.0%})")
    every = len(shown) == len(labels)
    ax.set_title("token embeddings" + ("" if every else f": the {len(shown):,} {'most frequent' if counts is not None else 'first'} "
                                        f"of {len(labels):,} labelled"))
    if positions is not None:
        image = axes[1].imshow(cosine_similarity(positions), cmap="RdBu_r", vmin=-1, vmax=1)
        axes[1].set_title("position embeddings: cosine similarity")
        axes[1].set_xlabel("position")
        axes[1].set_ylabel("position")
        fig.colorbar(image, ax=axes[1], shrink=0.8)
    return Picture(fig, "embeddings")


def surprise_page(tokens: list[str], losses: np.ndarray, loss: float, bits_per_byte: float) -> Page:
    """The text with each token's background as red as the model's loss there (the first token
    is context only); the loss shows on hover."""
    scale = max(float(losses.max()), 1e-9)
    spans = [f"<span>{html.escape(tokens[0])}</span>"]
    for token, value in zip(tokens[1:], losses):
        spans.append(f'<span title="{value:.3f} nats" style="background: rgba(220, 30, 30, {0.85 * value / scale:.3f})">'
                     f"{html.escape(token)}</span>")
    return Page("surprise, by tinygpt", f"""<p>{len(losses):,} tokens scored: loss {loss:.4f} nats per token, {bits_per_byte:.3f} bits per byte.
Redder means more surprised (up to {scale:.2f} nats); hover a token for its loss.</p>
<pre style="white-space: pre-wrap; font-size: 15px; line-height: 1.5">{"".join(spans)}</pre>""")
