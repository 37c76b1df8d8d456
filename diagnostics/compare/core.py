"""`compare()`: two (possibly nested) outputs compared leaf by leaf into a `Comparison`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..tree import flatten
from .leaf import LeafComparison, compare_leaf
from .tolerance import Tolerance


@dataclass
class Comparison:
    """The comparison of every leaf; `passed` when every leaf passed."""

    leaves: list[LeafComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(leaf.passed for leaf in self.leaves)

    def leaf(self, name: str) -> LeafComparison:
        for leaf in self.leaves:
            if leaf.name == name:
                return leaf
        raise KeyError(name)

    @property
    def tensor_leaves(self) -> list[LeafComparison]:
        return [leaf for leaf in self.leaves if leaf.kind == "tensor"]

    @property
    def worst(self) -> LeafComparison | None:
        """The failing leaf with the largest error, or the leaf with the largest error."""
        if not self.leaves:
            return None
        failing = [leaf for leaf in self.leaves if not leaf.passed]
        pool = failing or self.leaves
        return max(pool, key=lambda leaf: (not leaf.passed, _finite(leaf.rms_rel), _finite(leaf.max_abs)))

    @property
    def max_abs(self) -> float:
        return max((leaf.max_abs for leaf in self.tensor_leaves), default=0.0)

    @property
    def min_sqnr_db(self) -> float:
        return min((leaf.sqnr_db for leaf in self.tensor_leaves), default=math.inf)

    @property
    def min_cosine(self) -> float:
        return min((leaf.cosine for leaf in self.tensor_leaves), default=1.0)

    @property
    def max_rms_rel(self) -> float:
        return max((leaf.rms_rel for leaf in self.tensor_leaves), default=0.0)

    def metrics(self, prefix: str = "") -> dict[str, Any]:
        """Flat metrics: whole-output summaries, then per-leaf ones when there are several leaves."""
        out: dict[str, Any] = {
            f"{prefix}max_abs": self.max_abs,
            f"{prefix}max_rms_rel": self.max_rms_rel,
            f"{prefix}min_cosine": self.min_cosine,
            f"{prefix}min_sqnr_db": self.min_sqnr_db,
        }
        top1 = [leaf.top1_agreement for leaf in self.tensor_leaves if leaf.top1_agreement is not None]
        if top1:
            out[f"{prefix}top1_agreement"] = min(top1)
        if len(self.leaves) > 1:
            for leaf in self.leaves:
                for key, value in leaf.metrics().items():
                    out[f"{prefix}{leaf.name}.{key}"] = value
        return out

    def describe(self) -> str:
        """One line per failing leaf, in the manner of assert_close's messages."""
        failing = [leaf for leaf in self.leaves if not leaf.passed]
        if not failing:
            worst = self.worst
            return "all outputs match" + (f" (largest abs diff {worst.max_abs:.3g} in `{worst.name}`)" if worst and worst.kind == "tensor" else "")
        return "; ".join(f"`{leaf.name}`: {leaf.message}" for leaf in failing)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300



def compare(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    leaf_tolerances: Mapping[str, Tolerance] | None = None,
    equal_nan: bool = True,
    check_dtype: bool = False,
) -> Comparison:
    """Compare two (possibly nested) outputs leaf by leaf.

    Tolerances: `leaf_tolerances[name]` if given, else `rtol`/`atol` if given, else the default of
    the *less precise* of the two dtypes (comparing fp16 against fp32 uses fp16's tolerance).
    """
    flat_a, flat_e = flatten(actual), flatten(expected)
    leaves: list[LeafComparison] = []
    for name, exp in flat_e.items():
        if name not in flat_a:
            leaves.append(LeafComparison(name, "missing", False, "missing from the actual output"))
            continue
        act = flat_a[name]
        tol = (leaf_tolerances or {}).get(name)
        leaves.append(compare_leaf(name, act, exp, tol=tol, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype))
    for name in flat_a:
        if name not in flat_e:
            leaves.append(LeafComparison(name, "extra", False, "present in the actual output but not in the expected one"))
    return Comparison(leaves)
