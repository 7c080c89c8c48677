"""Write a folder of artifacts so that it appears complete or not at all."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mobile_vision_export.errors import UserError


class OutputError(UserError, OSError):
    """The output folder cannot be created or written."""


@contextmanager
def _swap_lock(folder: Path):
    """An exclusive lock on `folder` itself (Linux flocks directories), held for the duration of the block: no
    lock file is left among the artifacts. flock locks belong to the open file, so threads and processes exclude
    each other alike."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def partial_dir(final: Path):
    """Yield a temporary sibling of `final`; on success it replaces `final`, on error it is removed.

    Exports that finish at the same time into the same folder each swap their complete folder in under an
    exclusive lock (see _swap_lock), so every swap succeeds and the last one wins; the folder it replaces is
    moved to a unique hidden name and removed after the lock is released."""
    created = not final.parent.exists()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {final.parent}: {exc.strerror or exc}; choose a writable folder with --out"
        ) from None
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(final.parent.iterdir()):
            final.parent.rmdir()  # the --out folder this export made: nothing is left behind
        if isinstance(exc, UserError):  # name what the user knows, not a temporary folder that is gone
            exc.args = tuple(str(a).replace(str(tmp), str(final)) if isinstance(a, str) else a for a in exc.args)
        raise
    tmp.chmod(0o755)  # mkdtemp creates it private
    old = None
    try:
        with _swap_lock(final.parent):
            if os.path.lexists(final):
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                final.rename(old / final.name)
            try:
                tmp.rename(final)
            except BaseException:
                if old is not None:
                    (old / final.name).rename(final)  # put the previous export back
                raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            try:
                old.rmdir()  # empty once the previous export is back in place; otherwise it is kept, not lost
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(
                f"cannot move the finished export into {final}: {exc.strerror or exc}; choose a writable folder "
                "with --out"
            ) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
