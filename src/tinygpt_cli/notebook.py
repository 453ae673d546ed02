"""tinygpt in a notebook: the journey's steps as calls whose results Jupyter shows inline.

A front end, like the command line (cli/) and the server (server/): each call does what the
command of the same name does, through the same core functions, and gives back what a notebook
shows best: pictures (runs.plots.Picture and Page), tables with an HTML face, and a training
display that updates in place. examples/tinygpt.ipynb walks through them all.

    from tinygpt_cli import notebook as tg
    tg.prepare_shakespeare("data/shakespeare")
    tg.train("runs/cpu", preset="cpu", data_dir="data/shakespeare")
    tg.plot("runs/cpu")                            # the loss curves, inline
    print(tg.generate("runs/cpu", "ROMEO:", seed=1))

Every call sets the process as the command line does (system/process.py:init_process), so it runs
as fast, and in a Jupyter kernel our errors show as `Error:` and `Try:` lines
(show_errors_briefly). A training stopped from the notebook (Kernel > Interrupt) saves its last
checkpoint; `tg.resume(run)` goes on from there.
"""

from __future__ import annotations

import html
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conversation import Conversation
from .errors import TinyGPTError, TrainingStopped, UsageError
from .lifecycle import StartInfo, TrainingReporter, TrainResult
from .runs.plots import Page, Picture

NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?%?")  # a Table's cells that are numbers, aligned right
UPDATE_SECONDS = 0.5  # the live display redraws at most this often (each redraw is a message to the browser)


# --- what a notebook shows ----------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    """A share from 0 to 1, drawn as a bar in a Table."""

    share: float
    colour: str = "#4c78a8"
    WIDTH = 20  # characters of a full bar in plain text

    def html(self) -> str:
        return (f'<div style="background:{self.colour};height:0.8em;width:{100 * self.share:.1f}%;min-width:1px" '
                f'title="{self.share:.1%}"></div>')

    def __str__(self) -> str:
        return "█" * round(self.share * self.WIDTH)


class Table:
    """Rows under a title: an HTML table in a notebook, aligned text anywhere else."""

    def __init__(self, title: str, columns: list[str], rows: list[list[Any]], note: str = "") -> None:
        self.title, self.columns, self.rows, self.note = title, columns, rows, note

    def _repr_html_(self) -> str:
        def cell(value: Any) -> str:
            if isinstance(value, Bar):
                return f'<td style="width:10em">{value.html()}</td>'
            align = "right" if NUMBER.fullmatch(str(value)) else "left"
            return f'<td style="text-align:{align};font-family:monospace">{html.escape(str(value))}</td>'

        head = "".join(f'<th style="text-align:left">{html.escape(c)}</th>' for c in self.columns)
        body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<p><b>{html.escape(self.title)}</b></p><table><tr>{head}</tr>{body}</table>{note}"

    def __repr__(self) -> str:
        cells = [self.columns, *[[str(v) for v in row] for row in self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title, *("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)]
        return "\n".join(lines + ([self.note] if self.note else []))


def _number(value: int) -> str:
    return f"{value:,}"


# --- data ---------------------------------------------------------------------------------------

def prepare_shakespeare(data_dir: str | Path = "data/shakespeare", source: str | Path | None = None) -> Table:
    """Tiny Shakespeare as a dataset of characters in `data_dir` (`tinygpt prepare shakespeare`):
    downloaded, or read from `source` (a local copy), and checked against its SHA-256."""
    from .data.prepare import prepare_shakespeare as prepare

    result = prepare(Path(data_dir), None if source is None else str(source), verify=True, val_fraction=0.1)
    return _dataset_table(result.info, "reused" if result.reused else "prepared")


def prepare_chat(inputs: list[str | Path], data_dir: str | Path, tokenizer: str | Path) -> Table:
    """Conversation files (JSON Lines of {"messages": [...]}) as a chat dataset that trains the
    assistant's tokens only (`tinygpt prepare chat`), in the vocabulary of the run or dataset
    `tokenizer` names (or "char", "bpe")."""
    from .data.prepare_chat import prepare_chat as prepare
    from .interop.pretrained import chat_context, tokenizer_choice

    choice = tokenizer_choice(str(tokenizer), None)
    result = prepare([str(i) for i in inputs], Path(data_dir), Path(data_dir).name, choice, chat_context(str(tokenizer), choice))
    return _dataset_table(result.info, "reused" if result.reused else "prepared")


def _dataset_table(info, done: str) -> Table:
    rows = [["train tokens", _number(info.train_tokens)], ["validation tokens", _number(info.val_tokens)],
            ["vocabulary", f"{info.vocab_size:,} tokens ({info.tokenizer})"]]
    return Table(f"{done} {info.path}", ["", ""], rows)


def vocab(data_dir: str | Path = "data/shakespeare", limit: int = 20) -> Table:
    """The dataset's most frequent tokens with their counts (`tinygpt vocab`)."""
    import numpy as np

    from .data.dataset import load_dataset
    from .data.tokenizer import token_label

    dataset = load_dataset(Path(data_dir))
    tokenizer = dataset.tokenizer
    counts = dataset.token_counts()
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")[:limit]
    rows = [[token_label(tokenizer, int(i)), int(i), _number(int(counts[i])), Bar(counts[i] / counts[order[0]])] for i in order]
    return Table(f"the {len(order)} most frequent of {tokenizer.size:,} tokens, in {total:,}", ["token", "id", "count", ""], rows)


# --- the model ----------------------------------------------------------------------------------

def params(preset: str = "cpu", **settings: Any) -> Table:
    """Where the parameters of a preset's model live (`tinygpt params`): settings as train takes them."""
    from .config import resolve_config
    from .params import param_report

    report = param_report(resolve_config(preset, None, settings).model)
    c = report.config
    rows = [[r.name, r.shape, _number(r.count), r.note] for r in report.embedding]
    rows += [[f"block (x{c.n_layer}): {r.name}", r.shape, _number(r.count), r.note] for r in report.block]
    rows += [[r.name, r.shape, _number(r.count), r.note] for r in report.head]
    return Table(f"{report.total:,} parameters: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}",
                 ["", "shape", "parameters", "note"], rows,
                 f"training costs about {report.flops_per_token():,} FLOPs per token")


# --- training -----------------------------------------------------------------------------------

def train(out: str | Path, preset: str | None = None, overwrite: bool = False, rule: str | Path | None = None,
          **settings: Any) -> TrainResult | None:
    """Train a model from scratch, or fine-tune one (init_from=RUN), into the run folder `out`
    (`tinygpt train`). `settings` are train's options by their names (max_iters=2000,
    data_dir="data/shakespeare"), over the preset's; time="10m" picks the shape and iterations
    for the time (with `rule`: a rule.json that `tinygpt scaling` wrote, instead of the shipped one).
    Progress updates in place; a stop from the notebook saves the run and returns None."""
    import time

    from .config import resolve_config
    from .lifecycle import train_new
    from .system.process import init_process

    started = time.monotonic()
    notes: list[str] = []
    config = resolve_config(preset, None, settings, notes)
    if config.train.time is not None:
        from .runs.law import SHIPPED_RULE, load_rule
        from .runs.timedial import plan_for_time

        given = {k for k, v in settings.items() if v is not None}
        plan = plan_for_time(config, config.train.time, given, load_rule(Path(rule) if rule else SHIPPED_RULE), init_process(), started)
        config = plan.config
        notes = [f"time dial: {plan.reason()}", *plan.notes, *notes]
    for note in notes:
        print(note if note.startswith("time dial") else f"note: {note}")
    return _stoppable(Path(out), lambda reporter: train_new(config, Path(out), reporter, overwrite=overwrite, threads=init_process(),
                                                            started=started))


def resume(run: str | Path, **settings: Any) -> TrainResult | None:
    """Continue a stopped run where it left off (`tinygpt resume`); max_iters=N may extend it."""
    from .lifecycle import resume as resume_run
    from .system.process import init_process

    return _stoppable(Path(run), lambda reporter: resume_run(Path(run), settings, reporter, threads=init_process()))


def _stoppable(run: Path, start) -> TrainResult | None:
    reporter = LiveTraining()
    try:
        return start(reporter)
    except TrainingStopped as e:
        reporter.say(f"stopped: {e.message}. tg.resume({str(run)!r}) goes on from there.")
        return None


class LiveTraining(TrainingReporter):
    """Training progress as one display that updates in place: a bar, the latest loss and speed,
    each evaluation's line, and at the end what was saved. In Jupyter it is one HTML output
    (IPython's display handles); elsewhere, printed lines."""

    def __init__(self) -> None:
        self.header = ""
        self.lines: list[str] = []
        self.status = ""
        self.progress = (0, 1)
        self.first_step: tuple[int, float] | None = None  # (iteration, elapsed) of this session's first step
        self.handle = None
        self.drawn_at = 0.0

    def on_start(self, info: StartInfo) -> None:
        m = info.config.model
        self.header = (f"{info.run}: {info.n_params:,} parameters ({m.n_layer} layers, {m.n_head} heads, "
                       f"{m.n_embd} wide, block {m.block_size}), {info.tokens_per_iter:,} tokens per iteration, "
                       f"on {info.device} in {info.dtype}")
        self.progress = (info.start_iter, info.config.train.max_iters)
        self.lines = [text if kind == "info" else f"{kind}: {text}" for kind, text in info.notes()]
        if in_a_notebook():
            from IPython.display import display

            self.handle = display(self.bundle(), raw=True, display_id=True)
        else:
            print("\n".join([self.header, *self.lines]))

    def on_step(self, record: dict[str, Any]) -> None:
        done, total = record["iter"], self.progress[1]
        self.progress = (done, total)
        if self.first_step is None:
            self.first_step = (done, record["elapsed"])
        first, since = self.first_step
        left = f", about {(record['elapsed'] - since) / (done - first) * (total - done):.0f} s to go" if done > first else ""
        self.status = (f"iteration {done:,} of {total:,}: loss {record['loss']:.4f}, {record['tokens_per_s']:,.0f} tokens/s, "
                       f"{record['elapsed']:.0f} s{left}")
        self.draw(force=done == total)

    def on_plan(self, record: dict[str, Any]) -> None:
        self.progress = (record["iter"], record["max_iters"])
        if not record["calibrating"]:
            self.say(f"note: {record['text']}")

    def on_eval(self, record: dict[str, Any]) -> None:
        star = " (best so far)" if record["improved"] else ""
        self.say(f"eval at {record['iter']:,}: train {record['train_loss']:.4f}, val {record['val_loss']:.4f} "
                 f"({record['val_bits_per_byte']:.3f} bits/byte){star}")

    def on_final_eval(self, windows: int):
        self.status = f"scoring best.safetensors over the validation split ({windows:,} windows)"
        self.draw(force=True)
        return lambda n: None

    def on_stop_requested(self, signum: int, evaluating: bool) -> None:
        # Inside the signal handler: only remember it; the display shows it at its next redraw.
        now = "cutting this evaluation short" if evaluating else "finishing this step"
        self.status = f"stopping: {now}, then saving last.safetensors (interrupt again to abort without saving)"

    def on_end(self, status: str, record: dict[str, Any]) -> None:
        self.status = ""
        if status != "finished":
            self.draw(force=True)
            return
        final = record["final_eval"]
        scored = f": val {final['val_loss']:.4f} ({final['val_bits_per_byte']:.3f} bits/byte) over {final['tokens']:,} tokens" if final else ""
        self.say(f"done: {record['iteration']:,} iterations in {record['elapsed']:.1f} s; {record['run']}/best.safetensors{scored}")

    def say(self, line: str) -> None:
        self.lines.append(line)
        if self.handle is None:
            print(line)
        self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        if self.handle is None or (not force and time.monotonic() - self.drawn_at < UPDATE_SECONDS):
            return
        self.handle.update(self.bundle(), raw=True)
        self.drawn_at = time.monotonic()

    def bundle(self) -> dict[str, str]:
        """The display as HTML, and as text for a kernel's front end that shows no HTML."""
        done, total = self.progress
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines)
        page = (f"<div style='font-family:monospace'><div>{html.escape(self.header)}</div>"
                f"<progress value='{done}' max='{total}' style='width:100%'></progress>"
                f"<div>{html.escape(self.status)}</div>{lines}</div>")
        return {"text/html": page, "text/plain": "\n".join(line for line in [self.header, self.status, *self.lines] if line)}


def show_errors_briefly() -> None:
    """In a Jupyter kernel, a TinyGPTError shows as the command line shows it: `Error: ...` and
    `Try: ...`, without a traceback (TINYGPT_DEBUG=1 keeps the traceback). Set when this module is
    imported in a kernel: the notebook's own setting, as init_process is the command line's."""
    if in_a_notebook() and os.environ.get("TINYGPT_DEBUG") != "1":
        from IPython import get_ipython

        get_ipython().set_custom_exc((TinyGPTError,), brief_error)


def brief_error(shell, etype, error: TinyGPTError, tb, tb_offset=None) -> None:
    from .cli.console import render_hint

    print(f"Error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"Try: {render_hint(error.hint)}", file=sys.stderr)


def in_a_notebook() -> bool:
    """Whether this process is a Jupyter kernel (Jupyter, Colab, VS Code), which shows HTML."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def plot(*runs: str | Path, x: str = "iter") -> Picture:
    """The train and val loss curves of one or more runs, labelled by what differs (`tinygpt
    plot`); x="time" for wall time. Runs of different vocabularies are drawn in bits per byte."""
    from .runs.plots import check_x_axis, plot_runs
    from .runs.table import plot_series, run_paths

    check_x_axis(x)
    if not runs:
        raise UsageError("name the runs to plot: tg.plot(\"runs/cpu\")")
    found = plot_series(run_paths([Path(run) for run in runs]))  # bits per byte when their vocabularies differ
    if found.vocabulary_note():
        print(f"note: {found.vocabulary_note()}")
    for label, why in found.skipped:
        print(f"skipped {label}: {why}")
    return plot_runs(found.series, x=x, y_label=found.y_label)


# --- sampling and looking inside ----------------------------------------------------------------

def _load(run: str | Path):
    from .checkpoint import load_model
    from .rundir import resolve_checkpoint
    from .system.devices import pick_device
    from .system.process import init_process

    model, ckpt = load_model(resolve_checkpoint(Path(run)), pick_device("auto"))
    init_process()
    return model, ckpt


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """The bounds that generate's options have on the command line."""
    if temperature < 0:
        raise UsageError(f"temperature={temperature:g}: 0 (greedy) or more")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k={top_k}: 1 or more, or None for no limit")
    if top_p is not None and not 0 <= top_p <= 1:
        raise UsageError(f"top_p={top_p:g}: between 0 and 1, or None for no limit")


def generate(run: str | Path, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
    """The prompt and what the run's best model writes after it (`tinygpt generate`)."""
    from .sampling import generate as sample
    from .sampling import set_sampling_precision

    check_sampling(temperature, top_k, top_p)
    model, ckpt = _load(run)
    set_sampling_precision(model, "auto")
    ids = ckpt.tokenizer.encode(prompt or "\n")  # empty: from a newline, as `tinygpt generate`
    return ckpt.tokenizer.decode(ids + list(sample(model, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                                   top_p=top_p, seed=seed)))


def attention(run: str | Path, prompt: str) -> Picture:
    """Where each token of the prompt looks, in every layer and head (`tinygpt attention --png`)."""
    from .inside.measure import attention as weights_of
    from .inside.measure import prompt_ids, token_labels
    from .inside.pictures import attention_grid

    model, ckpt = _load(run)
    ids, _ = prompt_ids(ckpt.tokenizer, prompt, model.config.block_size)
    return attention_grid(weights_of(model, ids), token_labels(ckpt.tokenizer, ids))


def predict(run: str | Path, prompt: str, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
            show: int = 10) -> Table:
    """The next token's candidates after the prompt (`tinygpt predict`): the model's own
    probabilities, and what generate draws from under temperature, top_k and top_p."""
    from .inside.measure import candidates_report, prompt_ids, sampling_settings, top_candidates
    from .inside.measure import predict as distribution

    check_sampling(temperature, top_k, top_p)
    model, ckpt = _load(run)
    ids, _ = prompt_ids(ckpt.tokenizer, prompt, model.config.block_size)
    shaped, raw = distribution(model, ids, temperature, top_k, top_p)
    rows = [[c["token"], f"{c['model_probability']:.1%}", Bar(c["model_probability"]), f"{c['probability']:.1%}",
             Bar(c["probability"], "#54a24b")] for c in candidates_report(ckpt.tokenizer, top_candidates(shaped, raw, show))]
    return Table(f"the next token after {prompt!r}", ["token", "model", "", "generate", ""], rows,
                 f"model: its own probabilities; generate: what generate draws from with {sampling_settings(temperature, top_k, top_p)}")


def surprise(run: str | Path, text: str) -> Page:
    """The text, each token as red as the model's loss there (`tinygpt surprise --html`)."""
    from .inside.measure import surprise as score
    from .inside.pictures import surprise_page

    model, ckpt = _load(run)
    result = score(model, ckpt.tokenizer, text)
    return surprise_page(result.report(ckpt.tokenizer)["tokens"], result.losses, result.loss, result.bits_per_byte)


def embeddings(run: str | Path) -> Picture:
    """The token embeddings on their two principal axes (`tinygpt embeddings --png`)."""
    import numpy as np

    from .inside.measure import embedding_report, position_embeddings, training_counts
    from .inside.pictures import embedding_map

    model, ckpt = _load(run)
    report = embedding_report(model, ckpt.tokenizer)
    positions = position_embeddings(model)
    return embedding_map(np.array(report["coordinates"]), np.array(report["explained_variance"]), report["tokens"], positions,
                         training_counts(ckpt))


def chat(run: str | Path, system: str | None = None) -> Chat:
    """A conversation with a run trained on conversations (`tinygpt chat`): `say(text)` returns
    the reply and keeps the history."""
    model, ckpt = _load(run)
    return Chat(model, ckpt.tokenizer, system)


class Chat(Conversation):
    """A Conversation that answers whole replies, for a notebook."""

    def say(self, text: str, temperature: float = 0.8, seed: int | None = None) -> str:
        """The model's reply to `text`, whole; the exchange joins the history."""
        check_sampling(temperature, None, None)
        return "".join(self.reply(text, temperature=temperature, seed=seed))

    def __repr__(self) -> str:
        return f"<Chat: {len(self.history) // 2} exchanges; .say(text) answers>"


def export(run: str | Path, folder: str | Path, overwrite: bool = False) -> Path:
    """The run's best model as a Hugging Face transformers folder (`tinygpt export --to hf`)."""
    from .checkpoint import load_checkpoint
    from .cli.console import render_hint
    from .interop.card import train_command
    from .interop.export import export_hf
    from .rundir import resolve_checkpoint

    path = resolve_checkpoint(Path(run))
    ckpt = load_checkpoint(path)
    return export_hf(ckpt, path, Path(folder), render_hint(train_command(ckpt)), overwrite).folder


show_errors_briefly()
