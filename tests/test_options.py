"""Run options (diagnostics/options.py): parsers, RunOptions.from_mapping and [tool.diagnose]."""
from __future__ import annotations

from pathlib import Path

import pytest

from torch_diagnose.errors import UsageError
from torch_diagnose.options import (
    FORMATS,
    OPTION_DEFS,
    RunOptions,
    find_pyproject,
    parse_check_options,
    parse_dynamic_dims,
    parse_input_shape,
    parse_positive_float,
    parse_size,
    pyproject_defaults,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GB", 8 * 10**9),
        ("8gb", 8 * 10**9),
        (" 8 GB ", 8 * 10**9),
        ("512MiB", 512 * 2**20),
        ("512mib", 512 * 2**20),
        ("1.5G", int(1.5 * 2**30)),  # a bare G is binary
        ("2Gi", 2 * 2**30),
        ("100KB", 100_000),
        ("64KiB", 64 * 1024),
        ("1TB", 10**12),
        ("1000000", 1_000_000),
        ("100B", 100),
        (4096, 4096),
        (0, 0),
        (None, None),
        ("", None),
    ],
)
def test_parse_size(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["GB", "8XB", "-1GB", "8 G B", "1e9", "8i", "8iB", "eight", -5, True])
def test_parse_size_errors(text) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert "malformed size" in str(info.value) and "512MiB" in str(info.value)


def test_parse_dynamic_dims() -> None:
    assert parse_dynamic_dims("x:0=batch,x:1=seq") == {"x": {0: "batch", 1: "seq"}}
    assert parse_dynamic_dims("x:0,1") == {"x": {0: "x_dim0", 1: "x_dim1"}}
    assert parse_dynamic_dims("ids:0=batch, mask:0=batch") == {"ids": {0: "batch"}, "mask": {0: "batch"}}
    assert parse_dynamic_dims({"x": {"0": "batch"}}) == {"x": {0: "batch"}}  # a pyproject table
    assert parse_dynamic_dims(None) is None and parse_dynamic_dims("") is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0=batch", "write INPUT:DIM[=NAME]"),
        (":0", "write INPUT:DIM[=NAME]"),
        ("x:first=batch", "'first' is not a dimension number"),
        ({"x": [0, 1]}, "map each input to {DIM: NAME}"),
        ({"x": {"a": "batch"}}, "map each input to {DIM: NAME}"),
    ],
)
def test_parse_dynamic_dims_errors(text, fragment) -> None:
    with pytest.raises(UsageError, match="dynamic") as info:
        parse_dynamic_dims(text)
    assert fragment in str(info.value)


def test_parse_check_options() -> None:
    assert parse_check_options(["determinism.repeats=3", "determinism.threads=1,4", "export.opset = 18"]) == {
        "determinism": {"repeats": "3", "threads": "1,4"},
        "export": {"opset": "18"},
    }
    assert parse_check_options("determinism.repeats=3") == {"determinism": {"repeats": "3"}}
    assert parse_check_options({"determinism": {"repeats": 3}}) == {"determinism": {"repeats": 3}}
    assert parse_check_options(None) == {} and parse_check_options([]) == {}


@pytest.mark.parametrize("item", ["repeats=3", "determinism.repeats", ".repeats=3", "determinism.=3", "=3"])
def test_parse_check_options_errors(item: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_check_options([item])
    assert f"malformed check option {item!r}" in str(info.value)
    assert "CHECK.OPTION=VALUE" in str(info.value)


def test_parse_check_options_table_must_hold_tables() -> None:
    with pytest.raises(UsageError, match="map each check to a table"):
        parse_check_options({"determinism": 3})


def test_small_parsers() -> None:
    assert parse_input_shape("2,3,224,224") == (2, 3, 224, 224)
    assert parse_input_shape("2x3x32x32") == (2, 3, 32, 32)
    assert parse_input_shape([1, 8]) == (1, 8)
    assert parse_input_shape(" 1, 3, 8X8 ") == (1, 3, 8, 8)
    for bad in ("2,a", "2,0", "2,x", "2,,3", [2, "a"], [0, 3]):
        with pytest.raises(UsageError, match="malformed --input-shape"):
            parse_input_shape(bad)
    assert parse_positive_float("1e-4") == 1e-4
    for bad in ("0", "-1", "nan", "tiny"):
        with pytest.raises(UsageError):
            parse_positive_float(bad)


def test_run_options_from_mapping() -> None:
    opts = RunOptions.from_mapping({
        "checks": "determinism,export", "memory-budget": "8GB", "dynamic_dims": "x:0=batch",
        "option": ["determinism.repeats=3"], "trust_pickle": "true", "formats": "json,md",
        "input_shape": "2,8", "seed": "7", "atol": None,
    })
    assert opts.checks == ["determinism", "export"]
    assert opts.memory_budget == 8 * 10**9
    assert opts.dynamic_dims == {"x": {0: "batch"}}
    assert opts.check_options("determinism") == {"repeats": "3"} and opts.check_options("export") == {}
    assert opts.trust_pickle is True and opts.format == ["json", "md"]
    assert opts.input_shape == (2, 8) and opts.seed == 7 and opts.atol is None
    defaults = RunOptions.from_mapping({})
    assert defaults == RunOptions() and defaults.format == list(FORMATS)
    assert set(defaults.as_dict()) == {d.name for d in OPTION_DEFS}


def test_run_options_errors() -> None:
    with pytest.raises(UsageError) as info:
        RunOptions.from_mapping({"memory_budge": "8GB"})
    assert "unknown option 'memory_budge'" in str(info.value) and "memory_budget" in str(info.value)
    with pytest.raises(UsageError, match="switch"):
        RunOptions.from_mapping({"trust_pickle": "maybe"})
    assert RunOptions.from_mapping({"isolate": "off"}).isolate is False
    with pytest.raises(UsageError, match="unknown report format 'pdf'"):
        RunOptions.from_mapping({"format": "json,pdf"})
    with pytest.raises(UsageError, match="--device"):
        RunOptions.from_mapping({"device": "tpu"})


def test_errors_name_the_option_as_the_user_gave_it() -> None:
    with pytest.raises(UsageError) as info:
        RunOptions.from_mapping({"input_shape": "2,x"}, {"input_shape": "--diagnose-input-shape"})
    assert str(info.value).startswith("malformed --diagnose-input-shape '2,x'") and "--input-shape" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__, "one message, no chained traceback"
    with pytest.raises(UsageError, match=r"^--diagnose-seed: expected a whole number, got 'x'$"):
        RunOptions.from_mapping({"seed": "x"}, {"seed": "--diagnose-seed"})
    with pytest.raises(UsageError, match=r"^--seed: expected a whole number"):
        RunOptions.from_mapping({"seed": "x"})


PYPROJECT = """\
[project]
name = "served-model"

[tool.diagnose]
checks = ["determinism"]
memory-budget = "512MiB"
device = "cpu"
formats = ["json"]
input_shape = [2, 8]
dynamic_dims = {x = {0 = "batch"}}

[tool.diagnose.options]
determinism = {repeats = 3}
"""


def test_pyproject_defaults(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    assert find_pyproject(nested) == tmp_path / "pyproject.toml"  # the nearest one, walking up
    raw = pyproject_defaults(nested)
    assert raw["memory_budget"] == "512MiB" and raw["option"] == {"determinism": {"repeats": 3}}
    opts = RunOptions.from_mapping(raw)
    assert opts.checks == ["determinism"] and opts.memory_budget == 512 * 2**20
    assert opts.device == "cpu" and opts.format == ["json"] and opts.input_shape == (2, 8)
    assert opts.dynamic_dims == {"x": {0: "batch"}}
    assert opts.check_options("determinism") == {"repeats": 3}


def test_pyproject_without_table_or_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert pyproject_defaults(tmp_path) == {}


def test_pyproject_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.diagnose]\nmemory_budjet = "8GB"\n')
    with pytest.raises(UsageError) as info:
        pyproject_defaults(tmp_path)
    message = str(info.value)
    assert str(path) in message and "unknown key 'memory_budjet'" in message and "memory_budget" in message
    path.write_text("[tool.diagnose\n")
    with pytest.raises(UsageError, match="cannot read"):
        pyproject_defaults(tmp_path)


def test_check_option_choices_and_parser_are_validated_by_the_registry() -> None:
    from torch_diagnose.registry import CheckSpec, Option

    spec = CheckSpec("demo_check", "f", "t", func=lambda ctx, opts: None, options=(
        Option("mode", str, "auto", "how", choices=("auto", "fast", "slow")),
        Option("ways", list, ["cast"], "which", choices=("autocast", "cast")),
        Option("ms", str, "", "latency", parse=lambda raw: float(raw)),
    ))
    assert spec.resolve_options({}) == {"mode": "auto", "ways": ["cast"], "ms": ""}  # defaults as written
    assert spec.resolve_options({"mode": "fast", "ways": "cast,autocast", "ms": "2.5"}) == {
        "mode": "fast", "ways": ["cast", "autocast"], "ms": 2.5}
    with pytest.raises(UsageError) as info:
        spec.resolve_options({"mode": "fsat"})
    assert str(info.value) == "option mode: 'fsat' is not one of auto, fast, slow; did you mean 'fast'?"
    with pytest.raises(UsageError, match="'autocats' is not one of autocast, cast; did you mean 'autocast'"):
        spec.resolve_options({"ways": "cast,autocats"})
    with pytest.raises(UsageError, match="^option ms: could not convert"):
        spec.resolve_options({"ms": "fast"})
    with pytest.raises(UsageError, match="has no option 'mdoe'.*did you mean 'mode'"):
        spec.resolve_options({"mdoe": "fast"})


def test_unknown_check_names_offer_the_closest_match() -> None:
    from torch_diagnose.registry import get_check, select_checks

    with pytest.raises(UsageError, match="unknown check 'determinsm'; did you mean 'determinism'"):
        get_check("determinsm")
    with pytest.raises(UsageError, match="unknown check or family 'eval_mod'; did you mean 'eval_mode'"):
        select_checks(["eval_mod"])
