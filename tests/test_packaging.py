"""setup.cfg lists every package, so `pip install .` (not only `-e .`) ships all the code."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "tvm_structconv").rglob("__init__.py")
    } | {
        ".".join(("tvm_structconv", *init.parent.relative_to(ROOT).parts))
        for init in (ROOT / "schedules").rglob("__init__.py")
    }
    assert "tvm_structconv.schedules.cpu" in on_disk
    assert listed == on_disk
    package_dir = config["options"]["package_dir"]
    assert "tvm_structconv.schedules = schedules" in package_dir
