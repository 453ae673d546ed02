"""The layers stay layers: the core imports neither typer nor rich, command modules never import
each other, and no module imports its way back to itself (imports inside functions count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "tinygpt_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module that `path` imports, anywhere in the file, as absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports module x
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}
CORE = [name for name in MODULES if not name.startswith("tinygpt_cli.cli")]
COMMANDS = [name for name in MODULES if name.endswith("_cmds")]


# The package's layers, lowest first (the README's file tree follows them): a module imports from
# its own layer and the ones below, never from one above. The flat core is split by the wing it
# needs (interop) between its two parts.
LAYERS = [
    {"errors"},
    {"system"},  # process plumbing: files, devices, threads, torchrun, random generators
    {"data"},  # text to token ids
    {"config", "model", "params", "peak", "optim", "evaluate", "sampling", "conversation", "tasks", "checkpoint", "rundir", "train", "timekeeper", "tracking"},
    {"interop"},  # transformers folders, export, pretrained weights
    {"lifecycle"},  # a run's life: it starts from pretrained weights too
    {"runs"},  # many runs: the table, sweeps, benchmarks, plots
    {"inside"},  # looking inside a model (its pictures use the plots' writer)
    {"serving"},  # many clients' answers from one process: the models, the scheduler
    {"server"},  # the web stack over it: the OpenAI API, the playground
    {"cli", "notebook", "__main__"},  # the front ends: the command line, and the notebook's calls
]


def layer_of(name: str) -> int:
    part = name.split(".")[1]
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


@pytest.mark.parametrize("name", [n for n in MODULES if n != "tinygpt_cli"])
def test_a_module_imports_only_from_its_layer_or_below(name):
    upward = sorted(m for m in GRAPH[name] if m != "tinygpt_cli" and layer_of(m) > layer_of(name))
    assert not upward, f"{name} (layer {layer_of(name)}) imports from a layer above it: {upward}"


def test_the_layers_name_every_part_of_the_package_and_nothing_else():
    parts = {name.split(".")[1] for name in MODULES if name != "tinygpt_cli"}
    assert parts == set().union(*LAYERS)


@pytest.mark.parametrize("name", [n for n in MODULES if n != "tinygpt_cli"])
def test_nothing_but_the_version_comes_from_the_package_root(name):
    """`from tinygpt_cli import X` reaches any layer through the root's lazy exports: the layer
    check above would not see it."""
    parts = {n.split(".")[1] for n in MODULES if n != "tinygpt_cli"}
    from_root = {m for m in imports_of(MODULES[name]) if m.startswith("tinygpt_cli.") and m.split(".")[1] not in parts}
    assert from_root <= {"tinygpt_cli.__version__"}


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_neither_typer_nor_rich(name):
    assert not {m for m in imports_of(MODULES[name]) if m.split(".")[0] in ("typer", "rich", "click")}


WEB_STACK = ("fastapi", "starlette", "uvicorn")


@pytest.mark.parametrize("name", [n for n in CORE if not n.startswith("tinygpt_cli.server")])
def test_only_the_server_imports_the_web_stack(name):
    assert not {m for m in imports_of(MODULES[name]) if m.split(".")[0] in WEB_STACK}


def test_the_web_stack_check_sees_the_server():
    assert {"fastapi", "uvicorn"} <= {m.split(".")[0] for n in MODULES for m in imports_of(MODULES[n])}


@pytest.mark.parametrize("name", COMMANDS)
def test_command_modules_never_import_each_other(name):
    assert not (GRAPH[name] & set(COMMANDS))


def test_no_module_imports_its_way_back_to_itself():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for imported in sorted(GRAPH[name] - {"tinygpt_cli"}):  # the package's lazy __init__ exports nothing eagerly
            visit(imported, path + [name])
        done.add(name)

    for name in MODULES:
        visit(name, [])


def app_command_names() -> list[str]:
    import typer

    from tinygpt_cli.cli.app import app

    return sorted(typer.main.get_command(app).commands)


COMMAND_LINE = re.compile(rf"\btinygpt ({'|'.join(app_command_names())})\b")  # every command of the app


def strings_outside_docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("name", CORE)
def test_the_core_never_spells_a_command_line(name):
    """Hints that name a command are `errors.Command` data; the CLI writes them out."""
    assert not [s for s in strings_outside_docstrings(MODULES[name]) if COMMAND_LINE.search(s)]


@pytest.mark.parametrize("command", app_command_names())
def test_the_command_line_check_sees_every_spelled_command(tmp_path, command):
    spelled = tmp_path / "spelled.py"
    spelled.write_text(f'"""Used by `tinygpt {command}`."""\nHINT = f"tinygpt {command} {{1}}"\n')
    assert [s for s in strings_outside_docstrings(spelled) if COMMAND_LINE.search(s)] == [f"tinygpt {command} "]


def test_the_import_graph_sees_the_imports_inside_functions():
    """The checks above would pass on an empty graph: make sure they see what is there."""
    assert "tinygpt_cli.cli.reporting" in GRAPH["tinygpt_cli.cli.train_cmds"]
    assert "tinygpt_cli.lifecycle" in GRAPH["tinygpt_cli.cli.train_cmds"]  # imported inside the command
    assert len(COMMANDS) >= 5 and len(CORE) >= 15


def test_every_name_the_package_exports_exists():
    import tinygpt_cli

    missing = [name for name in tinygpt_cli.__all__ if not hasattr(tinygpt_cli, name)]
    assert missing == []


# --- reads of files ------------------------------------------------------------------------

# The calls that open, map, copy or read a file. A path the user names (a text, a tokenizer, a
# transformers folder, a run, a dataset) is read only through fsutil's readers, which never block
# on a FIFO and never read past a limit; what is left are these, each in the one function named,
# on a path that is not the user's to name or on a file being written.
FILE_CALLS = {"open", "fdopen", "read_text", "read_bytes", "fromfile", "memmap", "mmap", "load", "load_file", "from_file",
              "safe_open", "urlopen", "copyfile", "copy", "copy2", "copytree"}
AUDITED_FILE_CALLS = {
    ("tinygpt_cli.system.threads", "_busy_seconds", "open"): "/proc/stat",
    ("tinygpt_cli.system.devices", "last_level_cache_bytes", "read_text"): "the CPU cache sizes under /sys",
    ("tinygpt_cli.rundir", "locked", "open"): "the run's lock file, made by os.open with O_CREAT",
    ("tinygpt_cli.rundir", "check_not_in_use", "open"): "the run's lock file, opened only to take the lock",
    ("tinygpt_cli.lifecycle", "_log", "open"): "metrics.jsonl, appended to under the run's lock",
    ("tinygpt_cli.data.dataset", "download", "urlopen"): "a download, read up to MAX_DOWNLOAD_BYTES",
    ("tinygpt_cli.data.dataset", "owned_folder", "open"): "the folder's owner mark, made by os.open with O_CREAT",
    ("tinygpt_cli.data.dataset", "read_split", "memmap"): "a split file, a regular one (checked), whose digest load_dataset checks first",
    ("tinygpt_cli.data.dataset", "read_split", "fromfile"): "a split file, a regular one (checked), whose digest load_dataset checks first",
    ("tinygpt_cli.data.prepare", "__init__", "open"): "SplitWriter's temporary split files, written",
    ("tinygpt_cli.data.prepare", "_move_tail", "memmap"): "the temporary train split prepare has just written",
    ("tinygpt_cli.data.prepare", "_move_tail", "open"): "the temporary split files prepare writes",
    ("tinygpt_cli.data.corpus", "_spool", "fdopen"): "the temporary copy of standard input, written",
    ("tinygpt_cli.data.tokenizer", "load_tokenizer", "load"): "Vocabulary.load, which reads with fsutil.read_json",
    ("tinygpt_cli.data.tokenizer", "load_tokenizer", "from_file"): "BPETokenizer.from_file, which reads with fsutil.read_user_file",
    ("tinygpt_cli.interop.hf", "read_hf_folder", "safe_open"): "model.safetensors, a regular file (is_file) that safetensors maps and checks",
    ("tinygpt_cli.server.app", "index", "read_bytes"): "the playground page, a file of the package",
    ("tinygpt_cli.server.app", "static", "read_bytes"): "the playground's script and style, files of the package, by a fixed name",
}


def file_calls(path: Path) -> set[tuple[str, str]]:
    """(function, call) for each call in FILE_CALLS that `path` makes (`open(...)`, `x.read_text()`,
    `os.open(...)`), named after the function it is made in ("<module>" at the top level)."""
    found = set()

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                name = child.func.attr if isinstance(child.func, ast.Attribute) else getattr(child.func, "id", None)
                if name in FILE_CALLS:
                    found.add((function, name))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    return found


@pytest.mark.parametrize("name", [n for n in MODULES if n != "tinygpt_cli.system.fsutil"])
def test_files_are_read_through_fsutil_or_on_an_audited_path(name):
    unaudited = sorted(call for call in file_calls(MODULES[name]) if (name, *call) not in AUDITED_FILE_CALLS)
    assert not unaudited, f"{name} calls {unaudited}: read a user's path with fsutil.read_user_file, read_json or open_for_reading"


def test_the_file_read_check_sees_a_plain_read(tmp_path):
    reader = tmp_path / "reader.py"
    reader.write_text("from pathlib import Path\ndef f(p):\n    return Path(p).read_text(), open(p).read()\n")
    assert file_calls(reader) == {("f", "read_text"), ("f", "open")}


def test_every_audited_file_call_is_still_made():
    """An entry that no longer matches a call is stale: the list shows what is really there."""
    stale = [key for key in AUDITED_FILE_CALLS if key[1:] not in file_calls(MODULES[key[0]])]
    assert stale == []


# --- the README's map of the code ------------------------------------------------------------

def readme_tree() -> set[str]:
    """The paths the README's file tree names, relative to src/tinygpt_cli/ ("data/vocab.py")."""
    readme = (PACKAGE.parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## The code, file by file", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    paths, folders = set(), []
    for line in block.splitlines()[1:]:  # the first line is src/tinygpt_cli/ itself
        branch = line.find("── ")
        depth, name = (branch - 1) // 4, line[branch + 3:].split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.add("/".join([*folders, name]))
    return paths


def test_the_readme_tree_names_every_module_and_nothing_else():
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    tree = readme_tree()
    assert sorted(modules - tree) == [], "modules missing from the README's file tree"
    assert sorted(tree - modules) == [], "the README's file tree names files that do not exist"


def test_every_file_of_the_package_that_is_not_python_is_package_data():
    """A wheel holds a package's .py files, and its other files only when pyproject.toml names
    them (the playground's assets, the shipped scaling rule): an editable install would not notice."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((PACKAGE.parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    data = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data
    def listed(path: Path) -> bool:  # by a glob of any package above it, relative to that package
        owners = [parent for parent in path.parents if parent.is_relative_to(PACKAGE)]  # namespace packages too (server/)
        return any(fnmatch.fnmatch(str(path.relative_to(owner)), g)
                   for owner in owners for g in globs.get(".".join(owner.relative_to(PACKAGE.parent).parts), []))

    assert [str(p.relative_to(PACKAGE)) for p in data if not listed(p)] == []
