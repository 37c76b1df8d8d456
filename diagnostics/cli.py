"""The `diagnose` command: a thin face over the runner.

Exit codes: 0 nothing reached --fail-on; 1 a check reached it; 2 bad usage or a target that cannot
be loaded (one line on stderr, no traceback unless --debug); 130 interrupted (partial reports kept).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Sequence

from .errors import UsageError
from .options import OPTION_DEFS, RunOptions, pyproject_defaults, pyproject_names

EPILOG = textwrap.dedent("""\
    targets:
      demo                         built-in demo: random-weight torchvision resnet18, 2x3x224x224
      path/to/file.py:factory      a factory returning an nn.Module, (module, example_inputs) or a Target
      package.module:factory       the same, from an importable module
      torchvision:NAME             a torchvision model with random weights (?weights=DEFAULT for real ones)
      model.pt / model.ts          a TorchScript archive;  model.pt2: a torch.export program
      model.pt (full pickle)       only with --trust-pickle (loading a pickle runs code from the file)

    examples:
      diagnose demo
      diagnose my_model.py:make_model --input-shape 1,3,224,224 --checks determinism,eval_mode
      diagnose torchvision:mobilenet_v3_small --skip onnx -o determinism.repeats=3 --fail-on warn
      diagnose --list-checks
      diagnose compare my_model.py:make_model exported/model.onnx      troubleshoot your own artifact

    compare (troubleshoot an artifact built elsewhere):
      diagnose compare REFERENCE CANDIDATE [options]
        REFERENCE: any target above. CANDIDATE: an .onnx file (ONNX Runtime), a TorchScript or .pt2 file,
        another target (e.g. the same factory loading another checkpoint), or recorded inputs/outputs
        (.npz, or a .pt from torch_diagnose.record(model, inputs, path)). Runs the compare check over the
        reference's inputs swept as the export checks sweep them, and names the first ONNX node, module,
        parameter or program node where the candidate parts from the reference.

    exit codes: 0 ok, 1 a check failed (or reached --fail-on), 2 bad usage or target, 130 interrupted.
    Defaults can be set in [tool.diagnose] of the nearest pyproject.toml.
""")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other usage error
        self.exit(2, f"diagnose: error: {message} (see diagnose --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diagnose",
        description="Validate a PyTorch inference model: determinism, eval mode, precision, export equivalence, "
        "preprocessing skew, memory and sync. Each finding names the culprit and what to do.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", nargs="?", help="the target to diagnose (see targets below), or `compare REFERENCE CANDIDATE`")
    parser.add_argument("--list-checks", action="store_true", help="list the available checks and their options, then exit")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    _add_run_options(parser)
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    """`diagnose compare REFERENCE CANDIDATE [options]`: the compare check (plus any --checks named)."""
    parser = _Parser(
        prog="diagnose compare",
        description="Compare an artifact built elsewhere (ONNX file, TorchScript or .pt2 file, another checkpoint, "
        "recorded outputs) with the reference model over swept inputs, and name where they part ways.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="REFERENCE", help="the reference target (see targets below)")
    parser.add_argument("candidate", metavar="CANDIDATE", help="an .onnx, TorchScript or .pt2 file, another target spec, "
                        "or recorded inputs/outputs (.npz/.pt)")
    _add_run_options(parser, skip=("compare",))
    return parser


def _add_run_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="print only one line per check (status, check, summary): no header, table, counts or report paths")
    for d in OPTION_DEFS:
        if d.name in skip:
            continue
        names = [d.cli_flag] + ([d.short] if d.short else [])
        if d.flag:
            parser.add_argument(*names, dest=d.name, action="store_true", default=None, help=d.help)
        elif d.repeatable:
            parser.add_argument(*names, dest=d.name, action="append", default=None, metavar=d.metavar, help=d.help)
        else:
            shown = f"{d.help} (default: {d.default})" if d.default not in (None, False) else d.help
            parser.add_argument(*names, dest=d.name, default=None, metavar=d.metavar or d.name.upper(), help=shown)


def list_checks(stream: Any = sys.stdout) -> None:
    from .registry import load_checks

    checks = load_checks()
    width = max(len(c) for c in checks) if checks else 10
    family = None
    for spec in sorted(checks.values(), key=lambda s: (s.family, s.order, s.id)):
        if spec.family != family:
            family = spec.family
            print(f"\n[{family}]", file=stream)
        flags = "" if spec.default else "  (opt-in)"
        print(f"  {spec.id:<{width}}  {spec.title}{flags}", file=stream)
        for opt in spec.options:
            print(f"  {'':<{width}}    -o {spec.id}.{opt.name}={opt.default!r}  {opt.help}", file=stream)


def parse_options(args: argparse.Namespace) -> RunOptions:
    raw: dict[str, Any] = dict(pyproject_defaults())
    names = pyproject_names(raw)
    for d in OPTION_DEFS:
        value = getattr(args, d.name, None)
        if value is not None:
            raw[d.name], names[d.name] = value, d.cli_flag
    return RunOptions.from_mapping(raw, names)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    compare = bool(argv) and argv[0] == "compare"
    parser = build_compare_parser() if compare else build_parser()
    args = parser.parse_args(argv[1:] if compare else argv)
    if compare:
        args.compare, args.version, args.list_checks = args.candidate, False, False
    debug = bool(args.debug)
    try:
        if args.version:
            from importlib.metadata import version

            print(f"torch-diagnose {version('torch-diagnose')}")
            return 0
        if args.list_checks:
            list_checks()
            return 0
        if not args.spec:
            parser.error("a target is required, e.g. `diagnose demo` (or --list-checks)")
        options = parse_options(args)
        return _run(args.spec, options, quiet=args.quiet)
    except UsageError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"diagnose: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diagnose: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `diagnose ... | head`: the reader left; the reports are already written
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(spec: str, options: RunOptions, *, quiet: bool) -> int:
    from .registry import select_checks
    from .report import TerminalReporter, file_reporters
    from .runner import run
    from .target import load_target_for

    checks = select_checks(options.checks or None, options.skip or None)  # validate names before loading
    target = load_target_for(spec, options)
    if options.compare:  # an unloadable candidate is bad usage (exit 2), found before any check runs
        from .crosscheck.candidate import load_candidate

        load_candidate(options.compare, options)
    reporters: list[Any] = file_reporters(options)
    paths = [str(r.path) for r in reporters]
    reporters.append(TerminalReporter(stream=sys.stdout, verbose=not quiet, quiet=quiet, report_paths=paths))
    report = run(target, options, reporters=reporters, checks=checks)
    if report.interrupted:
        return 130
    return report.exit_code(options.fail_on)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
