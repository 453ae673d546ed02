"""What training and runs look like on a terminal: the live training display and loss curves.

Shared by `train`, `resume` and `sweep` (the display) and by `train` and `plot --terminal`
(the curve), so that no command module imports another.
"""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import suppress
from typing import Any

from .console import format_duration, out


def _ascii_only() -> bool:
    return not (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").startswith("utf")


def print_curve(records: list[dict], title: str | None = None) -> None:
    """A compact loss curve on stdout (used at the end of `train` and by `plot --terminal`)."""
    from ..runs.plots import terminal_curve

    curve = terminal_curve(records, ascii=_ascii_only())
    if curve:
        if title:
            out.print(title, markup=False)
        out.print(curve, markup=False, highlight=False, soft_wrap=True)


def fit_line(parts: list[str], width: int) -> str:
    """`parts` on one line two spaces apart, one space apart when that does not fit in `width`,
    and else folded between two parts (never inside one: a number or a time stays whole)."""
    for gap in ("  ", " "):
        if len(line := gap.join(parts)) <= width:
            return line
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += " " + part
        else:
            lines.append("  " + part)
    return "\n".join(lines)


def live_columns(width: int) -> list:
    """The live training line's columns for a terminal `width` wide: the bar and the learning
    rate go first when it is narrow, so the time left is never cut."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    metrics = "loss {task.fields[loss]}  val {task.fields[val]}" + ("  lr {task.fields[lr]}" if width >= 100 else "")
    return [TextColumn("iter {task.completed:>6.0f}/{task.total:.0f}"), *([BarColumn()] if width >= 120 else []),
            TextColumn(metrics + "  {task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]


def make_reporter(interactive: bool):
    """A TrainingReporter that draws a live progress line on a terminal and plain lines otherwise."""
    from rich.markup import escape
    from rich.progress import Progress

    from ..lifecycle import TrainingReporter

    class Reporter(TrainingReporter):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.final_bar: Progress | None = None
            self.sample_prompt = ""
            self.chat = False
            self.target: float | None = None
            self.task = None
            self.max_iters = 0

        def on_start(self, info) -> None:
            cfg = info.config
            self.sample_prompt, self.chat = info.sample_prompt, info.chat
            self.target = info.config.train.stop_at_val_loss
            self.max_iters = cfg.train.max_iters
            out.print(
                f"run {info.run}  |  {info.n_params / 1e6:.2f}M parameters  |  {info.tokens_per_iter:,} tokens/iteration  |  "
                f"device {info.device} ({info.dtype}){'  |  ' + info.threads if info.threads else ''}  |  {cfg.model.n_layer} layers, {cfg.model.n_head} heads, "
                f"{cfg.model.n_embd} wide, block {cfg.model.block_size} tokens"
            )
            for kind, text in info.notes():
                if kind == "warning":
                    text += "; for a quick CPU run try: tinygpt train --preset cpu"
                out.print(("" if kind == "info" else f"[yellow]{kind}:[/] ") + escape(text), soft_wrap=True)
            if interactive:
                self.progress = Progress(*live_columns(out.width), console=out, transient=False)
                self.progress.start()
                self.task = self.progress.add_task("train", total=self.max_iters, completed=info.start_iter,
                                                   loss="-", val="-", lr="-", tps="-")

        def on_step(self, record: dict[str, Any]) -> None:
            fields = dict(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tps=f"{record['tokens_per_s']:,.0f}")
            if self.progress is not None:
                self.progress.update(self.task, completed=record["iter"], **fields)
            elif record["iter"] % 100 == 0 or record["iter"] == self.max_iters:
                out.print(fit_line([f"iter {record['iter']:>6}", f"loss {fields['loss']}", f"lr {fields['lr']}",
                                    f"{fields['tps']} tok/s", f"elapsed {format_duration(record['elapsed'])}"], out.width))

        def on_plan(self, record: dict[str, Any]) -> None:
            self.max_iters = record["max_iters"]
            if self.progress is not None:
                self.progress.update(self.task, total=self.max_iters)
            if not record["calibrating"]:  # the calibration's changes show in the total alone
                (self.progress.console if self.progress is not None else out).print(f"[yellow]note:[/] {escape(record['text'])}")

        def on_eval(self, record: dict[str, Any]) -> None:
            star = " *" if record["improved"] else ""
            line = fit_line([f"eval {record['iter']:>6}", f"train {record['train_loss']:.4f}",
                             f"val {record['val_loss']:.4f} ({record['val_bits_per_byte']:.3f} bits/byte)",
                             f"best {record['best_val_loss']:.4f}{star}", f"elapsed {format_duration(record['elapsed'])}"], out.width)
            if self.progress is not None:
                self.progress.update(self.task, val=f"{record['val_loss']:.4f}")
                self.progress.console.print(line)
            else:
                out.print(line)

        def on_final_eval(self, windows: int):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from .console import err

            if self.progress is not None:
                self.progress.stop()
                self.progress = None
            if not err.is_terminal:
                return lambda n: None
            bar = Progress(TextColumn("scoring best.safetensors on the validation split"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("windows"), TimeRemainingColumn(), console=err, transient=True)
            task = bar.add_task("final", total=windows)
            bar.start()
            self.final_bar = bar  # on_end stops it
            return lambda n: bar.advance(task, n)

        def on_stop_requested(self, signum: int, evaluating: bool) -> None:
            # Inside the signal handler: a raw write, no console lock that the interrupted code may hold.
            now = b"cutting this evaluation short" if evaluating else b"finishing this step"
            with suppress(OSError):  # stderr gone (a pipe whose reader died): the stop goes on regardless
                os.write(2, b"\nstopping: " + now + b", then saving last.safetensors -- Ctrl-C again to abort without saving\n")

        def on_end(self, status: str, result: dict[str, Any]) -> None:
            for display in (self.progress, self.final_bar):
                if display is not None:
                    display.stop()
            if status == "finished":
                best = result["best_val_loss"]
                reached = f" (reached --stop-at-val-loss {self.target:g})" if self.target is not None and best <= self.target else ""
                out.print(f"done: {result['iteration']:,} iterations in {format_duration(result['elapsed'])}{reached}  ->  "
                          f"{result['run']}/best.safetensors", soft_wrap=True)
                final = result["final_eval"]
                if final is not None:
                    over = "the whole validation split" if final["whole_split"] else "windows spread through the validation split"
                    out.print(fit_line([f"best.safetensors (iteration {final['iteration']:,}):",
                                        f"val loss {final['val_loss']:.4f} ({final['val_bits_per_byte']:.3f} bits/byte)",
                                        f"over {over}, {final['tokens']:,} tokens",
                                        f"(the estimates above drew {result['estimated_over_tokens']:,})"], out.width), markup=False)
                from ..rundir import RunDir

                print_curve(RunDir(result["run"]).read_metrics())
                prompt = f" --prompt {shlex.quote(self.sample_prompt)}" if self.sample_prompt else ""
                then = "chat" if self.chat else "generate"
                out.print(f"next: tinygpt {then} --run {shlex.quote(str(result['run']))}{prompt}", markup=False)

    return Reporter()
