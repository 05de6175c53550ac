"""Mutation testing of the core modules with mutmut: which planted bugs do the tests catch?

For each group of core modules (``structure``, ``manifest``, ``nn``, ``ops``, ``schedules``,
``transform``) mutmut plants its mutants one at a time and runs, for each, the fast tests of
that group that cover the mutated function; a mutant is *killed* when a test fails, *survived*
when they all pass, *no tests* when no test of the group reaches it. Too slow for CI's default
run (ops, schedules and transform compile with TVM for every mutant): run it by hand, module
group by module group, and triage the survivors (a new test, or why it is equivalent).

    pip install -e ".[mutation]"
    nice -n 15 python benchmarks/mutation.py                       # every group (hours on 2 cores)
    nice -n 15 python benchmarks/mutation.py --groups structure,manifest
    python benchmarks/mutation.py --groups ops --show-survivors    # diffs of the survivors

Each group runs in a copy of the working tree under ``--workdir`` (the tree itself is never
mutated, so other work goes on in it), with ``schedules/`` moved to where it is installed
(``tvm_structconv/schedules``) so that its mutants are imported. A rerun reuses that copy's
results for unchanged functions (mutmut's cache); ``--fresh`` starts over.

Writes ``benchmarks/results/mutation-<date>.json`` (every mutant's status) and ``.md`` (per
group: killed, survived, no tests, timeouts, the score and the command).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the fast tests that guard them."""

    name: str
    mutate: Sequence[str]  # mutmut ``only_mutate`` globs, relative to the staged copy
    tests: Sequence[str]


GROUPS = [
    Group(
        "structure",
        ["tvm_structconv/structure.py"],
        ["tests/test_structure.py", "tests/test_structure_contract.py"],
    ),
    Group(
        "manifest",
        ["tvm_structconv/manifest.py"],
        [
            "tests/test_manifest.py",
            "tests/test_manifest_format.py",
            "tests/test_manifest_matching.py",
            "tests/test_detect_edges.py",
        ],
    ),
    Group("nn", ["tvm_structconv/nn/*"], ["tests/nn"]),
    Group("ops", ["tvm_structconv/ops.py"], ["tests/test_ops.py", "tests/test_ops_blocks.py"]),
    Group("schedules", ["tvm_structconv/schedules/*"], ["tests/schedules"]),
    Group("transform", ["tvm_structconv/transform/*"], ["tests/transform"]),
]

#: mutmut's status names, as ``mutmut results --all true`` prints them.
KILLED, SURVIVED, NO_TESTS, TIMEOUT = "killed", "survived", "no tests", "timeout"
#: A run stopped early (Ctrl-C) leaves the rest of its mutants unchecked.
NOT_CHECKED = "not checked"
#: Statuses of a mutant the tests caught (a mutant that crashes the interpreter is caught).
CAUGHT = (KILLED, TIMEOUT, "segfault")


def stage(group: Group, workdir: pathlib.Path, fresh: bool) -> pathlib.Path:
    """A copy of the working tree for ``group``, ``schedules/`` inside the package."""
    target = workdir / group.name
    if fresh and target.exists():
        shutil.rmtree(target)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file() or name.startswith(("benchmarks/", "docs/", "tuning_logs/")):
            continue
        staged = target / ("tvm_structconv/" + name if name.startswith("schedules/") else name)
        if staged.is_file() and staged.read_bytes() == source.read_bytes():
            continue
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staged)
    with open(target / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write(mutmut_config(group))
    return target


def mutmut_config(group: Group) -> str:
    """The ``[tool.mutmut]`` table of a group (appended to the staged ``pyproject.toml``)."""

    def toml_list(items: Sequence[str]) -> str:
        return "[" + ", ".join(json.dumps(item) for item in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["tvm_structconv"]\n'
        f"only_mutate = {toml_list(group.mutate)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(group.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not slow"]\n'
        # TVM's and torch's thread pools do not survive a fork from a process that ran tests
        'process_isolation = "forkserver"\n'
        # a mutant that loops forever is stopped at 5x its tests' time (mutmut's default: 15x)
        "timeout_multiplier = 5.0\n"
    )


def statuses_of(staged: pathlib.Path) -> Dict[str, str]:
    """``{mutant name: status}`` of the mutants in a staged copy."""
    listed = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=staged,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    statuses = {}
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def run_group(group: Group, workdir: pathlib.Path, fresh: bool, max_children: int) -> Dict:
    """Run mutmut on one group; return every mutant's status and the counts."""
    staged = stage(group, workdir, fresh)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    print(f"[mutation] {group.name}: {' '.join(command[2:])} in {staged}", file=sys.stderr)
    try:
        subprocess.run(command, cwd=staged, check=False, stdout=subprocess.DEVNULL)
    except KeyboardInterrupt:  # stopped early: record what was checked
        print(f"[mutation] {group.name}: stopped, recording what was checked", file=sys.stderr)
    statuses = statuses_of(staged)
    counts = collections.Counter(statuses.values())
    return {"group": asdict(group), "counts": dict(counts), "statuses": statuses}


def score(counts: Dict[str, int]) -> float:
    """Caught (killed, timed out or crashed) over every mutant a test reaches."""
    caught = sum(counts.get(status, 0) for status in CAUGHT)
    reached = caught + counts.get(SURVIVED, 0)
    return caught / reached if reached else float("nan")


def markdown(results: List[Dict]) -> str:
    """The per-group table of the runs recorded, each with its commit and command."""
    lines = [
        f"# Mutation testing, {datetime.date.today()} (mutmut)",
        "",
        "| group | modules | tests | mutants | killed | timeout | survived | no tests "
        "| not checked | score | commit | command |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        counts, group = result["counts"], result["group"]
        lines.append(
            f"| {group['name']} | {', '.join(group['mutate'])} | {' '.join(group['tests'])} "
            f"| {sum(counts.values())} | {counts.get(KILLED, 0) + counts.get('segfault', 0)} "
            f"| {counts.get(TIMEOUT, 0)} "
            f"| {counts.get(SURVIVED, 0)} | {counts.get(NO_TESTS, 0)} "
            f"| {counts.get(NOT_CHECKED, 0)} "
            f"| {100 * score(counts):.1f} % | {result['commit']} | `{result['command']}` |"
        )
    lines += [
        "",
        "Score: (killed + timeout) / (killed + timeout + survived); *killed* includes mutants "
        "that crash the interpreter (segfault); *no tests*: no test of the group reaches the "
        "mutated function (listed apart, not in the score); *not checked*: left when a run was "
        "stopped early (the score is over the mutants checked).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = None) -> int:
    """Run the groups asked for and write the JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--groups",
        default=",".join(g.name for g in GROUPS),
        help="comma-separated groups (default: all): " + ", ".join(g.name for g in GROUPS),
    )
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "structconv-mutation"),
        help="where the staged copies live (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated files to mutate instead of the group's (one group only), "
        "e.g. tvm_structconv/schedules/cpu/tiling.py",
    )
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run at once")
    parser.add_argument("--show-survivors", action="store_true", help="print survivors' diffs")
    parser.add_argument("--output", help="JSON path (default: results/mutation-<date>.json)")
    args = parser.parse_args(argv)

    by_name = {g.name: g for g in GROUPS}
    unknown = [n for n in args.groups.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; known: {', '.join(by_name)}")
    groups = [by_name[name] for name in args.groups.split(",")]
    if args.only:
        if len(groups) != 1:
            parser.error("--only narrows one group: give one name to --groups")
        groups = [Group(groups[0].name, args.only.split(","), groups[0].tests)]
    # the commit the staged copies are taken from (the tree may move on during a long run)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    workdir = pathlib.Path(args.workdir)
    results = [run_group(group, workdir, args.fresh, args.max_children) for group in groups]
    for result in results:
        counts = result["counts"]
        print(f"{result['group']['name']:<10} {100 * score(counts):5.1f} %  {counts}")
        if args.show_survivors:
            staged = workdir / result["group"]["name"]
            for name, status in sorted(result["statuses"].items()):
                if status == SURVIVED:
                    subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=staged)

    command = "python benchmarks/mutation.py " + " ".join(argv or sys.argv[1:])
    output = pathlib.Path(args.output or RESULTS / f"mutation-{datetime.date.today()}.json")
    runs = json.loads(output.read_text())["groups"] if output.is_file() else []
    # groups run one at a time add up in one file: a group run again replaces its entry
    for result in results:
        result.update(commit=commit, command=command.strip())
    names = {result["group"]["name"] for result in results}
    runs = [run for run in runs if run["group"]["name"] not in names] + results
    output.write_text(json.dumps({"groups": runs}, indent=1))
    output.with_suffix(".md").write_text(markdown(runs))
    print(f"wrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
