"""Where tuning logs live: one MetaSchedule JSON database per target, under ``tuning_logs/``.

MetaSchedule's JSON database keys records by the function tuned, not by the target it was
tuned for, so each target gets its own folder, named by
:func:`~tvm_structconv.targets.target_key` (``tuning_logs/x86-znver4``): a log tuned on one
CPU is never applied to another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

import tvm

from tvm_structconv.messages import last_line
from tvm_structconv.targets import target_key

if TYPE_CHECKING:  # importing MetaSchedule is left to the functions that need it
    from tvm.s_tir import meta_schedule as ms

__all__ = [
    "LOGS_ENV",
    "DATABASE_FILES",
    "TuningLogError",
    "has_database",
    "load_database",
    "logs_dir",
    "logs_root",
    "open_database",
]

#: Environment variable naming the folder that holds one tuning-log folder per target.
LOGS_ENV = "STRUCTCONV_TUNING_LOGS"
#: Files of a MetaSchedule JSON database.
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


class TuningLogError(ValueError):
    """A tuning database that exists but cannot be read (a truncated or edited file)."""


def logs_root() -> Path:
    """The folder of tuning logs: ``$STRUCTCONV_TUNING_LOGS``, else the checkout's ``tuning_logs``.

    The checkout's folder is the one beside the package (an editable install, which is what
    the README installs); an installed package without one uses ``./tuning_logs``.
    """
    if os.environ.get(LOGS_ENV):
        return Path(os.environ[LOGS_ENV])
    beside = Path(__file__).resolve().parent.parent / "tuning_logs"
    return beside if beside.is_dir() else Path("tuning_logs")


def logs_dir(target: tvm.target.Target, root: Union[str, os.PathLike, None] = None) -> Path:
    """The folder holding ``target``'s tuning database: ``<root>/<target key>``."""
    return Path(root if root is not None else logs_root()) / target_key(target)


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
