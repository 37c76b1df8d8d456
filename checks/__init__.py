"""The built-in checks, one module per check, grouped in one sub-package per family.
Importing this package registers them all.

A new check is one file in a family folder (or a new folder here) with a function decorated by
`torch_diagnose.registry.register`; every module below this package is imported automatically.
Modules whose name starts with `_` are private helpers and are imported only by their users.
"""
from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.walk_packages(__path__, prefix=f"{__name__}."), key=lambda m: m.name):
    if not _info.name.rsplit(".", 1)[-1].startswith("_"):
        importlib.import_module(_info.name)
