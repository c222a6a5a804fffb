"""Output files: checked before the work starts, written whole and all together, or not at all.

A command checks every output path first (``check_files``, ``check_folder``), so a path it cannot
write ends it with a one-line error before minutes of work. It then writes its files together
(``FileSet``, ``write_files``): each to a temporary file beside its target, and only once all are
written are they renamed over their targets. A failure leaves no half-written file, no partial
set, and every file it would have replaced as it was.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from medqk.errors import InputError

#: writes one output file to the path it is given (a temporary file beside the real target)
Writer = Callable[[Path], object]


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable_folder(label: str, folder: Path) -> None:
    """Refuse ``folder`` (or, where it does not exist yet, the nearest folder above it, in which it
    would be created) unless medqk can create files there."""
    existing = Path(folder)
    try:
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"{label}: {existing} is a file, not a folder; choose another path")
        with tempfile.TemporaryFile(dir=existing):  # the one reliable test (read-only mounts, ACLs, quotas)
            pass
    except OSError as error:
        raise InputError(f"{label}: cannot write in {existing} ({error.strerror}); choose a writable folder") from error


def check_folder(option: str, path: Path) -> None:
    """Refuse an output folder that is a file or cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder; choose another path")
    check_writable_folder(f"{option} {path}", path)


def check_files(files: dict[str, Path | None], suffixes: dict[str, Iterable[str]] | None = None) -> None:
    """Refuse output files (option -> path; None where not asked for) that cannot be written: a
    folder, something other than a regular file (a device, a pipe), a file in a folder that cannot
    be written or created, a name not ending in the option's ``suffixes``, or two options naming
    the same file."""
    named: dict[Path, str] = {}
    for option, path in files.items():
        if path is None:
            continue
        label = f"{option} {path}"
        allowed = tuple((suffixes or {}).get(option, ()))
        if allowed and path.suffix.lower() not in allowed:
            raise InputError(f"{label}: use a file name ending in {', '.join(allowed)}")
        if path.is_dir():
            raise InputError(f"{label}: is a folder; give a file name")
        if path.exists() and not path.is_file():
            raise InputError(f"{label}: is not a regular file (medqk replaces files whole); give a file name")
        check_writable_folder(label, path.parent)
        target = Path(os.path.realpath(path))
        if target in named:
            raise InputError(f"{label}: {named[target]} names the same file; give each output its own file")
        named[target] = option


class FileSet:
    """Output files written together: ``write`` puts each into a temporary file beside its target;
    leaving the ``with`` block without an error renames them all into place, with an error removes
    them and leaves the targets as they were."""

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []  # (temporary file, target)

    def __enter__(self) -> "FileSet":
        return self

    def write(self, path: Path, writer: Writer) -> None:
        target = Path(os.path.realpath(path))  # replace a symlink's target, not the link
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # the temporary file keeps the suffix: Pillow and matplotlib choose the format by it
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
            os.close(handle)
            self._staged.append((Path(name), target))
            writer(Path(name))
        except OSError as error:
            raise InputError(f"{path}: cannot write it ({error.strerror}); choose another path") from error

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            for temporary, _ in self._staged:
                temporary.unlink(missing_ok=True)

    def _commit(self) -> None:
        new_file_mode = 0o666 & ~umask()  # mkstemp creates 0600; give the mode a plain open() would
        for temporary, target in self._staged:
            try:
                mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else new_file_mode
                os.chmod(temporary, mode)
                os.replace(temporary, target)
            except OSError as error:
                raise InputError(f"{target}: cannot write it ({error.strerror}); choose another path") from error


def write_files(writers: dict[Path | None, Writer]) -> None:
    """Write every file (path -> writer; a None path, an output not asked for, is skipped) all
    together, or none (see ``FileSet``)."""
    with FileSet() as files:
        for path, writer in writers.items():
            if path is not None:
                files.write(path, writer)
