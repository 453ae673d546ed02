"""`tinygpt prepare` and `tinygpt vocab` through the real console script, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest
from conftest import assert_error_output, assert_one_error, cli_env, dataset_files, tmp_files

import tinygpt_cli
from tinygpt_cli.data.dataset import OWNER_MARK, SHAKESPEARE_SHA256

SHAKESPEARE_NUMBERS = ("65", "1,003,854", "111,540")


def assert_nothing_written(root, folder) -> None:
    """No dataset left behind in `folder` (no folder, or at least no meta.json), no temp files under `root`."""
    assert not (folder / "meta.json").exists()
    assert not tmp_files(root)


# --- error cases ----------------------------------------------------------------------------------


def test_missing_file(run_cli, tmp_path):
    proc = run_cli("prepare", "text", "nothere.txt")
    assert_one_error(proc.returncode, proc.stderr, 2, "no such file", "nothere.txt")
    assert not (tmp_path / "data").exists()
    assert_nothing_written(tmp_path, tmp_path / "data" / "nothere")


def test_empty_file(run_cli, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    proc = run_cli("prepare", "text", "empty.txt")
    assert_one_error(proc.returncode, proc.stderr, 1, "empty.txt is empty")
    assert not (tmp_path / "data").exists()
    assert_nothing_written(tmp_path, tmp_path / "data" / "empty")


def test_non_utf8_file_names_the_byte_offset(run_cli, tmp_path):
    (tmp_path / "latin1.txt").write_bytes(("hello world\n" * 50).encode() + "café".encode("latin-1") + b"\n" * 300)
    proc = run_cli("prepare", "text", "latin1.txt")
    assert_one_error(proc.returncode, proc.stderr, 1, "not UTF-8", "0xe9", "byte offset 603")
    assert not (tmp_path / "data").exists()


def test_text_too_short(run_cli, tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be.\n" * 5)
    proc = run_cli("prepare", "text", "short.txt")
    assert_one_error(proc.returncode, proc.stderr, 1, "too short", "at least 256", hint="--val-fraction")
    assert not (tmp_path / "data").exists()
    assert_nothing_written(tmp_path, tmp_path / "data" / "short")


def test_checksum_mismatch_then_no_verify(run_cli, tmp_path, small_text):
    proc = run_cli("prepare", "shakespeare", "--source", small_text)
    assert_one_error(proc.returncode, proc.stderr, 1, "checksum mismatch", str(small_text), hint="--no-verify")
    assert f"--source {small_text}" in proc.stderr
    folder = tmp_path / "data" / "shakespeare"
    assert not folder.exists()
    assert_nothing_written(tmp_path, folder)

    proc = run_cli("prepare", "shakespeare", "--source", small_text, "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["text_bytes"] == small_text.stat().st_size
    assert f"{meta['train_tokens']:,}" in proc.stdout and f"{meta['vocab_size']:,}" in proc.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted((*dataset_files("char"), OWNER_MARK))

    # with verification back on, the edited copy in the folder is not taken for tiny Shakespeare
    proc = run_cli("prepare", "shakespeare", "--source", small_text)
    assert_one_error(proc.returncode, proc.stderr, 1, "checksum mismatch", hint="--no-verify")


def test_source_from_environment(run_cli, tmp_path, small_text):
    proc = run_cli("prepare", "shakespeare", env={"TINYGPT_SHAKESPEARE_SOURCE": str(small_text)})
    assert_one_error(proc.returncode, proc.stderr, 1, "checksum mismatch", str(small_text), hint="--no-verify")
    assert not (tmp_path / "data").exists()


def test_unwritable_data_dir(run_cli, tmp_path, small_text):
    # tests run as root, so permissions do not stop a write: route the folder through a regular file
    (tmp_path / "afile").write_text("in the way\n")
    proc = run_cli("prepare", "text", small_text, "--data-dir", "afile/sub")
    assert_one_error(proc.returncode, proc.stderr, 1, "cannot create data folder", "afile/sub", hint="--data-dir")
    assert (tmp_path / "afile").read_text() == "in the way\n"
    assert not tmp_files(tmp_path)
    assert not (tmp_path / "data").exists()


def test_data_dir_is_a_file(run_cli, tmp_path, small_text):
    (tmp_path / "afile").write_text("in the way\n")
    proc = run_cli("prepare", "text", small_text, "--data-dir", "afile")
    assert_one_error(proc.returncode, proc.stderr, 1, "cannot create data folder", "a file is in the way")
    assert (tmp_path / "afile").read_text() == "in the way\n"
    assert not tmp_files(tmp_path)


def test_unsupported_url_scheme(run_cli, tmp_path):
    proc = run_cli("prepare", "shakespeare", "--source", "ftp://example.com/input.txt")
    assert_one_error(proc.returncode, proc.stderr, 2, "unsupported URL scheme 'ftp'", hint="--source")
    assert not (tmp_path / "data").exists()


def test_name_with_path_is_refused(run_cli, tmp_path, small_text):
    proc = run_cli("prepare", "text", small_text, "--name", "../evil")
    assert_one_error(proc.returncode, proc.stderr, 2, "invalid dataset name", "'../evil'")
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "evil").exists()


def test_vocab_of_nothing(run_cli, tmp_path):
    proc = run_cli("vocab", "nowhere")
    assert_one_error(proc.returncode, proc.stderr, 2, "no dataset folder or text file at nowhere", hint="tinygpt prepare")


def test_vocab_of_damaged_dataset(run_cli, tmp_path, small_text):
    from tinygpt_cli.data.prepare import prepare_text

    folder = tmp_path / "data" / "small"
    prepare_text(small_text, folder, "small", 0.1)
    raw = bytearray((folder / "val.bin").read_bytes())
    raw[0] ^= 0xFF
    (folder / "val.bin").write_bytes(bytes(raw))
    proc = run_cli("vocab", folder)
    assert_one_error(proc.returncode, proc.stderr, 1, "damaged or incomplete", hint="tinygpt prepare")


# --- downloads from a local server ----------------------------------------------------------------


def test_download_success(run_cli, tmp_path, http_server, shakespeare_path):
    url = http_server.serve("/input.txt", shakespeare_path.read_bytes())
    proc = run_cli("prepare", "shakespeare", "--source", url)
    assert proc.returncode == 0, proc.stderr
    for number in SHAKESPEARE_NUMBERS:
        assert number in proc.stdout
    assert url in proc.stdout
    meta = json.loads((tmp_path / "data" / "shakespeare" / "meta.json").read_text(encoding="utf-8"))
    assert meta["sha256"] == SHAKESPEARE_SHA256 and meta["source"] == url
    assert not (tmp_path / "data" / "shakespeare" / "input.txt").exists()  # no copy of the text


def test_download_checksum_mismatch(run_cli, tmp_path, http_server, small_text):
    url = http_server.serve("/input.txt", small_text.read_bytes())
    proc = run_cli("prepare", "shakespeare", "--source", url)
    assert_one_error(proc.returncode, proc.stderr, 1, "checksum mismatch", url, f"{small_text.stat().st_size:,} bytes", hint="--no-verify")
    assert not (tmp_path / "data").exists()


def test_download_404(run_cli, tmp_path, http_server):
    proc = run_cli("prepare", "shakespeare", "--source", http_server.url("/nope.txt"))
    assert_one_error(proc.returncode, proc.stderr, 1, "download failed", "HTTP 404", hint="--source")
    assert not (tmp_path / "data").exists()


def test_download_connection_refused(run_cli, tmp_path, closed_port_url):
    proc = run_cli("prepare", "shakespeare", "--source", closed_port_url)
    assert_one_error(proc.returncode, proc.stderr, 1, "cannot reach", closed_port_url, hint="--source")
    assert not (tmp_path / "data").exists()


# --- tiny Shakespeare from the local copy ---------------------------------------------------------


def test_prepare_shakespeare_then_nothing_to_do(run_cli, tmp_path, shakespeare_path):
    proc = run_cli("prepare", "shakespeare", "--source", shakespeare_path)
    assert proc.returncode == 0, proc.stderr
    for number in SHAKESPEARE_NUMBERS:
        assert number in proc.stdout
    assert "1,115,394 characters" in proc.stdout
    assert SHAKESPEARE_SHA256 in proc.stdout
    assert "nothing to do" not in proc.stdout
    folder = tmp_path / "data" / "shakespeare"
    mtimes = {name: (folder / name).stat().st_mtime_ns for name in dataset_files("char")}

    proc = run_cli("prepare", "shakespeare", "--source", shakespeare_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    for number in SHAKESPEARE_NUMBERS:
        assert number in proc.stdout
    assert {name: (folder / name).stat().st_mtime_ns for name in dataset_files("char")} == mtimes


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory, shakespeare_path):
    from tinygpt_cli.data.prepare import prepare_shakespeare

    folder = tmp_path_factory.mktemp("prepared") / "shakespeare"
    prepare_shakespeare(folder, str(shakespeare_path), True, 0.1)
    return folder


def test_vocab_json_of_dataset(run_cli, shakespeare_dir):
    proc = run_cli("vocab", shakespeare_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["size"] == 65 and len(obj["chars"]) == 65 and len(obj["counts"]) == 65
    assert sum(obj["counts"]) == 1_115_394
    assert obj["chars"][0] == "\n" and obj["chars"][1] == " "
    assert all(c > 0 for c in obj["counts"])


def test_vocab_table_of_dataset(run_cli, shakespeare_dir):
    proc = run_cli("vocab", shakespeare_dir, "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    assert "65 characters, 1,115,394 in all" in proc.stdout
    assert "\\n" in proc.stdout and "␣" in proc.stdout
    assert "(60 more)" in proc.stdout


def test_vocab_of_text_file(run_cli, small_text):
    text = small_text.read_text(encoding="utf-8")
    proc = run_cli("vocab", small_text, "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["chars"] == sorted(set(text))
    assert sum(obj["counts"]) == len(text)
    assert obj["counts"][obj["chars"].index("\n")] == text.count("\n")

    proc = run_cli("vocab", small_text)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(set(text))} characters, {len(text):,} in all" in proc.stdout


# --- version and help -----------------------------------------------------------------------------


def test_version(run_cli):
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tinygpt {tinygpt_cli.__version__}"


_HELP_PROBE = """
import sys
sys.argv = ["tinygpt", *sys.argv[1:]]
from tinygpt_cli.cli.app import main
try:
    main()
    code = None
except SystemExit as e:
    code = e.code
print("EXIT", code)
print("TORCH-LOADED" if "torch" in sys.modules else "TORCH-NOT-LOADED")
"""


@pytest.mark.parametrize("args", [["--help"], ["prepare", "shakespeare", "--help"]])
def test_help_does_not_import_torch(tmp_path, args):
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE, *args], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert "EXIT 0" in proc.stdout
    assert "TORCH-NOT-LOADED" in proc.stdout, proc.stdout


def test_vocab_without_a_path_shows_the_most_recently_prepared_dataset(run_cli, small_text, tmp_path):
    assert run_cli("vocab").returncode == 2  # nothing prepared yet: a usage error with a way out
    prose = tmp_path / "prose.txt"
    prose.write_text("Ünïcödé prose, all of it. " * 100, encoding="utf-8")
    assert run_cli("prepare", "text", small_text, "--name", "first").returncode == 0
    assert run_cli("prepare", "text", prose, "--name", "prose").returncode == 0
    proc = run_cli("vocab", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Ü" in json.loads(proc.stdout)["chars"]
    assert str(Path("data") / "prose") in proc.stderr


def test_shell_completion_completes_commands_and_flags(tmp_path):
    def complete(words: str, index: int) -> list[str]:
        env = cli_env({"_TINYGPT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(index)})
        script = Path(sys.executable).parent / "tinygpt"  # the installed command: completion keys on its name
        proc = subprocess.run([str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("tinygpt tr", 1) == ["train"]
    assert "--n-layer" in complete("tinygpt train --n-la", 2)


def test_resume_help_says_unset_flags_keep_the_runs_values(run_cli):
    help_text = " ".join(run_cli("resume", "--help", env={"COLUMNS": "300"}).stdout.split())
    assert "Total optimiser steps. (default: the run's saved value)" in help_text
    assert "(default 5000)" not in help_text


def test_prepare_json_describes_the_dataset(run_cli, small_text):
    proc = run_cli("prepare", "text", small_text, "--name", "small", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "small" and info["reused"] is False and info["train_tokens"] + info["val_tokens"] > 0
    assert json.loads(run_cli("prepare", "text", small_text, "--name", "small", "--json").stdout)["reused"] is True


def test_prepare_summary_keeps_the_whole_sha256_at_80_columns(run_cli, small_text):
    proc = run_cli("prepare", "text", small_text, "--name", "small", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    digest = json.loads(run_cli("prepare", "text", small_text, "--name", "small", "--json").stdout)["sha256"]
    assert digest in "".join(proc.stdout.replace("│", "").split())
