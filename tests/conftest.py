"""Shared fixtures: the real console script in a subprocess, the tiny Shakespeare copy, a small text."""

from __future__ import annotations

import http.server
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# Tests never touch the network: the Hugging Face hub reads its local cache only, and W&B
# writes its runs offline (in-process and in every CLI subprocess, which inherit these).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

# Variables that change what the CLI does; a test sets them explicitly when it means to.
_DROPPED_ENV = ("TINYGPT_SHAKESPEARE_SOURCE", "TINYGPT_DEBUG")
# Downloads in tests go to 127.0.0.1 only: never through a proxy.
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV + _PROXY_ENV}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["COLUMNS"] = "200"  # rich tables must not wrap or truncate numbers
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m tinygpt_cli ARGS...` in `cwd` (default: tmp_path); return the CompletedProcess."""

    def run(*args: str | os.PathLike, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        # stdin is `input`, else nothing: never the developer's terminal, which a prompt would wait for
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(
            [sys.executable, "-m", "tinygpt_cli", *map(str, args)],
            cwd=str(cwd if cwd is not None else tmp_path),
            env=cli_env(env),
            capture_output=True,
            **stdin,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )

    return run


@pytest.fixture
def tinygpt(capsys, monkeypatch):
    """Run the real entry point (`tinygpt_cli.cli.app.main`) in this process: (exit code, stdout, stderr)."""
    from tinygpt_cli.cli.app import main

    monkeypatch.delenv("TINYGPT_DEBUG", raising=False)

    def run(*args) -> tuple[int, str, str]:
        import torch

        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["tinygpt", *map(str, args)])
        sigint = signal.getsignal(signal.SIGINT)  # main() leaves the default for a process that exits
        threads = torch.get_num_threads()  # init_process sets them for the process: this one goes on after
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            signal.signal(signal.SIGINT, sigint)
            torch.set_num_threads(threads)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


ALARM_SECONDS = 30  # far past what a case of the hostile sweeps needs: only a hang reaches it


class Hang(BaseException):
    """Raised by the `alarm` fixture: not an Exception, so nothing under test can catch it as one."""


@pytest.fixture
def alarm():
    """A test that hangs (a read that blocks, a loop without end) fails after ALARM_SECONDS."""
    def ring(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(ALARM_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def dataset_files(tokenizer_kind: str) -> tuple[str, ...]:
    """The files of a complete dataset folder with a tokenizer of this kind (its mark aside)."""
    return ({"char": "vocab.json", "bpe": "tokenizer.json"}[tokenizer_kind], "train.bin", "val.bin", "meta.json")


def app_commands(group=None, path=()) -> dict[tuple[str, ...], object]:
    """Every leaf command of the tinygpt app, by its words (("prepare", "text"), ("train",), ...)."""
    import typer

    from tinygpt_cli.cli.app import app

    group = group or typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():
        if getattr(command, "commands", None) is not None:
            found |= app_commands(command, (*path, name))
        else:
            found[(*path, name)] = command
    return found


def assert_one_error(code: int, stderr: str, expected_code: int, *in_message: str, hint: str | None = None) -> None:
    """Exit `expected_code` and one error line holding each of `in_message` (assert_error_output)."""
    assert code == expected_code, f"exit {code}\n{stderr}"
    assert_error_output(stderr, *in_message, hint=hint, context=f"exit {code}\n{stderr}")


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The tiny run's best checkpoint, loaded: (model, checkpoint). Copy the model to change it."""
    from tinygpt_cli.checkpoint import load_model

    return load_model(tiny_run / "best.safetensors")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The local tiny Shakespeare copy: $TINYGPT_SHAKESPEARE_SOURCE or <repo>/../shared/data/tinyshakespeare.txt."""
    path = Path(os.environ.get("TINYGPT_SHAKESPEARE_SOURCE") or DEFAULT_SHAKESPEARE)
    if not path.is_file():
        pytest.skip(f"no local tiny Shakespeare copy at {path} (set TINYGPT_SHAKESPEARE_SOURCE to one)")
    return path


_WORDS = (
    "the a of and to in is was that he she it his her with as for on by at from this but not be have "
    "king queen lord lady sword crown night day love death heart blood time world man men good ill "
    "speak hear come go stay fly stand fall rise weep laugh sing dream sleep wake know think say"
).split()


def hint(error) -> str:
    """An error's `Try:` line as the CLI prints it (the core keeps command hints as data)."""
    from tinygpt_cli.cli.console import render_hint

    return render_hint(error.hint) or ""


def assert_error_output(stderr: str, *in_message: str, hint: str | None = None, context: str | None = None) -> None:
    """stderr is one `Error:` line (a ConfigError's indented rule lines may follow it), holding
    each of `in_message`, then at most one `Try:` line (holding `hint`), and nothing else: no
    traceback, no internal error."""
    context = stderr if context is None else context
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith("Error:"), context
    assert "internal error" not in stderr and "Traceback" not in stderr, context
    rules = 1
    while rules < len(lines) and lines[rules].startswith("  "):
        rules += 1
    message, rest = "\n".join(lines[:rules]), lines[rules:]
    assert rest == [] or (len(rest) == 1 and rest[0].startswith("Try:")), context
    assert all(text in message for text in in_message), context
    if hint is not None:
        assert rest and hint in rest[0], context


def assert_same_tensors(a: Path, b: Path) -> None:
    """Two safetensors files hold the same tensors, bit for bit."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    assert not different, f"tensors differ: {different[:5]}"


def wait_for(condition, proc: subprocess.Popen, log: Path | None = None, timeout: float = 120) -> None:
    """Poll until `condition()` holds; fail if the process ends first (or on the safety deadline),
    showing its output (from `log`, or from its pipes)."""
    def output() -> str:
        return log.read_text(encoding="utf-8") if log is not None else "\n".join(proc.communicate())

    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.returncode} too early:\n{output()}")
        if time.monotonic() > deadline:
            pytest.fail("the process did not reach the expected state in time" + (f":\n{output()}" if log is not None else ""))
        time.sleep(0.01)


def signal_at_step(at: int, signum: int):
    """A training reporter that sends `signum` to this very process when the step record of
    iteration `at` is reported (once): a Ctrl-C or SIGTERM at a known step."""
    from tinygpt_cli.lifecycle import TrainingReporter

    class SignalAtStep(TrainingReporter):
        sent = False

        def on_step(self, record):
            if record["iter"] == at and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signum)

    return SignalAtStep()


def stream_of(info, train, val):
    """The corpus's token stream put back together from a "spread" split's blocks."""
    import numpy as np

    parts, positions = [], {"train": 0, "val": 0}
    splits = {"train": train, "val": val}
    block, f = info.block_tokens, info.val_fraction
    for j in range(math.ceil((len(train) + len(val)) / block)):
        split = "val" if math.floor((j + 1) * f) > math.floor(j * f) else "train"
        at = positions[split]
        parts.append(splits[split][at : at + block])
        positions[split] += len(parts[-1])
    assert positions == {"train": len(train), "val": len(val)}
    return np.concatenate(parts)


def make_text(n_chars: int = 5000, seed: int = 1234) -> str:
    """Deterministic English-like text of about `n_chars` characters, over several lines."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice(".,;!?:")
        if rng.random() < 0.15:
            line = "\n" + line  # a blank line now and then
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A ~5,000-character multi-line English-like UTF-8 text file in tmp_path."""
    path = tmp_path / "small.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


def tmp_files(root: Path) -> list[Path]:
    """Leftover temporary files of atomic writes anywhere under `root`."""
    return [p for p in root.rglob("*.tmp")]


@pytest.fixture
def no_proxy(monkeypatch):
    """In-process downloads: no proxy variables, so 127.0.0.1 is reached directly."""
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, bool]] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, with_length = route
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if with_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # HTTP/1.0: without Content-Length the body ends when the connection closes
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep test output clean
        pass


class LocalServer:
    """A tiny HTTP server on 127.0.0.1; `serve(path, body)` adds a route and returns its URL."""

    def __init__(self):
        handler = type("Handler", (_Handler,), {"routes": {}})
        self.routes = handler.routes
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes, with_length: bool = True) -> str:
        self.routes[path] = (body, with_length)
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def http_server():
    server = LocalServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port was just bound and closed: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


# --- Tiny models and runs (shared by test_model/config/train/sampling/inspect) ----------------

TINY_TEXT_CHARS = 20_000

# A model and a training run small enough for a 2-core CPU: a few milliseconds per step.
TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0, bias=False)
TINY_TRAIN = dict(batch_size=8, max_iters=30, eval_interval=10, eval_iters=2, warmup_iters=2,
                  learning_rate=3e-3, min_lr=1e-4, seed=1337, device="cpu", dtype="float32")
# Subprocesses train with one thread as well: two cores shared by several torch processes
# oversubscribe badly, and one thread makes in-process and subprocess runs bit-identical.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_config(data_dir: str | os.PathLike, **overrides):
    """A RunConfig of the tiny shape and schedule above (overrides win), reading `data_dir`."""
    from tinygpt_cli.config import resolve_config

    return resolve_config("cpu", None, {**TINY_MODEL, **TINY_TRAIN, "data_dir": str(data_dir), **overrides})


def tiny_cli_flags(data_dir: str | os.PathLike, preset: bool = True, **overrides) -> list[str]:
    """The same settings as `tiny_config`, as `tinygpt train` flags; an override of None leaves
    its flag out (for a sweep's grid to set; data_dir None: no --data-dir), and preset=False leaves out `--preset cpu`."""
    from tinygpt_cli.config import flag_name

    values = {**TINY_MODEL, **TINY_TRAIN, "data_dir": None if data_dir is None else str(data_dir), **overrides}
    args = ["--preset", "cpu"] if preset else []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag_name(key) if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag_name(key), str(value)]
    return args


@pytest.fixture(autouse=True)
def torch_threads_as_found():
    """Each test leaves torch's thread count as it found it: a thread policy (init_process, a
    ThreadPolicy) sets it for the whole process, and a later test's numbers depend on it."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_one_thread():
    """torch on one intra-op thread for the session (much faster for tiny models on 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset folder (about 18,000 train and 2,000 val tokens) from `make_text`."""
    from tinygpt_cli.data.prepare import prepare_text

    root = tmp_path_factory.mktemp("tiny_dataset")
    source = root / "tiny.txt"
    source.write_text(make_text(TINY_TEXT_CHARS, seed=2024), encoding="utf-8")
    prepare_text(source, root / "data", "tiny", 0.1)
    return root / "data"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset, torch_one_thread) -> Path:
    """A finished tiny training run folder (30 iterations, block 16). Treat it as read-only."""
    from tinygpt_cli.lifecycle import train_new

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train_new(tiny_config(tiny_dataset), run)
    return run


CHAT_MODEL = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, eval_interval=100, eval_iters=4, warmup_iters=10)


def make_task(folder: Path, train: int, test: int) -> Path:
    """examples/make_chat_task.py's greeting task in `folder` (train.jsonl, test.jsonl)."""
    subprocess.run([sys.executable, str(REPO / "examples" / "make_chat_task.py"), "--out", str(folder), "--train", str(train),
                    "--test", str(test)], check=True, capture_output=True, env=cli_env())
    return folder


@pytest.fixture(scope="session")
def greetings(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("greet"), 600, 40)


@pytest.fixture(scope="session")
def chat_run(greetings, tmp_path_factory, torch_one_thread) -> Path:
    """A tiny model trained from scratch on the greetings (characters), 300 steps. Read-only."""
    from tinygpt_cli.data.prepare_chat import prepare_chat
    from tinygpt_cli.lifecycle import train_new

    root = tmp_path_factory.mktemp("chat_run")
    prepare_chat([str(greetings / "train.jsonl")], root / "data", "greet", context=64)
    train_new(tiny_config(root / "data", **{**CHAT_MODEL, "max_iters": 300, "learning_rate": 3e-3}), root / "run")
    return root / "run"


# Every model switch, pairwise: each pair of switches meets in all four combinations (the first
# five columns of the L8 orthogonal array), so 8 models cover what 32 would.
SWITCHES = [
    dict(pos_embedding=pos, norm=norm, activation=act, qk_norm=qk, bias=bias)
    for pos, norm, act, qk, bias in [
        ("learned", "layernorm", "gelu", False, False), ("learned", "layernorm", "gelu", True, True),
        ("learned", "rmsnorm", "relu2", False, False), ("learned", "rmsnorm", "relu2", True, True),
        ("rope", "layernorm", "relu2", False, True), ("rope", "layernorm", "relu2", True, False),
        ("rope", "rmsnorm", "gelu", False, True), ("rope", "rmsnorm", "gelu", True, False),
    ]
]


def switch_id(switches: dict) -> str:
    return "-".join(f"{v}" if not isinstance(v, bool) else f"{k}={int(v)}" for k, v in switches.items())


def rewrite_checkpoint(path: Path, change_tensors=None, change_meta=None, recompute: bool = True) -> None:
    """Rewrite a checkpoint with changed tensors (a dict) or metadata (JSON text values), its
    digests recomputed to match unless `recompute` is False."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from tinygpt_cli.checkpoint import metadata_digest, tensor_digest

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    if recompute:
        meta["digest"] = json.dumps(tensor_digest(tensors))
        meta["metadata_digest"] = json.dumps(metadata_digest(meta))
    save_file(tensors, str(path), metadata=meta)


def as_format_1(meta: dict[str, str]) -> None:
    """Checkpoint metadata as tinygpt wrote it before the metadata digest (format 1)."""
    del meta["metadata_digest"]
    meta["format_version"] = "1"
