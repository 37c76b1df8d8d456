"""Leaf naming and structure-preserving maps over nested model outputs (diagnostics/tree.py)."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import torch

from torch_diagnose.inputs import concat_batch
from torch_diagnose.tree import ROOT, flatten, iter_leaves, map_leaves, tensor_leaves

Detections = namedtuple("Detections", ["boxes", "scores"])


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: tuple


@dataclasses.dataclass(frozen=True)
class WithDerived:
    x: torch.Tensor
    n: int = dataclasses.field(init=False, default=0)
    tag: str = "t"


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_bare_tensor_is_named_output() -> None:
    x = t(1.0)
    assert list(flatten(x)) == [ROOT] == ["output"]
    assert flatten(x)["output"] is x
    assert list(flatten(x, root="x")) == ["x"]


def test_tuple_and_list_items_are_indexed() -> None:
    assert list(flatten((t(1), t(2)))) == ["[0]", "[1]"]
    assert list(flatten([t(1), t(2), t(3)])) == ["[0]", "[1]", "[2]"]


def test_dict_items_are_named_by_key_in_order() -> None:
    out = {"logits": t(1), "boxes": t(2), 3: t(3)}
    assert list(flatten(out)) == ["logits", "boxes", "3"]


def test_namedtuple_fields_are_named() -> None:
    assert list(flatten(Detections(t(1), t(2)))) == ["boxes", "scores"]


def test_dataclass_fields_are_named() -> None:
    out = Output(logits=t(1), hidden=(t(2), t(3)))
    assert list(flatten(out)) == ["logits", "hidden[0]", "hidden[1]"]


def test_nested_names_read_like_access_paths() -> None:
    out = ({"boxes": t(1), "labels": [t(2), {"deep": t(3)}]}, Detections(t(4), (t(5),)))
    assert list(flatten(out)) == [
        "[0].boxes", "[0].labels[0]", "[0].labels[1].deep", "[1].boxes", "[1].scores[0]",
    ]


def test_non_tensor_leaves_are_kept_and_tensor_leaves_filters_them() -> None:
    out = {"a": t(1), "name": "cat", "n": 3, "none": None}
    assert flatten(out) == {"a": out["a"], "name": "cat", "n": 3, "none": None}
    assert list(tensor_leaves(out)) == ["a"]


def test_empty_containers_have_no_leaves() -> None:
    assert flatten(()) == {}
    assert flatten({}) == {}
    assert list(iter_leaves([(), {}])) == []


def _double(x: object) -> object:
    return x * 2 if isinstance(x, torch.Tensor) else x


def test_map_leaves_round_trips_structure_and_types() -> None:
    out = {
        "det": Detections(t(1), [t(2), t(3)]),
        "cls": Output(logits=t(4), hidden=(t(5), "tag", None)),
        "od": OrderedDict(z=t(6), a=7),
    }
    mapped = map_leaves(out, _double)
    assert type(mapped) is dict and type(mapped["det"]) is Detections
    assert type(mapped["det"].scores) is list and type(mapped["cls"]) is Output
    assert type(mapped["od"]) is OrderedDict and list(mapped["od"]) == ["z", "a"]
    assert list(flatten(mapped)) == list(flatten(out))
    for name, leaf in flatten(out).items():
        new = flatten(mapped)[name]
        if isinstance(leaf, torch.Tensor):
            assert torch.equal(new, leaf * 2)
        else:
            assert new == leaf
    identity = map_leaves(out, lambda x: x)
    assert flatten(identity) == flatten(out)


def test_map_leaves_visits_leaves_in_flatten_order() -> None:
    out = ({"b": t(1), "a": [t(2), t(3)]}, Detections(t(4), t(5)), Output(t(6), (t(7),)))
    seen: list[float] = []
    map_leaves(out, lambda x: seen.append(float(x)))
    assert seen == [float(v) for v in flatten(out).values()]


def test_map_leaves_maps_dataclass_fields_outside_init() -> None:
    # iter_leaves names every field, so map_leaves must visit every field too (init=False included),
    # in the same order, or leaf-by-leaf rebuilds such as concat_batch shift values between fields.
    obj = WithDerived(t(1.0, 2.0))
    object.__setattr__(obj, "n", 9)
    assert list(flatten(obj)) == ["x", "n", "tag"]
    seen: list[object] = []
    mapped = map_leaves(obj, lambda v: seen.append(v) or v)
    assert seen[1:] == [9, "t"]
    assert mapped.n == 9 and mapped.tag == "t"
    joined = concat_batch([obj, obj])
    assert torch.equal(joined.x, t(1.0, 2.0, 1.0, 2.0))
    assert joined.n == 9 and joined.tag == "t"
