"""The one on-disk cache: where it lives, how entries are keyed, and how they are read and written.

Everything tether caches sits under :func:`default_cache_dir` (``$TETHER_CACHE``, default
``~/.cache/tether``; ``~`` is expanded): converted models (``models/``), reference log-prob tables
(``reflogps/``, written by training and by ``tether eval``), the reference's hidden states at response
tokens for reference logits (``refstates/``), the reference's generations (``generations/``) and a
reward-model judge's scores (``judge/``). An entry's name is a hash of everything that determines its
content; a reference's tables and hidden states are named here (:func:`reference_table_path`,
:func:`reference_states_path`), so that training and ``tether eval`` find each other's tables. An entry
that cannot be read (a torn write, a foreign file) is a miss and is recomputed, never an error. Writes are
atomic (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tether.errors import whole_or_nothing


def default_cache_dir() -> Path:
    """``$TETHER_CACHE`` (``~`` expanded), else ``~/.cache/tether``."""
    return Path(os.environ.get("TETHER_CACHE", "~/.cache/tether")).expanduser()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    advice = "or point TETHER_CACHE (reference.cache_dir) at another disk; nothing half-written was left"
    with whole_or_nothing(lambda: tmp.unlink(missing_ok=True), path.parent, "writing the cache", advice):
        write(tmp)
        os.replace(tmp, path)


_HASHES: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of the whole file (about 0.5 s per GB), memoised in this process by path and the full
    ``stat`` identity (device, inode, size, mtime and ctime in ns): a rewrite or a copied mtime changes
    ctime, so a changed file is hashed again."""
    st = path.stat()
    ident = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if ident not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
        _HASHES[ident] = digest.hexdigest()
    return _HASHES[ident]


def hash_key(*parts: Any) -> str:
    """A short hash of JSON-able ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached_json(path: Path, compute: Callable[[], Any], valid: Callable[[Any], bool]) -> tuple[Any, str]:
    """The JSON value at ``path`` when it reads, was stored under this key (the file name's stem, kept
    inside the file) and passes ``valid``, else ``compute()`` written there. Returns (value, ``hit`` or
    ``miss``)."""
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and saved.get("key") == path.stem and valid(saved.get("value")):
                return saved["value"], "hit"
        except (OSError, ValueError):
            pass  # unreadable: recompute and overwrite
    value = compute()
    entry = {"key": path.stem, "value": value}
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(entry, ensure_ascii=False)))
    return value, "miss"


def cache_key(model_fingerprint: str, examples: Sequence, extra: dict) -> str:
    """Hash of everything that changes reference log-probs: weights, token ids (data, template, lengths)."""
    h = hashlib.sha256()
    h.update(model_fingerprint.encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    for e in examples:
        mask = getattr(e, "chosen_mask", None)  # part of the key only when set: old keys stay valid
        h.update(json.dumps([e.prompt_ids, e.chosen_ids, e.rejected_ids, *([mask] if mask else [])]).encode())
    return h.hexdigest()


def reference_table_path(
    root: Path, fingerprint: str, examples: Sequence, *, dtype: str, device: str
) -> Path:
    """Where the reference's log-prob table of ``examples`` is cached under ``root``: keyed by what
    determines its numbers (the reference's weights fingerprint, the token ids, the dtype and the device
    type) and nothing about who asks, so that a table training computed is found by ``tether eval`` on the
    same data and reference, and the other way round."""
    return root / "reflogps" / f"{cache_key(fingerprint, examples, {'dtype': dtype, 'device': device})}.pt"


def reference_states_path(
    root: Path, fingerprint: str, examples: Sequence, *, dtype: str, device: str
) -> Path:
    """Where the reference's hidden states at the response tokens of ``examples`` are cached (keyed as
    :func:`reference_table_path`)."""
    extra = {"dtype": dtype, "device": device, "states": 1}
    return root / "refstates" / f"{cache_key(fingerprint, examples, extra)}.pt"


def _read_table(path: Path, n: int, key: str) -> Tensor | None:
    """The cached table at ``path``; None when absent, unreadable (e.g. truncated by a kill), of the
    wrong shape or made for another key (the key is stored inside), so that it is recomputed and
    overwritten rather than failing the run or giving another model's log-probs."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: torch raises RuntimeError, EOFError, UnpicklingError...
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    table = saved.get("table")
    ok = isinstance(table, Tensor) and table.shape == (n, 2) and table.dtype.is_floating_point
    return table if ok else None


def load_or_fill(
    path: Path,
    needed: Sequence[int],
    compute: Callable[[list[int]], Tensor],
    *,
    n: int,
    is_main: bool,
    barrier: Callable[[], None],
    key: str | None = None,
) -> tuple[Tensor, str]:
    """The cached [n, 2] table at ``path`` with every ``needed`` row filled in.

    Rows missing from the cache (NaN) are computed with ``compute(rows)`` (all processes) and the merged
    table is written back by the main process, atomically. Status: ``hit`` (nothing computed), ``miss``
    (no cache) or ``partial`` (some rows added). ``key`` (default: the file name's stem) is stored in
    the file and must match on load.
    """
    key = key or path.stem
    table = _read_table(path, n, key)
    status = "miss" if table is None else "hit"
    if table is None:
        table = torch.full((n, 2), float("nan"))
    todo = [i for i in needed if torch.isnan(table[i, 0])]
    if not todo:
        return table, status
    fresh = compute(todo).cpu()
    table[todo] = fresh[todo]
    if is_main:
        _atomic_write(path, lambda tmp: torch.save({"key": key, "table": table}, tmp))
    barrier()
    return table, "miss" if status == "miss" else "partial"


def _read_states(path: Path, n: int, shape: tuple[int, int], dtype: torch.dtype) -> dict | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        ok = (
            isinstance(entry, dict)
            and entry.get("key") == path.stem  # made for this key (the key is stored inside)
            and tuple(entry["states"].shape) == tuple(shape)
            and entry["states"].dtype == dtype
            and entry["done"].shape == (n,)
        )
    except Exception:  # torn or foreign: recompute
        return None
    return entry if ok else None


def load_or_fill_states(
    path: Path,
    needed: Sequence[int],
    compute: Callable[[Tensor, list[int]], Tensor],
    *,
    n: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    is_main: bool,
    barrier: Callable[[], None],
) -> tuple[Tensor, str]:
    """The cached ``shape`` tensor of per-example rows (a reference's hidden states at response tokens)
    at ``path`` with the rows of every ``needed`` example filled in.

    ``compute(states, examples)`` returns ``states`` with those examples' rows filled. Status as for
    :func:`load_or_fill`.
    """
    entry = _read_states(path, n, shape, dtype)
    status = "miss" if entry is None else "hit"
    if entry is None:
        entry = {"states": torch.zeros(shape, dtype=dtype), "done": torch.zeros(n, dtype=torch.bool)}
    states, done = entry["states"], entry["done"].clone()
    todo = [i for i in needed if not done[i]]
    if not todo:
        return states, status
    states = compute(states, todo)
    done[todo] = True
    if is_main:
        entry = {"key": path.stem, "states": states, "done": done}
        _atomic_write(path, lambda tmp: torch.save(entry, tmp))
    barrier()
    return states, "miss" if status == "miss" else "partial"
