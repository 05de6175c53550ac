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
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
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
    Group(
        "transform",
        ["tvm_structconv/transform/*"],
        # the IR tests, and the numeric tests of the same passes (compiled and run against
        # torch / onnxruntime; each IR test file names its numeric counterpart)
        ["tests/transform"]
        + [
            f"tests/integration/test_{name}.py"
            for name in (
                "batchnorm_folding_numerics",
                "expand_clip_numerics",
                "fast_legalize_numerics",
                "linear_layers",
                "ordinary_conv_numerics",
                "padded_blocks",
                "sink_transposes_numerics",
                "structured_models",
            )
        ],
    ),
]

#: mutmut's status names, as ``mutmut results --all true`` prints them.
KILLED, SURVIVED, NO_TESTS, TIMEOUT = "killed", "survived", "no tests", "timeout"
#: A run stopped early (Ctrl-C) leaves the rest of its mutants unchecked.
NOT_CHECKED = "not checked"
#: Statuses of a mutant the tests caught (a mutant that crashes the interpreter is caught).
CAUGHT = (KILLED, TIMEOUT, "segfault")


def staged_dir(group: Group, workdir: pathlib.Path) -> pathlib.Path:
    """Where ``group`` is staged: its name, plus a digest of the modules and tests when a run
    narrows it (``--only``, ``--tests``), so that narrowed runs keep their own mutmut caches."""
    default = next((g for g in GROUPS if g.name == group.name), None)
    if (
        default is not None
        and list(default.mutate) == list(group.mutate)
        and list(default.tests) == list(group.tests)
    ):
        return workdir / group.name
    digest = hashlib.sha1(json.dumps([group.mutate, group.tests]).encode()).hexdigest()[:8]
    return workdir / f"{group.name}-{digest}"


def stage(group: Group, workdir: pathlib.Path, fresh: bool, commit: str) -> pathlib.Path:
    """A copy of the tree at ``commit`` for ``group``, ``schedules/`` inside the package.

    The committed tree, not the working tree: in a checkout others edit meanwhile, a file
    half-way through a change must not fail the clean test run (commit new tests first).
    """
    target = staged_dir(group, workdir)
    if fresh and target.exists():
        shutil.rmtree(target)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    for name, content in files:
        if name.startswith(("benchmarks/", "docs/", "tuning_logs/")):
            continue
        if name.endswith(".py") and name.startswith(("tvm_structconv/", "schedules/")):
            content = undecorate_classes(content.decode("utf-8")).encode("utf-8")
        staged = target / ("tvm_structconv/" + name if name.startswith("schedules/") else name)
        if staged.is_file() and staged.read_bytes() == content:
            continue
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(content)
    with open(target / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write(mutmut_config(group))
    with open(target / "tests" / "conftest.py", "a", encoding="utf-8") as handle:
        handle.write(FASTEST_FIRST)
    return target


#: Class decorators that return another class (TVM's pass and expression-functor wrappers).
WRAPPING_DECORATOR = re.compile(r"^@((?:tvm\.transform\.module_pass|mutator|visitor)\b.*)$")


def undecorate_classes(text: str) -> str:
    """``text`` with each class under a :data:`WRAPPING_DECORATOR` decorated after its body.

    ``@mutator class M: …`` becomes ``class M: …`` then ``M = mutator(M)``: the same module once
    imported. mutmut puts the table of a class's mutated methods right after the class and
    reads them off it by name, which fails on the wrapper class such a decorator returns (TVM's
    ``module_pass`` and ``mutator``); after the table is filled the decorator may wrap it.
    """
    lines = text.splitlines(keepends=True)
    out: List[str] = []
    index = 0
    while index < len(lines):
        decorated = WRAPPING_DECORATOR.match(lines[index].rstrip("\n"))
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if not decorated or not following.startswith("class "):
            out.append(lines[index])
            index += 1
            continue
        name = re.match(r"class (\w+)", following).group(1)
        index += 1
        out.append(lines[index])  # the class line, then its body: indented or blank lines
        index += 1
        while index < len(lines) and (not lines[index].strip() or lines[index][0] in " \t"):
            out.append(lines[index])
            index += 1
        out.append(f"\n{name} = {decorated.group(1)}({name})\n\n\n")
    return "".join(out)


#: Appended to the staged ``tests/conftest.py`` (never the working tree's): a mutant's tests run
#: fastest first, by the durations mutmut's stats run recorded, so that a mutant a quick test
#: kills costs that test and not the 20-s hypothesis test mutmut happened to list before it
#: (mutmut passes a mutant's tests in set order, and pytest runs them as given).
FASTEST_FIRST = """

# --- appended by benchmarks/mutation.py to the staged copy: a mutant's tests fastest first ---
class _MutationFastestFirst:
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        import json
        import pathlib

        stats = pathlib.Path("mutmut-stats.json")  # mutmut runs the tests in mutants/
        if stats.is_file():
            durations = json.loads(stats.read_text()).get("duration_by_test", {})
            items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


def pytest_configure(config):
    config.pluginmanager.register(_MutationFastestFirst(), "mutation-fastest-first")
"""


def mutmut_config(group: Group) -> str:
    """The ``[tool.mutmut]`` table of a group (appended to the staged ``pyproject.toml``)."""

    def toml_list(items: Sequence[str]) -> str:
        return "[" + ", ".join(json.dumps(item) for item in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["tvm_structconv"]\n'
        f"only_mutate = {toml_list(group.mutate)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(group.tests)}\n"
        # "-n 0": in mutmut's process (it records which tests reach a mutant), not xdist workers
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not slow", "-n", "0"]\n'
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


def run_group(
    group: Group, workdir: pathlib.Path, fresh: bool, max_children: int, commit: str
) -> Dict:
    """Run mutmut on one group; return every mutant's status and the counts."""
    staged = stage(group, workdir, fresh, commit)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    print(f"[mutation] {group.name}: {' '.join(command[2:])} in {staged}", file=sys.stderr)
    # one thread per test process: mutmut's timeout counts CPU seconds against the tests' wall
    # time, and torch's and TVM's thread pools would spend several CPU seconds per second
    # (equivalent mutants reported as timeouts); --max-children gives the parallelism
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")}
    try:
        environment = {**os.environ, **threads}
        subprocess.run(command, cwd=staged, check=False, stdout=subprocess.DEVNULL, env=environment)
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
    parser.add_argument(
        "--tests",
        help="comma-separated test files or node ids instead of the group's (one group only), "
        "e.g. the fast unit tests of the module given to --only",
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
    if args.only or args.tests:
        if len(groups) != 1:
            parser.error("--only and --tests narrow one group: give one name to --groups")
        group = groups[0]
        mutate = args.only.split(",") if args.only else group.mutate
        tests = args.tests.split(",") if args.tests else group.tests
        groups = [Group(group.name, mutate, tests)]
    # the commit the staged copies are taken from (the tree may move on during a long run)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    workdir = pathlib.Path(args.workdir)
    results = [run_group(group, workdir, args.fresh, args.max_children, commit) for group in groups]
    for result in results:
        counts = result["counts"]
        print(f"{result['group']['name']:<10} {100 * score(counts):5.1f} %  {counts}")
        if args.show_survivors:
            staged = staged_dir(Group(**result["group"]), workdir)
            for name, status in sorted(result["statuses"].items()):
                if status == SURVIVED:
                    subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=staged)

    command = "python benchmarks/mutation.py " + " ".join(argv or sys.argv[1:])
    output = pathlib.Path(args.output or RESULTS / f"mutation-{datetime.date.today()}.json")
    runs = json.loads(output.read_text())["groups"] if output.is_file() else []
    # runs add up in one file: a group run again on the same modules and tests replaces its entry
    for result in results:
        result.update(commit=commit, command=command.strip())

    def key(run: Dict) -> str:
        return json.dumps([run["group"][field] for field in ("name", "mutate", "tests")])

    keys = {key(result) for result in results}
    runs = [run for run in runs if key(run) not in keys] + results
    output.write_text(json.dumps({"groups": runs}, indent=1))
    output.with_suffix(".md").write_text(markdown(runs))
    print(f"wrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
