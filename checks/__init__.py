"""The built-in checks, one module per family. Importing this package registers them all.

A new check is one function in one of these modules (or a new module here) decorated with
`diagnostics.registry.register`; every module in this package is imported automatically.
"""
from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
