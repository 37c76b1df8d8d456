"""The pytest face of torch-diagnose, behind the small hook module `torch_diagnose.pytest_plugin`.

* `session`   — per-process state: options, loaded targets, shared Contexts, collected results.
* `items`     — the generated test items of `pytest --diagnose-model SPEC`.
* `fixtures`  — `diagnose_target`, `diagnose`, `golden` and the `check_<id>` fixtures.
* `discovery` — the check ids and docs read from the check modules' source (torch-free).
* `outcome`   — a result turned into a test outcome (skip, fail with the explanation, pass).
* `reports`   — results gathered from every worker, written once by the controller.

Nothing here imports torch at import time: pytest loads the plugin in projects that never use it.
"""
