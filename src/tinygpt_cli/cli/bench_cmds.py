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

    from ..config import resolve_config
    from ..peak import measure_matmul_peak
    from ..runs.bench import time_training_steps
    from ..system.devices import pick_dtype
    from ..system.distributed import DistContext
    from ..system.process import init_process
    from ..system.threads import BUSY_CORES, OtherLoad
    from ..train import training_device

    run_config = resolve_config(preset, config, _with_dataset_vocabulary(flags))
    load = OtherLoad()
    with err.status(f"timing {repeats} x {steps} training steps…"):
        timing = time_training_steps(run_config, steps=steps, repeats=repeats, threads=init_process())
        device = training_device(run_config.train.device, DistContext())
        peak = measure_matmul_peak(run_config.model, run_config.train.batch_size, device, pick_dtype(run_config.train.dtype, device))
        others = load.since_last_look()
    max_iters = run_config.train.max_iters
    result = {
        "ms_per_iter": timing.ms_per_iter,
        "tokens_per_s": timing.tokens_per_s,
        "gflops": timing.gflops,
        "matmul_peak": peak.to_dict(),
        "utilisation": peak.utilisation(timing.gflops),
        "utilisation_of_best_shape": timing.gflops / peak.best_gflops,
        "max_iters": max_iters,
        "projected_training_seconds": timing.projected_seconds(max_iters),
        "threads": torch.get_num_threads(),
        "other_processes_cores": others,
    }
    if as_json:
        print_json(result)
        return
    threads = torch.get_num_threads() if device.type == "cpu" else None
    out.print(f"{timing.ms_per_iter:.1f} ms/iteration  |  {timing.tokens_per_s:,.0f} tokens/s  |  {timing.gflops:.1f} GFLOP/s"
              + (f"  |  {threads} thread{'s' if threads > 1 else ''}" if threads else ""))
    out.print(f"{100 * peak.utilisation(timing.gflops):.0f}% of the {peak.gflops:,.0f} GFLOP/s that this machine's {peak.dtype} "
              f"matrix products reach at this model's shapes ({100 * timing.gflops / peak.best_gflops:.0f}% of the fastest "
              f"shape's {peak.best_gflops:,.0f}: {peak.best_shape})")
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
