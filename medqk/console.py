"""Terminal output shared by all commands: messages, progress bars, verbosity (-v / -q)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

#: 0 = quiet (-q: errors only), 1 = normal, 2 = verbose (-v).
verbosity = 1


def info(message: str) -> None:
    if verbosity >= 1:
        print(message, flush=True)


def debug(message: str) -> None:
    if verbosity >= 2:
        print(message, file=sys.stderr, flush=True)


def progress(iterable: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on stderr, hidden with -q; with ``iterable`` None, a manual bar of ``total`` steps."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=verbosity < 1, leave=False, file=sys.stderr)
