"""Issue 30, "trust under faults": what a cluster, a shared machine or a hostile file does to a run, each
answered by one line and the documented exit code (2: the input, 1: the machine), nothing earlier lost and
nothing half-written left. The hostile *inputs* (alias bombs, crafted GGUF files, huge configs) are also in
the one-line catalogue of ``test_bad_input.py``; this file holds what needs a real fault: a resource limit,
a read-only or full file system (a real tmpfs mount, where this machine lets root mount one)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tether.cli import main as cli_main
from tether.training.sweep import _point_name

from tiny import pair_rows, tiny_model_dir, write_jsonl


def _one_line(err: str, code: int, got: int, *words: str) -> str:
    assert "Traceback" not in err, err
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


@contextlib.contextmanager
def _mount(path: Path, *options: str) -> Iterator[Path]:
    """A real tmpfs at ``path`` (skips the test where this machine does not let us mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


BOMB_CHECK = textwrap.dedent(
    """
    import json, resource, sys, time
    from tether.config import load_config
    from tether.errors import ConfigError
    # the limit counts from here: what the interpreter, torch and tether already hold is not the config's
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/statm") as f:
        virtual = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + 500 * 2**20, resource.RLIM_INFINITY))
    t0 = time.process_time()
    try:
        load_config(sys.argv[1], sys.argv[2:])
        line = None
    except ConfigError as e:
        line = str(e)
    used = time.process_time() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - held
    print(json.dumps({"line": line, "cpu_s": used, "grown": grown}))
    """
)


def _bomb(levels: int, width: int = 9) -> str:
    return (
        "["
        + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else '0'] * width)}]" for i in range(levels))
        + "]"
    )


@pytest.mark.parametrize(
    "where",
    ["unknown_key", "known_key", "override"],
)
def test_a_config_bomb_is_refused_within_2_cpu_seconds_and_500_mb(tmp_path: Path, where: str) -> None:
    bomb = _bomb(12)  # 9**12 ≈ 2.8e11 values once expanded, from 600 bytes
    base = {"model": {"name": "smollm2"}, "data": {"train": "x.jsonl"}}
    text = yaml.safe_dump(base)
    overrides: list[str] = []
    if where == "unknown_key":
        text += f"extra: {bomb}\n"
    elif where == "known_key":
        text = f"model: {{name: smollm2}}\ndata: {{train: {bomb}}}\n"
    else:
        overrides = [f"data.train={bomb}"]
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_CHECK, str(path), *overrides], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["line"] and "more than 100000 values once its aliases are expanded" in out["line"]
    assert len(out["line"]) < 300  # never the expanded value
    assert out["cpu_s"] < 2.0 and out["grown"] < 500 * 2**20, out


def test_a_long_value_is_echoed_cut_to_80_characters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "x.jsonl"}, "train": {"lr": ["x" * 1000] * 500}}))
    got = cli_main(["validate", str(path)])
    line = _one_line(capsys.readouterr().err, 2, got, "train.lr", "expected a number")
    assert len(line) < 200 and line.endswith("…")


def test_generation_longer_than_the_context_is_refused_before_weights_load(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tiny_model_dir(tmp_path / "model")
    context = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    (model / "model.safetensors").write_bytes(b"garbage: a weight load would fail differently")
    capsys.readouterr()
    got = cli_main(["generate", str(model), "--prompt", "hi", "--max-new-tokens", "10000000"])
    _one_line(capsys.readouterr().err, 2, got, "--max-new-tokens 10000000", f"context of {context} tokens")


def _tiny_config(tmp_path: Path, out: Path) -> Path:
    model = tiny_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    cfg = {
        "model": {"name": str(model)},
        "data": {"train": str(data), "max_length": 64},
        "method": {"name": "dpo"},
        "reference": {"cache_dir": str(tmp_path / "refcache")},
        "train": {"output_dir": str(out), "batch_size": 2, "max_steps": 2, "progress": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_an_output_dir_on_a_read_only_mount_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with _mount(tmp_path / "ro", "ro", "size=1m") as ro:
        cfg = _tiny_config(tmp_path, ro / "run")
        capsys.readouterr()
        got = cli_main(["train", str(cfg)])
        _one_line(capsys.readouterr().err, 1, got, f"train.output_dir: {ro / 'run'}", "read-only file system")


def test_an_output_dir_name_longer_than_the_file_system_allows_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = _tiny_config(tmp_path, tmp_path / ("r" * 300))
    capsys.readouterr()
    got = cli_main(["train", str(cfg)])
    line = _one_line(capsys.readouterr().err, 1, got, "file name too long", "shorter name")
    assert len(line) < 250


def test_a_sweep_point_name_stays_within_the_file_system_limit() -> None:
    short = _point_name({"method.name": "dpo", "method.beta": "0.1"})
    assert short == "dpo_beta=0.1"  # unchanged where it fits
    a = _point_name({"data.train": "/data/" + "a" * 400 + "/x.jsonl"})
    b = _point_name({"data.train": "/data/" + "a" * 400 + "/y.jsonl"})
    assert len(a.encode()) <= 200 and len(b.encode()) <= 200 and a != b
    assert a.startswith("train=-data-aaaa")
