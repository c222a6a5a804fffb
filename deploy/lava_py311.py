"""Make lava-nc 0.10 importable on Python 3.11.

lava-nc 0.10 (the last release) declares dataclass fields whose default is a dataclass instance
(``x: ByteEncoder = ByteEncoder()`` in ``lava/magma/compiler/var_model.py``). Python 3.11 rejects
such unhashable defaults ("mutable default ... use default_factory"), so ``import lava.magma``
fails. The fix rewrites those defaults as ``field(default_factory=ByteEncoder)``; nothing else in
Lava needed changing on this machine. ``install.sh`` runs this module once after installing Lava;
running it again is harmless.

    python -m medqk.deploy.lava_py311
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

_MUTABLE_DEFAULT = re.compile(r"^(\s+\w+: ByteEncoder) = ByteEncoder\(\)$", re.MULTILINE)
_DATACLASS_IMPORT = "from dataclasses import dataclass, InitVar"


def var_model_path() -> Path:
    spec = importlib.util.find_spec("lava")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lava-nc is not installed: run `bash install.sh` from the medqk repository")
    return Path(list(spec.submodule_search_locations)[0]) / "magma" / "compiler" / "var_model.py"


def patch_source(source: str) -> str:
    """Return var_model.py's source with every ByteEncoder() default made a default_factory."""
    patched = _MUTABLE_DEFAULT.sub(r"\1 = field(default_factory=ByteEncoder)", source)
    if patched != source and "field" not in source.split(_DATACLASS_IMPORT, 1)[0] + _DATACLASS_IMPORT:
        patched = patched.replace(_DATACLASS_IMPORT, _DATACLASS_IMPORT + ", field", 1)
    return patched


def main() -> int:
    path = var_model_path()
    source = path.read_text()
    patched = patch_source(source)
    if patched == source:
        print(f"[medqk] Lava already importable on Python {sys.version_info.major}.{sys.version_info.minor}: {path}")
        return 0
    tmp = path.with_suffix(".py.medqk-tmp")
    tmp.write_text(patched)
    tmp.replace(path)
    print(f"[medqk] patched {path} for Python 3.11 (ByteEncoder defaults -> default_factory)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
