"""setup.cfg lists every package, so `pip install .` (not only `-e .`) ships all the code."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = (
        {
            ".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / "tvm_structconv").rglob("__init__.py")
        }
        | {
            ".".join(("tvm_structconv", *init.parent.relative_to(ROOT).parts))
            for init in (ROOT / "schedules").rglob("__init__.py")
        }
        | {"tvm_structconv.shipped_tuning_logs"}
    )
    assert "tvm_structconv.schedules.cpu" in on_disk
    assert listed == on_disk
    package_dir = config["options"]["package_dir"]
    assert "tvm_structconv.schedules = schedules" in package_dir
    assert "tvm_structconv.shipped_tuning_logs = tuning_logs" in package_dir


def test_the_committed_tuning_logs_ship_as_package_data():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["tvm_structconv.shipped_tuning_logs"].split()
    shipped = {path for pattern in patterns for path in (ROOT / "tuning_logs").glob(pattern)}
    committed = set((ROOT / "tuning_logs").glob("*/database_*.json"))
    assert committed and shipped == committed
