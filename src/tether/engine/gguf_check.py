"""Check a GGUF file's structure before any reader allocates from its header.

A GGUF header declares counts and lengths (how many tensors, how many metadata entries, each string's and
array's length, each tensor's shape and offset) that readers trust: a crafted file with a count of 2**63
makes them allocate or loop for as long as it says, and a truncated one ends in ``struct.error``. This walk
reads the header as bytes (a memory map, nothing allocated from a declared length) and checks every length
against the bytes that are left and every tensor's data against the file's end, so that what it passes,
``gguf``'s reader and transformers can read. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from tether.errors import TetherError

#: Fixed sizes of the scalar value types (GGUFValueType ids): uint8 ... float64; 8 = string, 9 = array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_DEPTH = 8


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, n: int) -> int:
        if n < 0 or n > self.size - self.pos:
            raise _Bad(
                f"declares {n} bytes at offset {self.pos}, past the end of the file ({self.size} bytes)"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self) -> bytes:
        n = self.u64()
        start = self.take(n)
        return self.buf[start : start + n]

    def value(self, kind: int, depth: int = 0) -> int | None:
        """Skip one value of type ``kind``; returns it when it is an unsigned integer (for alignment)."""
        if kind in _SCALAR_SIZES:
            start = self.take(_SCALAR_SIZES[kind])
            return int.from_bytes(self.buf[start : self.pos], "little") if kind in (4, 10) else None
        if kind == _STRING:
            self.string()
            return None
        if kind == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise _Bad(f"arrays nested more than {_MAX_ARRAY_DEPTH} deep")
            item, count = self.u32(), self.u64()
            if item in _SCALAR_SIZES:  # fixed-size items: one bounds check for the whole array
                self.take(count * _SCALAR_SIZES[item])
                return None
            if count > (self.size - self.pos) // 8:  # every string or array item takes at least 8 bytes
                raise _Bad(f"an array declares {count} items, more than the file can hold")
            for _ in range(count):
                self.value(item, depth + 1)
            return None
        raise _Bad(f"unknown metadata value type {kind} at offset {self.pos - 4}")


def _text(name: bytes) -> str:
    return name[:60].decode("utf-8", "replace")


def check_gguf(path: str | Path) -> None:
    """Raise :class:`TetherError` (one line naming ``path``) unless its header, metadata and tensor table
    are consistent with its size. Reads only the header (memory-mapped)."""
    try:
        with open(path, "rb") as fh:
            if Path(path).stat().st_size < 24:
                raise _Bad("shorter than a GGUF header (24 bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _walk(_Reader(buf))
    except _Bad as e:
        raise TetherError(f"{path}: cannot load GGUF: not a valid GGUF file ({e})") from None
    except OSError as e:
        raise TetherError(f"{path}: cannot read model file ({e.strerror or e})") from None


def _walk(r: _Reader) -> None:
    if bytes(r.buf[r.take(4) : r.pos]) != b"GGUF":
        raise _Bad("bad magic bytes")
    version = r.u32()
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version}; versions 2 and 3 are read")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_kv > (r.size - r.pos) // 13 or n_tensors > (r.size - r.pos) // 24:  # the smallest entry's bytes
        raise _Bad(f"declares {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold")
    alignment = 32
    keys: set[bytes] = set()
    for _ in range(n_kv):
        key = r.string()
        if key in keys:  # the reader refuses a key given twice
            raise _Bad(f"metadata key '{_text(key)}' appears twice")
        keys.add(key)
        kind = r.u32()
        found = r.value(kind)
        if key == b"general.alignment":
            if kind != 4:  # the reader takes only a uint32 here
                raise _Bad("general.alignment is not a uint32")
            alignment = found or 0
    if alignment <= 0 or alignment & (alignment - 1):
        raise _Bad(f"general.alignment {alignment} is not a power of two")
    tensors = []
    names: set[bytes] = set()
    for _ in range(n_tensors):
        name = r.string()
        if name in names:
            raise _Bad(f"tensor '{_text(name)}' appears twice")
        names.add(name)
        n_dims = r.u32()
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Bad(f"tensor '{_text(name)}' has {n_dims} dimensions (1 to {_MAX_DIMS})")
        dims = [r.u64() for _ in range(n_dims)]
        kind, offset = r.u32(), r.u64()
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise _Bad(f"tensor '{_text(name)}' has unknown type {kind}") from None
        count = 1
        for d in dims:
            count *= d
        if count % block:
            raise _Bad(f"tensor '{_text(name)}': {count} values are not whole blocks of {block}")
        tensors.append((name, offset, count // block * block_bytes))
    data_start = -(-r.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if data_start + offset + nbytes > r.size:
            raise _Bad(f"tensor '{_text(name)}' ends past the end of the file (truncated?)")
