"""Where tuning logs live: one MetaSchedule JSON database per target and CPU.

MetaSchedule's JSON database keys records by the function tuned, not by the target it was
tuned for, so each target gets its own folder, named by
:func:`~tvm_structconv.targets.target_key` (``x86-znver4``, ``aarch64-cortex-a76``): a log
tuned on one CPU is never applied to another. There are two roots of such folders:

* the **user's logs**, where ``structconv tune`` writes: ``$STRUCTCONV_TUNING_LOGS``, else
  ``tuning_logs/`` under the user's cache folder (:func:`~tvm_structconv.runtime_libs.cache_dir`,
  ``~/.cache/tvm_structconv``);
* the **shipped logs** of the built-in models, read-only: the repository's ``tuning_logs/``,
  installed with the package as ``tvm_structconv/shipped_tuning_logs``.

A compile applies the user's database of its target when there is one, else the shipped one
(:func:`logs_dir`). A root given by hand (``--tuning-logs DIR``) is read the same way as the
variable: ``DIR/<target key>``, or ``DIR`` itself when it already holds a database
(:func:`database_dir`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

import tvm

from tvm_structconv.messages import last_line
from tvm_structconv.runtime_libs import cache_dir
from tvm_structconv.targets import target_key

if TYPE_CHECKING:  # importing MetaSchedule is left to the functions that need it
    from tvm.s_tir import meta_schedule as ms

__all__ = [
    "LOGS_ENV",
    "DATABASE_FILES",
    "TuningLogError",
    "database_dir",
    "has_database",
    "load_database",
    "logs_dir",
    "logs_root",
    "open_database",
    "seed_from_shipped",
    "shipped_logs_root",
    "user_logs_dir",
]

#: Environment variable naming the folder that holds one tuning-log folder per target.
LOGS_ENV = "STRUCTCONV_TUNING_LOGS"
#: Files of a MetaSchedule JSON database.
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")

PathLike = Union[str, os.PathLike]


class TuningLogError(ValueError):
    """A tuning database that exists but cannot be read (a truncated or edited file)."""


def logs_root() -> Path:
    """The root of the user's tuning logs, where ``tune`` writes.

    ``$STRUCTCONV_TUNING_LOGS``, else ``<cache>/tuning_logs`` (``~/.cache/tvm_structconv``,
    or ``$STRUCTCONV_CACHE``): never the package's own folder, which may be site-packages.
    """
    if os.environ.get(LOGS_ENV):
        return Path(os.environ[LOGS_ENV])
    return cache_dir() / "tuning_logs"


def shipped_logs_root() -> Path:
    """The read-only root of the tuning logs that ship with the package (the built-in models).

    An installed package holds them as ``tvm_structconv/shipped_tuning_logs``; a checkout (the
    editable install) reads the repository's ``tuning_logs/`` beside the package.
    """
    package = Path(__file__).resolve().parent
    installed = package / "shipped_tuning_logs"
    return installed if installed.is_dir() else package.parent / "tuning_logs"


def database_dir(target: tvm.target.Target, root: PathLike) -> Path:
    """The database folder of ``target`` under ``root``: ``root`` itself when it holds a
    database, else ``<root>/<target key>``."""
    root = Path(root)
    return root if has_database(root) else root / target_key(target)


def user_logs_dir(target: tvm.target.Target, root: Optional[PathLike] = None) -> Path:
    """Where ``tune`` writes ``target``'s records: :func:`database_dir` of ``root`` (default
    :func:`logs_root`)."""
    return database_dir(target, root if root is not None else logs_root())


def logs_dir(target: tvm.target.Target, root: Optional[PathLike] = None) -> Path:
    """The folder of ``target``'s database that a compile applies.

    Under ``root`` when given (:func:`database_dir`). Otherwise the user's folder when it
    holds a database, else the shipped one when that does, else the user's (empty) folder.
    """
    if root is not None:
        return database_dir(target, root)
    user = user_logs_dir(target)
    if has_database(user):
        return user
    shipped = shipped_logs_root() / target_key(target)
    return shipped if has_database(shipped) else user


def seed_from_shipped(folder: PathLike, target: tvm.target.Target) -> bool:
    """Start a new user database in ``folder`` from the shipped records of ``target``'s CPU.

    Does nothing when ``folder`` already holds a database or nothing ships for that CPU; so
    the user's database is always a superset of the shipped one, and a compile that prefers
    it loses none of the built-in models' records. Returns whether it copied.
    """
    folder, shipped = Path(folder), shipped_logs_root() / target_key(target)
    if has_database(folder) or not has_database(shipped) or folder.resolve() == shipped.resolve():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATABASE_FILES:
        shutil.copyfile(shipped / name, folder / name)  # the content, not a read-only mode
    return True


def has_database(folder: Union[str, os.PathLike]) -> bool:
    """Whether ``folder`` holds a MetaSchedule JSON database."""
    return all((Path(folder) / name).is_file() for name in DATABASE_FILES)


def open_database(folder: Union[str, os.PathLike]) -> ms.Database:
    """The MetaSchedule JSON database in ``folder`` (created empty when missing).

    Raises
    ------
    TuningLogError
        If its files cannot be parsed.
    """
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(
            path_workload=str(folder / DATABASE_FILES[0]),
            path_tuning_record=str(folder / DATABASE_FILES[1]),
            allow_missing=True,
        )
    except RuntimeError as error:  # TVM's parser: "parallel_for_dynamic error with Cannot tokenize"
        raise TuningLogError(
            f"the tuning database in {folder} cannot be read ({last_line(error)}); "
            "move it away and tune again, or compile with --no-logs"
        ) from None


def load_database(folder: Union[str, os.PathLike]) -> Optional[ms.Database]:
    """The database in ``folder`` when there is one, else ``None``.

    Loaded once per process and kept while its files are unchanged (parsing a model's
    workloads takes seconds, and every ``compile_model`` of the target asks for it).
    """
    if not has_database(folder):
        return None
    key = (
        str(Path(folder).resolve()),
        *(os.stat(Path(folder) / name).st_mtime_ns for name in DATABASE_FILES),
    )
    if key not in _LOADED:
        _LOADED[key] = open_database(folder)
    return _LOADED[key]


_LOADED: Dict[tuple, ms.Database] = {}
