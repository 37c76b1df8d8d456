"""`diagnose.xml`: JUnit XML, so CI systems show each check as a test case.

fail -> <failure>, error -> <error>, skip -> <skipped> (a consequence of a root cause too: its message
names the root, and the `caused_by` property holds its id); a warning stays a passing test case with the
explanation in <system-out> (CI would otherwise turn a warning red) unless the run's `fail_on` is `warn`:
then the exit code is 1 for a warning, so the warning is a <failure type="warn"> too and the XML agrees
with the exit code. Metrics, culprit and hint ride
along as <properties>, the form pytest uses, which Jenkins, GitLab and GitHub test reporters read.
"""
from __future__ import annotations

import json
import math
import re
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from ..results import ERROR, FAIL, SEVERITY, SKIP, WARN, CheckResult, jsonable
from ..rootcause import consequences, root_causes

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

#: Characters XML 1.0 forbids even when escaped (NUL, most C0 controls, lone surrogates);
#: ElementTree writes them as-is and the file would no longer parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", value if isinstance(value, str) else str(value))


def _value(value: Any) -> str:
    """A property value at full precision (format_value rounds for humans; CI graphs want the number)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(jsonable(value), allow_nan=False)


def _properties(parent: ET.Element, items: list[tuple[str, Any]]) -> None:
    items = [(name, value) for name, value in items if value is not None]
    if items:
        props = ET.SubElement(parent, "properties")
        for name, value in items:
            ET.SubElement(props, "property", name=_text(name), value=_text(_value(value)))


def warn_fails(fail_on: str | None) -> bool:
    """Whether a warning makes the exit code 1 under this `fail_on` (so it must be a <failure>)."""
    return SEVERITY[WARN] >= SEVERITY.get(fail_on or FAIL, SEVERITY[FAIL])


def testcase(result: CheckResult, fail_on: str = FAIL) -> ET.Element:
    case = ET.Element("testcase", classname=f"diagnose.{result.family or 'checks'}", name=_text(result.check),
                      time=f"{result.duration_s:.3f}")
    test = result.details.get("test") if isinstance(result.details, dict) else None
    _properties(case, [("status", result.status), ("test", test), ("shared_s", round(result.shared_s, 3) if result.shared_s else None),
                       ("caused_by", result.caused_by), ("culprit", result.culprit_label or None),
                       ("location", result.location), ("hint", result.hint), *((f"metric.{k}", v) for k, v in result.metrics.items())])
    message = _text(result.summary)
    if result.status == FAIL or (result.status == WARN and warn_fails(fail_on)):
        ET.SubElement(case, "failure", message=message, type=result.status).text = _text(result.explain())
    elif result.status == ERROR:
        traceback = result.details.get("traceback") if isinstance(result.details, dict) else None
        ET.SubElement(case, "error", message=message, type="error").text = _text(traceback or result.explain())
    elif result.status == SKIP:
        if result.caused_by and f"see {result.caused_by}" not in message and not message.startswith("a consequence"):
            message = f"a consequence of {result.caused_by}: {message}"
        ET.SubElement(case, "skipped", message=message)
    elif result.status == WARN:
        ET.SubElement(case, "system-out").text = _text(result.explain())
    return case


class JUnitWriter:
    """Renders the run as one <testsuite> inside <testsuites>."""

    filename = "diagnose.xml"

    def render(self, run: "RunReport", *, final: bool = True) -> str:
        counts = run.summary
        fail_on = str(run.options.get("fail_on") or FAIL)
        failures = counts[FAIL] + (counts[WARN] if warn_fails(fail_on) else 0)
        total = run.duration_s or sum(r.duration_s for r in run.results)
        attrs = {"name": "diagnose", "tests": str(len(run.results)), "failures": str(failures),
                 "errors": str(counts[ERROR]), "skipped": str(counts[SKIP]), "time": f"{total:.3f}"}
        root = ET.Element("testsuites", attrs)
        suite = ET.SubElement(root, "testsuite", {
            **attrs, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.started_at))})
        scalars = (str, int, float, bool)
        _properties(suite, [
            *((f"target.{k}", v) for k, v in run.target.items() if isinstance(v, scalars)),
            *((f"env.{k}", v) for k, v in run.environment.items() if isinstance(v, scalars)),
            ("fail_on", fail_on),
            ("interrupted", run.interrupted),
            ("root_causes", len(root_causes(run.results))),
            ("consequences", len(consequences(run.results))),
            ("complete", final and not run.interrupted),
        ])
        for result in run.results:
            suite.append(testcase(result, fail_on))
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
