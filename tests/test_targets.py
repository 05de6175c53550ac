"""Targets from the command line: named targets and their aliases, a CPU by LLVM's name
(--mcpu / --mattr), a JSON target dict or a flagged target string; tuning logs key on the CPU;
a wrong name or CPU is one line that says what is accepted."""

import json

import pytest

from tvm_structconv.cli import main
from tvm_structconv.targets import TargetError, make_target, target_key


@pytest.mark.parametrize("alias, name", [("x86_64", "x86"), ("host", "x86"), ("arm64", "aarch64")])
def test_aliases_are_the_named_targets(alias, name):
    assert str(make_target(alias)) == str(make_target(name))


def test_x86_is_this_host_and_a_cpu_name_builds_for_another():
    from tvm.target import codegen

    assert target_key(make_target("x86")) == f"x86-{codegen.llvm_get_system_cpu()}"
    skylake = make_target("x86", mcpu="skylake-avx512", mattr="+avx512vnni")
    assert target_key(skylake) == "x86-skylake-avx512"
    assert list(skylake.attrs["mattr"]) == ["+avx512vnni"]


def test_an_arm_cpu_keeps_neon_and_keys_its_logs():
    a76 = make_target("arm64", mcpu="cortex-a76", mattr=["+dotprod"])
    assert str(a76.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert list(a76.attrs["mattr"]) == ["+neon", "+dotprod"]
    assert target_key(a76) == "aarch64-cortex-a76"


def test_a_json_dict_and_a_flagged_string_are_the_same_target():
    attrs = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    from_json = make_target(json.dumps(attrs))
    from_flags = make_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72")
    assert str(from_json) == str(from_flags)
    assert target_key(from_json) == "aarch64-cortex-a72"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("tpu",), "unknown target 'tpu'; known targets: aarch64, cuda, x86 (aliases arm64"),
        (("aarch64", None, "cortex-a7b"), "unknown CPU 'cortex-a7b' for aarch64; did you mean"),
        (("cuda", "sm_90", "cortex-a76"), "--mcpu and --mattr are for CPU targets, not cuda"),
        (("{not json",), "--target is not valid JSON"),
        (('{"mcpu": "cortex-a72"}',), 'a JSON target must be a dict with a "kind"'),
        (("llvm mcpu=x",), "cannot read 'mcpu=x' in target 'llvm mcpu=x': flags look like"),
    ],
)
def test_bad_targets_say_what_is_accepted(arguments, message):
    with pytest.raises(TargetError, match="^" + message.replace("(", r"\(")):
        make_target(*arguments)


def test_the_cli_refuses_an_unknown_cpu_in_one_line(exported_small_net, tmp_path, capsys):
    model = str(exported_small_net["onnx"])
    for command in (["compile", model, "-o", str(tmp_path / "x.so")], ["tune", model]):
        status = main([*command, "--target", "arm64", "--mcpu", "cortex-a7b"])
        err = capsys.readouterr().err
        assert status == 2 and len(err.strip().splitlines()) == 1
        assert err.startswith("structconv: error: unknown CPU 'cortex-a7b' for aarch64; did you")


@pytest.mark.needs_cross
def test_compile_for_a_named_arm_cpu(exported_small_net, tmp_path, capsys):
    library = tmp_path / "a76.so"
    argv = ["compile", str(exported_small_net["onnx"]), "--target", "arm64", "--mcpu"]
    assert main([*argv, "cortex-a76", "-o", str(library)]) == 0
    out = capsys.readouterr().out
    assert '"mcpu":"cortex-a76"' in out.replace(" ", "") and "aarch64-linux-gnu" in out
    assert library.read_bytes()[18] == 183  # ELF e_machine: EM_AARCH64
