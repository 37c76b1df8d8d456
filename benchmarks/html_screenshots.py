"""Screenshots of a real diagnose.html at 1400 and 900 px, to look at after changing the HTML report.

Usage: python benchmarks/html_screenshots.py [--out reports/screenshots] [--height 2400]
Runs real checks on three tiny faulty test models (an fp16 overflow, a random head, a batch size baked
in by int(), with the benchmark's deployment matrix), writes one diagnose.html over all their results,
then asks Debian's headless chromium for a PNG per width and whether the page overflows sideways.
Needs `chromium` on PATH (not in CI); takes ~15 s on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
PROBE = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.querySelectorAll('img.plot'));"
         "var p=document.createElement('pre');p.id='probe';p.textContent='overflow='+(document.documentElement.scrollWidth>"
         "window.innerWidth)+' images='+i.length+' loaded='+i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
         "document.body.appendChild(p);});</script>")


def real_report() -> str:
    from tests.models import export, precision, root_cause
    from torch_diagnose import Target
    from torch_diagnose.options import RunOptions
    from torch_diagnose.report.html import render_html
    from torch_diagnose.runner import run

    parts = []
    for target, checks in ((Target(*precision.overflow_net()), "fp16"), (Target(*root_cause.random_head()), "determinism,fp16"),
                           (Target(*export.int_size()), "torchscript,torch_export,onnx,benchmark")):
        parts.append(run(target, RunOptions(checks=checks.split(","), seed=0)))
    report = parts[-1]
    report.results = [r for part in parts for r in part.results]
    report.duration_s = sum(p.duration_s for p in parts)
    return render_html(report)


def chromium(args: list[str], profile: str) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "screenshots"))
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "diagnose.html"
    page.write_text(real_report(), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        probe = Path(profile) / "probe.html"
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
        for width in (1400, 900):
            png = out / f"diagnose_{width}.png"
            chromium([f"--window-size={width},{args.height}", f"--screenshot={png}", page.as_uri()], profile)
            dom = chromium([f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], profile)
            seen = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
            print(f"{width} px: {png} ({os.path.getsize(png)} bytes); {seen.group(1) if seen else 'probe did not run'}")
    print(f"page: {page}")


if __name__ == "__main__":
    main()
