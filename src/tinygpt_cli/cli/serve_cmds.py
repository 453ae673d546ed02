"""`tinygpt serve`: trained runs behind the OpenAI API, and the playground page that shows them
from the inside, live while they train (the `serve` extra: FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import typer

from .console import err, out
from .options import DEVICE

SNIPPET = '''from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
reply = client.completions.create(model="{model}", prompt="", max_tokens=100)
print(reply.choices[0].text)'''


def _served_runs(runs: list[Path] | None, runs_dir: Path):
    """A function giving the served runs' folders by name: the runs named, else every run under
    `runs_dir` (looked for again on each call: a run started later appears)."""
    from ..runs.table import discover_runs, run_paths

    def name_of(path: Path) -> str:
        try:
            return path.resolve().relative_to(runs_dir.resolve()).as_posix()
        except ValueError:
            return path.name

    if runs:
        paths = run_paths(runs, runs_dir)
        fixed = {name_of(p): p for p in paths}
        if len(fixed) < len(paths):
            from ..errors import UsageError

            twice = sorted({name_of(p) for p in paths if sum(name_of(q) == name_of(p) for q in paths) > 1})
            raise UsageError(f"two runs would be served as {twice[0]!r}: a model is named by its folder under --runs-dir",
                             "--runs-dir DIR with the runs in folders of different names")
        return lambda: fixed
    return lambda: {name_of(p): p for p in discover_runs(runs_dir)}


def _require_extra() -> None:
    from ..errors import TinyGPTError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TinyGPTError(f"tinygpt serve needs the serve extra ({e.name} is missing)", "pip install 'tinygpt[serve]'") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int):
    import socket

    from ..errors import TinyGPTError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TinyGPTError(f"cannot listen on {host}:{port}: {e.strerror or e}", "--port 0  (picks a free port)") from None
    sock.listen(128)
    return sock


def serve(
    run: list[Path] = typer.Option(None, "--run", help="A run folder to serve (runs/NAME, or just NAME); repeat it for more (default: every run under --runs-dir, found again as new ones start)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder holding run folders (default: runs/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on: this machine only by default; 0.0.0.0 opens it to the network (then --api-key is required)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: a free one, printed at the start)."),
    api_key: str = typer.Option(None, "--api-key", envvar="TINYGPT_API_KEY", help="Require this key on every API request (Authorization: Bearer KEY)."),
    queue: int = typer.Option(64, "--queue", min=1, max=4096, help="Answers that may wait at once; past that a request gets 503."),
    device: str = DEVICE,
    dtype: str = typer.Option("auto", "--dtype", help="Weights for sampling, as in generate: auto, float32, float16 or bfloat16."),
) -> None:
    """Serve trained runs: the OpenAI API at /v1 and a playground at / that shows each model from
    the inside (why each token, its attention, its surprise, its training live).

    Example: tinygpt serve --run runs/cpu   (then open http://127.0.0.1:8000)
    """
    from ..errors import TinyGPTError, UsageError

    _require_extra()
    if not _is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} opens the server to the network: anyone who reaches it could use it",
                         f"--host {host} --api-key KEY  (or keep the default --host 127.0.0.1)")
    import uvicorn

    from ..serving import ModelStore, Scheduler
    from ..server.app import create_app
    from ..server.state import ServerState
    from ..system.devices import pick_device
    from ..system.process import init_process

    runs = _served_runs(run, runs_dir)
    threads = init_process()
    store = ModelStore(runs, pick_device(device), dtype)
    names = sorted(runs())
    for name in names if run else []:  # the runs named must load now: a typo is no silent empty server
        store.get(name)
    sock = _bind(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    scheduler = Scheduler(threads, max_waiting=queue)
    app = create_app(ServerState(runs, store, scheduler, api_key), loopback=_is_loopback(host))
    if not _is_loopback(host):
        err.print(f"[yellow]warning:[/] listening on {host}: every machine that reaches this one can use the server with the key")
    served = ", ".join(names) if names else f"no run yet under {runs_dir}/ (runs that start later appear)"
    out.print(f"tinygpt serve: {served}\n  playground  {url}/\n  OpenAI API  {url}/v1\n", markup=False, soft_wrap=True)
    out.print(SNIPPET.format(url=url, key="YOUR-API-KEY" if api_key else "unused", model=names[0] if names else "RUN"), markup=False)
    out.print("\n(Ctrl-C stops the server)", markup=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5))
    failed: list[BaseException] = []

    def web() -> None:  # the web side on a thread; the models on the main thread (see serving.Scheduler)
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # uvicorn exits (SystemExit) when it cannot serve: the main thread reports it
            failed.append(e)
        finally:
            scheduler.close()

    thread = threading.Thread(target=web, name="tinygpt-web", daemon=True)
    thread.start()
    try:
        scheduler.run()  # until Ctrl-C, or the web side ends
    except KeyboardInterrupt:
        out.print("stopped", markup=False)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    if failed:
        raise TinyGPTError(f"the web server stopped: {type(failed[0]).__name__}: {failed[0]}", "TINYGPT_DEBUG=1 tinygpt serve ...  (shows why)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
