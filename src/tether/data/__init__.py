"""Data: reading rows from files (:mod:`.read`, other public formats rewritten by :mod:`.formats`), the
kinds of rows (:mod:`.kinds`), checking their fields (:mod:`.check`), rendering them to text
(:mod:`.render`), tokenizing them into examples (:mod:`.tokenize`), splitting and reshaping examples
(:mod:`.split`), and the bundled verifiable tasks (:mod:`.tasks`). Imports only :mod:`tether.errors`.

Each module imports only those before it in that order (formats, read, kinds, check, render, tokenize,
split); the names below are the package's public ones."""

from tether.data.check import check_rows
from tether.data.kinds import Kind, detect_kind
from tether.data.read import Row, read_rows
from tether.data.split import shuffled, split_pairs, split_train_eval, with_mismatched_completions
from tether.data.tokenize import Example, Tokenization, TokenizedData, fingerprint, tokenize_rows

__all__ = [
    "Example",
    "Kind",
    "Row",
    "Tokenization",
    "TokenizedData",
    "check_rows",
    "detect_kind",
    "fingerprint",
    "read_rows",
    "shuffled",
    "split_pairs",
    "split_train_eval",
    "tokenize_rows",
    "with_mismatched_completions",
]
