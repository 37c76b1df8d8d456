"""Run options, defined once and shared by the `diagnose` command and the pytest plugin.

Nothing here imports torch: the pytest plugin registers these options at start-up.
Defaults may come from `[tool.diagnose]` in the nearest pyproject.toml.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError

FORMATS = ("json", "junit", "md", "html")


def parse_size(text: str | int | None) -> int | None:
    """`8GB`, `512MiB`, `1.5G`, `1000000` -> bytes (decimal units for GB/MB/KB, binary for GiB/MiB/KiB and bare G/M/K)."""
    if text is None or text == "":
        return None
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text), re.IGNORECASE)
    if isinstance(text, bool) or not match or (match.group(3) and not match.group(2)):  # `8iB`: "i" needs a unit
        raise UsageError(f"malformed size {text!r}: write a number with an optional unit, e.g. 8GB, 512MiB, 2G")
    number, unit, binary, byte = match.groups()
    power = " kmgt".index(unit.lower()) if unit else 0
    base = 1000 if (byte and not binary) else 1024
    return int(float(number) * base**power)


def parse_list(text: str | list[str] | None) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        items: list[str] = []
        for t in text:
            items.extend(parse_list(t))
        return items
    return [item.strip() for item in str(text).split(",") if item.strip()]


def parse_dynamic_dims(text: str | dict | None) -> dict[str, dict[int, str]] | None:
    """`x:0=batch,x:1=seq` or `x:0,1` -> {"x": {0: "batch", 1: "seq"}}."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):  # {"x": {0: "batch"}} (from pyproject: {x = {"0" = "batch"}})
        try:
            return {str(k): {int(d): str(n) for d, n in v.items()} for k, v in text.items()}
        except (AttributeError, TypeError, ValueError):
            raise UsageError(
                f"malformed dynamic_dims {text!r}: map each input to {{DIM: NAME}}, e.g. {{x = {{0 = \"batch\"}}}}"
            ) from None
    result: dict[str, dict[int, str]] = {}
    current = None
    for item in parse_list(text):
        if ":" in item:
            current, _, item = item.partition(":")
            current = current.strip()
        if not current:
            raise UsageError(f"malformed --dynamic-dims {text!r}: write INPUT:DIM[=NAME], e.g. x:0=batch,x:1=seq")
        dim, _, name = item.partition("=")
        try:
            d = int(dim)
        except ValueError:
            raise UsageError(f"malformed --dynamic-dims {text!r}: {dim!r} is not a dimension number") from None
        result.setdefault(current, {})[d] = name or f"{current}_dim{d}"
    return result


def parse_check_options(items: list[str] | dict | None) -> dict[str, dict[str, Any]]:
    """`-o determinism.repeats=3` (repeatable) -> {"determinism": {"repeats": "3"}}."""
    if not items:
        return {}
    if isinstance(items, dict):  # [tool.diagnose.options] determinism = {repeats = 3}
        if not all(isinstance(v, dict) for v in items.values()):
            raise UsageError(f"malformed check options {items!r}: map each check to a table, e.g. determinism = {{repeats = 3}}")
        return {k: dict(v) for k, v in items.items()}
    if isinstance(items, str):  # one CHECK.OPTION=VALUE, not a list of them
        items = [items]
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        check, dot, name = key.strip().partition(".")
        if not eq or not dot or not check or not name:
            raise UsageError(f"malformed check option {item!r}: write CHECK.OPTION=VALUE, e.g. determinism.repeats=3")
        out.setdefault(check, {})[name] = value.strip()
    return out


def parse_formats(text: str | list[str] | None) -> list[str]:
    formats = parse_list(text) or list(FORMATS)
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"unknown report format {f!r}; choose from {', '.join(FORMATS)}")
    return formats


def parse_fail_on(text: str) -> str:
    if text not in ("warn", "fail", "error"):
        raise UsageError(f"--fail-on must be warn, fail or error, not {text!r}")
    return text


def parse_device(text: str) -> str:
    if text not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", text):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, not {text!r}")
    return text


def _positive(text: Any, kind: type, noun: str) -> Any:
    """`kind(text)` when it is above zero; None for nothing given; else a usage error naming `noun`."""
    if text is None or text == "":
        return None
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"expected a {noun}, got {text!r}") from None
    if not value > 0:  # also rejects NaN
        raise UsageError(f"expected a positive {noun}, got {text!r}")
    return value


def parse_positive_float(text: Any) -> float | None:
    return _positive(text, float, "number")


def parse_positive_int(text: Any) -> int | None:
    return _positive(text, int, "whole number")


def parse_int(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UsageError(f"expected a whole number, got {text!r}") from None


def parse_input_shape(text: Any) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        parts = [str(x) for x in text]
    else:
        # `2,3,224,224` or `2x3x224x224`; an empty part (`2,x`, `2,,3`) is malformed, not skipped.
        parts = re.split(r"[,xX]", str(text).replace(" ", ""))
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"malformed --input-shape {text!r}: expected comma-separated integers such as 2,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"malformed --input-shape {text!r}: every size must be a positive integer")
    return shape


def parse_latency(text: Any) -> str | None:
    """Validate `20` or `1=5,8=20` (milliseconds, optionally per batch size); kept as text."""
    if text is None or str(text).strip() == "":
        return None
    for part in str(text).split(","):
        batch, eq, ms = part.strip().rpartition("=") if "=" in part else ("", "", part.strip())
        try:
            if eq:
                int(batch)
            if float(ms) <= 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"malformed --max-latency-ms {text!r}: write milliseconds, e.g. 20, or per batch size 1=5,8=20") from None
    return str(text)


COMPARE_CHECK = "compare"


def parse_candidate(text: Any) -> str | None:
    """The compare candidate as given (a path or a target spec); loaded and judged by the compare check."""
    if text is None or str(text).strip() == "":
        return None
    return str(text).strip()


@dataclass(frozen=True)
class OptionDef:
    """One run option: its CLI flag, its pytest flag (`--diagnose-` + name) and its parser."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[Any], Any] | None = None
    flag: bool = False  # a store_true switch
    repeatable: bool = False
    metavar: str | None = None
    short: str | None = None

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def pytest_flag(self) -> str:
        return "--diagnose-" + self.name.replace("_", "-")


OPTION_DEFS: tuple[OptionDef, ...] = (
    OptionDef("checks", "check ids or family names to run, comma-separated (default: every default check; a family brings its default checks; `all` adds the opt-in ones: quantization, torch_compile)", metavar="IDS"),
    OptionDef("skip", "check ids or families to leave out", metavar="IDS"),
    OptionDef("device", "where to run the model: cpu, cuda, cuda:N or auto (cuda when available)", "auto", parse_device),
    OptionDef("input_shape", "shape of a synthesised input when the target has no example inputs, e.g. 2,3,224,224", None, parse_input_shape, metavar="SHAPE"),
    OptionDef("input_dtype", "dtype of the synthesised input (float32, float16, int64, ...)", "float32", metavar="DTYPE"),
    OptionDef("dynamic_dims", "input dims that vary in serving, e.g. x:0=batch,x:1=seq", None, parse_dynamic_dims, metavar="SPEC"),
    OptionDef("batch_size", "the deployment batch size (memory checks, benchmark)", None, parse_positive_int, metavar="N"),
    OptionDef("memory_budget", "device memory the deployment may use, e.g. 8GB, 512MiB", None, parse_size, metavar="SIZE"),
    OptionDef("max_latency_ms", "benchmark gate: fail above this p50 latency, `20` or per batch size `1=5,8=20`", None, parse_latency, metavar="MS"),
    OptionDef("seed", "seed for every random input the checks make", 0, parse_int, metavar="N"),
    OptionDef("atol", "fixed absolute tolerance for every comparison (default: calibrated per dtype)", None, parse_positive_float),
    OptionDef("rtol", "fixed relative tolerance for every comparison (default: calibrated per dtype)", None, parse_positive_float),
    OptionDef("report_dir", "folder for the reports", "reports", metavar="DIR"),
    OptionDef("format", "report formats, comma-separated: json,junit,md,html", "json,junit,md,html", parse_formats, metavar="FORMATS"),
    OptionDef("fail_on", "lowest status that makes the exit code 1: warn, fail or error", "fail", parse_fail_on, metavar="STATUS"),
    OptionDef("trust_pickle", "allow loading a full pickled model (runs code from the file)", False, flag=True),
    OptionDef("isolate", "run each check in a child process so crashes and hangs in native code stay contained", False, flag=True),
    OptionDef("timeout", "seconds each check may take before it ends as error", 600.0, parse_positive_float, metavar="S"),
    OptionDef("option", "a check's own option, CHECK.NAME=VALUE (repeatable), e.g. determinism.repeats=3", None, repeatable=True, short="-o", metavar="CHECK.NAME=VALUE"),
    OptionDef("debug", "show tracebacks for errors", False, flag=True),
    OptionDef("compare", "a candidate to compare the target with (runs the compare check): an .onnx file, a TorchScript "
                         "or .pt2 file, another target spec (e.g. the factory with another checkpoint), or recorded "
                         "inputs/outputs (.npz/.pt)", None, parse_candidate, metavar="CANDIDATE"),
)


@dataclass
class RunOptions:
    """Parsed options of one run. Build with `RunOptions.from_mapping` or directly in the API."""

    checks: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    device: str = "auto"
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    dynamic_dims: dict[str, dict[int, str]] | None = None
    batch_size: int | None = None
    memory_budget: int | None = None
    max_latency_ms: str | None = None
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    report_dir: str = "reports"
    format: list[str] = field(default_factory=lambda: list(FORMATS))
    fail_on: str = "fail"
    trust_pickle: bool = False
    isolate: bool = False
    timeout: float = 600.0
    option: dict[str, dict[str, Any]] = field(default_factory=dict)
    debug: bool = False
    compare: str | None = None

    def __post_init__(self) -> None:
        """A candidate brings its check: alone by default, added to the checks named."""
        if self.compare and COMPARE_CHECK not in self.checks:
            self.checks = [*self.checks, COMPARE_CHECK]

    @classmethod
    def from_mapping(cls, values: dict[str, Any], names: dict[str, str] | None = None) -> "RunOptions":
        """Parse raw values (strings from a command line or a pyproject table) by name.

        names: how the user spelt each option (`{"input_shape": "--diagnose-input-shape"}`), so an error
        names what they typed; an option missing from it is named by its CLI flag.
        """
        defs = {d.name: d for d in OPTION_DEFS}
        kwargs: dict[str, Any] = {}
        for name, raw in values.items():
            key = name.replace("-", "_")
            if key == "formats":
                key = "format"
            if key not in defs:
                raise UsageError(f"unknown option {name!r}; known: {', '.join(defs)}")
            if raw is None:
                continue
            kwargs[key] = _parse_named(defs[key], raw, (names or {}).get(key))
        return cls(**kwargs)

    def check_options(self, check_id: str) -> dict[str, Any]:
        return dict(self.option.get(check_id, {}))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _parse_named(d: OptionDef, raw: Any, name: str | None) -> Any:
    """`_parse_one`, with an error that names the option as the user gave it, once (no chained traceback)."""
    try:
        return _parse_one(d, raw)
    except UsageError as exc:
        message, name = str(exc), name or d.cli_flag
        if d.cli_flag in message:
            message = message.replace(d.cli_flag, name)
        elif name not in message:
            message = f"{name}: {message}"
        raise UsageError(message) from None


def _parse_one(d: OptionDef, raw: Any) -> Any:
    if d.name in ("checks", "skip"):
        return parse_list(raw)
    if d.name == "option":
        return parse_check_options(raw)
    if d.flag:
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off", ""):
                return False
            raise UsageError(f"{d.name} is a switch: expected true or false, got {raw!r}")
        return bool(raw)
    if d.parse is not None:
        return d.parse(raw)
    return raw


def pyproject_names(table: dict[str, Any]) -> dict[str, str]:
    """How errors name options that came from `[tool.diagnose]` (see `RunOptions.from_mapping`)."""
    return {key: f"pyproject.toml [tool.diagnose] {'options' if key == 'option' else key}" for key in table}


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_defaults(start: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The `[tool.diagnose]` table of the nearest pyproject.toml (empty when there is none)."""
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except Exception as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    table = data.get("tool", {}).get("diagnose", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.diagnose] must be a table")
    known = {d.name for d in OPTION_DEFS} | {"formats", "options"}
    for key in table:
        if key.replace("-", "_") not in known:
            raise UsageError(f"{path}: [tool.diagnose] has unknown key {key!r}; known: {', '.join(sorted(known))}")
    out = {k.replace("-", "_"): v for k, v in table.items()}
    if "options" in out:  # [tool.diagnose.options] determinism = {repeats = 3}
        out["option"] = out.pop("options")
    return out
