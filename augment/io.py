"""Atomic file writes, and the rules for where capaug may write and what it may delete.

Every file capaug writes goes to a temporary name in the same folder and is renamed into place, so a killed
process leaves either the old file or the new one, never half of one; a full disk is one line naming the file.

Output folders: an output never equals, lies inside or contains an input (symlinks resolved), and every output
folder capaug creates carries a marker, `.capaug-output` (JSON: the command and the entries it wrote). Replacing
or clearing a folder (`--overwrite`) needs that marker and removes only the entries it lists; a non-empty folder
without it, or with files capaug did not write, is refused, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import yaml

from .errors import CapaugError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MARKER = ".capaug-output"
OWN_PREFIX = ".capaug"  # the marker, the run lock and its holder record: capaug's bookkeeping in any folder
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def _os_errors_as_lines(path: Path, previous: str, permissions: bool = True) -> Iterator[None]:
    """A full disk (or, with `permissions`, a place capaug may not write) becomes one line naming `path`;
    `previous` says what is left of it."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise CapaugError(f"disk full while writing {path}: {previous}; free some space and rerun") from None
        if permissions and e.errno in NOT_WRITABLE:
            raise CapaugError(f"cannot write {path}: {e.strerror}; choose a writable location") from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    previous = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    with _os_errors_as_lines(path, previous):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _os_errors_as_lines(path, previous, permissions=False):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions of a plain open()
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it replaces `path` only if the block succeeds.

    The new folder carries the marker (written by `command`); an existing `path` is replaced only when it is
    empty or a marked folder holding nothing but what capaug wrote (`check_replaceable`).
    """
    path = Path(path)
    check_replaceable(path, overwrite=True)
    previous = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    with _os_errors_as_lines(path, previous):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with _os_errors_as_lines(path, previous, permissions=False):
            yield tmp
            mark_output(tmp, command, [entry.name for entry in tmp.iterdir()])
        check_replaceable(path, overwrite=True)  # still only capaug's files after the work
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def save_image(path: str | os.PathLike, image) -> None:
    """Save a PIL image atomically; the format follows the file extension."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp)


def save_figure(path: str | os.PathLike, fig) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _data_folder(data: str | os.PathLike) -> Optional[Path]:
    """The folder an input's images live in: the folder itself, or a CSV's folder (its paths are relative to it)."""
    path = Path(data).expanduser().resolve()
    if path.is_file():
        return path.parent if path.suffix.lower() == ".csv" else None
    return path if path.is_dir() else None


def ensure_outside(output: str | os.PathLike, data_root: str | os.PathLike | None) -> None:
    """Refuse an output location inside the input data folder (capaug never writes there)."""
    if data_root is None or str(data_root).startswith("builtin:"):
        return
    out, root = Path(output).expanduser().resolve(), _data_folder(data_root)
    if root is not None and (out == root or root in out.parents):
        raise CapaugError(f"output {output} is inside the data folder {data_root}; choose a path outside it")


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse an output that is a file (or lies under one), equals, lies inside or contains an input (data
    folders, files, models; symlinks resolved; None and `builtin:` entries skipped), or cannot be written."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    if out.exists() and not out.is_dir():
        raise CapaugError(f"output {out} is a file; choose a folder path")
    blocker = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CapaugError(f"output {out} lies under {blocker}, which is a file; choose a folder path")
    for given in inputs:
        if given is None or str(given).startswith("builtin:"):
            continue
        ensure_outside(out, given)
        source = Path(given).expanduser().resolve()
        if source == resolved or resolved in source.parents:
            raise CapaugError(f"output {out} contains the input {given}; choose a folder outside the inputs")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CapaugError(f"output {out} is not writable ({existing} is read-only for this user); choose another location")
    return out


def _owned(name: str, entries: Iterable[str]) -> bool:
    """Capaug's bookkeeping, an entry it recorded, or an atomic write's leftover temporary of one."""
    return name.startswith(OWN_PREFIX) or any(name == e or name.startswith(f".{e}.") for e in entries)


# Folders written by capaug before markers existed, known by a file only capaug writes there, and what they held.
LEGACY_OUTPUTS = {
    "capaug.json": ("capaug.json", "config.json", "diffusion_pytorch_model.safetensors", "scheduler"),
    "report.md": ("metrics.json", "per_seed.csv", "report.md", "recall_by_arm.png", "confusion.png",
                  "class_histogram.png", "real_vs_synthetic.png"),
}


def read_marker(folder: str | os.PathLike) -> Optional[dict]:
    """The folder's marker, or None when capaug did not create it (or the marker is unreadable).

    A model or downstream folder from a capaug version before markers gets its old file list as the marker, so
    resuming an old run can replace it; anything else in it still counts as foreign."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        legacy = [files for sign, files in LEGACY_OUTPUTS.items() if (folder / sign).is_file()]
        return {"written_by": "capaug (before markers)", "entries": list(legacy[0])} if legacy else None
    return marker if isinstance(marker, dict) and isinstance(marker.get("entries"), list) else None


def mark_output(folder: str | os.PathLike, command: str, entries: Iterable[str] = ()) -> None:
    """Record in `folder`'s marker that `command` writes the top-level `entries` (added to those already listed)."""
    folder = Path(folder)
    before = read_marker(folder) or {}
    created = before.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    listed = sorted({*before.get("entries", []), *(e for e in entries if e != MARKER)})
    write_json(folder / MARKER, {"written_by": f"capaug {command}".strip(), "created": created, "entries": listed})


def check_replaceable(out: str | os.PathLike, overwrite: bool, resume: bool = False) -> None:
    """What an existing output folder may hold: anything when new or empty; else it must carry the marker, and
    then `resume` continues it, `overwrite` replaces it if it holds only what capaug wrote, otherwise refuse."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CapaugError(f"output {out} is a file; choose a folder path")
    names = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else []
    if not [n for n in names if not n.startswith(OWN_PREFIX)]:
        return
    marker = read_marker(out)
    if marker is None:
        raise CapaugError(f"output folder {out} is not empty and was not written by capaug (no {MARKER}); "
                          "choose a new folder: capaug never deletes files it did not write")
    if resume:
        return
    if not overwrite:
        raise CapaugError(f"output folder {out} already exists and is not empty; choose another path or pass --overwrite")
    foreign = [n for n in names if not _owned(n, marker["entries"])]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise CapaugError(f"output folder {out} holds files capaug did not write ({shown}); "
                          "move them away or choose a new folder: --overwrite never deletes them")


def clear_output_dir(out: str | os.PathLike) -> None:
    """Remove what capaug wrote in a marked folder (the entries its marker lists), refusing foreign files."""
    out = Path(out)
    if not out.is_dir():
        return
    check_replaceable(out, overwrite=True)
    marker = read_marker(out)
    for entry in out.iterdir():
        if marker is not None and _owned(entry.name, marker["entries"]) and not entry.name.startswith(OWN_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def claim_output_dir(
    out: str | os.PathLike,
    command: str,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    entries: Iterable[str] = (),
) -> Path:
    """Make `out` ready for `command`: checked against the inputs, cleared of capaug's files on `overwrite`,
    continued on `resume`, created and marked as writing `entries`. Foreign files are never touched."""
    out = check_output(out, inputs)
    check_replaceable(out, overwrite=overwrite, resume=resume and not overwrite)
    if overwrite:
        clear_output_dir(out)
    with _os_errors_as_lines(out, "nothing was written"):
        out.mkdir(parents=True, exist_ok=True)
    mark_output(out, command, entries)
    return out
