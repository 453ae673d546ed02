"""`tinygpt bench`: what this machine does for a configuration, and how long a run would take."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import MODEL_FIELDS, TRAIN_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import err, out, print_json, rough_duration
from .options import JSON

BENCH_FLAGS = [f for f in MODEL_FIELDS + TRAIN_FIELDS if f not in ("init_from", "log")]  # no run: nothing to start from or log


@with_config_flags(BENCH_FLAGS)
def bench(
    flags: dict,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    steps: int = typer.Option(10, "--steps", min=1, max=1000, help="Timed training steps per repeat (at most 1,000)."),
    repeats: int = typer.Option(3, "--repeats", min=1, max=100, help="Repeats; the median is reported (at most 100)."),
    as_json: bool = JSON,
) -> None:
    """Time real training steps on synthetic data and project the run's duration (--data-dir: a
    dataset's vocabulary size, instead of typing --vocab-size).

    Example: tinygpt bench --preset cpu --data-dir data/shakespeare
    """
    import torch

    from ..runs.bench import matmul_peak_gflops, time_training_steps
    from ..config import resolve_config
    from ..system.process import init_process
    from ..system.threads import BUSY_CORES, OtherLoad

    run_config = resolve_config(preset, config, _with_dataset_vocabulary(flags))
    load = OtherLoad()
    with err.status(f"timing {repeats} x {steps} training steps…"):
        timing = time_training_steps(run_config, steps=steps, repeats=repeats, threads=init_process())
        others = load.since_last_look()
        peak = matmul_peak_gflops() if run_config.train.device in ("auto", "cpu") and not torch.cuda.is_available() else None
    max_iters = run_config.train.max_iters
    result = {
        "ms_per_iter": timing.ms_per_iter,
        "tokens_per_s": timing.tokens_per_s,
        "gflops": timing.gflops,
        "matmul_peak_gflops": peak,
        "max_iters": max_iters,
        "projected_training_seconds": timing.projected_seconds(max_iters),
        "threads": torch.get_num_threads(),
        "other_processes_cores": others,
    }
    if as_json:
        print_json(result)
        return
    out.print(f"{timing.ms_per_iter:.1f} ms/iteration  |  {timing.tokens_per_s:,.0f} tokens/s  |  {timing.gflops:.1f} GFLOP/s"
              + (f" ({100 * timing.gflops / peak:.0f}% of the {peak:.0f} GFLOP/s matmul peak)" if peak else "")
              + f"  |  {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}")
    out.print(f"projected: {max_iters:,} iterations take about {rough_duration(timing.projected_seconds(max_iters))} of training steps "
              "(plus evaluation)")
    if others >= BUSY_CORES:
        err.print(f"[yellow]warning:[/] other processes kept {others:.1f} of {len(load.cores)} cores busy while this ran: "
                  "on a quiet machine the steps are faster than measured here", soft_wrap=True)


def _with_dataset_vocabulary(flags: dict) -> dict:
    """--data-dir given: the dataset's vocabulary size (its meta.json), which --vocab-size must not contradict."""
    from ..data.dataset import read_dataset_info
    from ..errors import TinyGPTError, UsageError

    if flags.get("data_dir") is None:
        return flags
    info = read_dataset_info(Path(flags["data_dir"]))
    if info is None:
        raise TinyGPTError(f"no prepared dataset in {flags['data_dir']}", "pass the folder that prepare wrote, or --vocab-size N")
    if flags.get("vocab_size") not in (None, info.vocab_size):
        raise UsageError(f"--vocab-size {flags['vocab_size']}: the dataset in {flags['data_dir']} has {info.vocab_size:,} tokens",
                         "pass one of --vocab-size and --data-dir")
    return {**flags, "vocab_size": info.vocab_size}


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
