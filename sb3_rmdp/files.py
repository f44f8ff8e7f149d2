"""Writing files without losing the last good one: temporary file in the same folder, then a rename.

Every model, export and result that sb3-rmdp writes goes through :func:`atomic_write`: the bytes go to
a hidden temporary file next to the destination, which is renamed onto it only once it is complete
(``os.replace`` is atomic on POSIX and Windows within one file system). An exception, a full disk or a
Ctrl-C in the middle of a save therefore leaves the previous file as it was, and no half-written one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any


def with_zip_suffix(path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` with ``.zip`` added when it has no suffix, as SB3 saves it (``noext`` -> ``noext.zip``)."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".zip") if path.suffix == "" else path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path`` for writing; rename it onto ``path`` when the block succeeds.

    Missing parent folders are created. If the block raises (``KeyboardInterrupt`` included), the
    temporary file is removed and ``path`` keeps its previous content.

    :param path: the destination.
    :param mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
    :return: (as a context manager) the open temporary file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(descriptor, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it the mode a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); return the path."""
    with atomic_write(path, "w") as file:
        file.write(text)
    return pathlib.Path(path)


def output_problem(path: str | os.PathLike[str], overwrite: bool = False, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written, or ``None`` if it can (checked before a long run, not after it).

    :param path: a file to write (or, with ``folder``, a folder to write into).
    :param overwrite: whether an existing file may be replaced.
    :param folder: ``path`` is a folder (e.g. TensorBoard's log folder): it may exist already.
    :return: a sentence naming the path and what is wrong, or ``None``.
    """
    path = pathlib.Path(path)
    if path.exists():
        if folder:
            if not path.is_dir():
                return f"{path} is a file, not a folder"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"the folder {path} is not writable"
            return None
        if path.is_dir():
            return f"{path} is a folder, not a file"
        if not overwrite:
            return f"{path} exists already (pass --overwrite to replace it, or choose another path)"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so {path} cannot be created under it"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"the folder {ancestor} is not writable, so {path} cannot be written"
    return None
