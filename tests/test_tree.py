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


# --- objects that hold tensors: compared by content, never by identity (issue 14) -------------


class Layer:
    """Like transformers' DynamicLayer: a plain object (no __eq__) with tensors and metadata."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.device = keys.device
        self.update = print  # a callable attribute: no data, left out


class Cache:
    __slots__ = ("layers", "owner", "me")

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.owner = torch.nn.Linear(1, 1)  # a module inside an output: not compared
        self.me = self  # a cycle: walked once


def _cache(scale: float = 1.0) -> dict:
    return {"logits": t(1.0, 2.0) * scale, "cache": Cache([Layer(t(3.0) * scale, t(4.0) * scale)])}


def test_plain_objects_are_walked_through_their_attributes() -> None:
    from torch_diagnose.compare import compare

    out = _cache()
    assert list(flatten(out)) == ["logits", "cache.layers[0].keys", "cache.layers[0].values",
                                  "cache.layers[0].is_initialized", "cache.layers[0].device"]
    assert compare(_cache(), out).passed  # two distinct objects with equal content match
    worse = compare(_cache(2.0), out)
    assert not worse.passed and not worse.leaf("cache.layers[0].keys").passed


def test_map_leaves_rebuilds_plain_objects_and_keeps_them_when_nothing_changes() -> None:
    out = _cache()
    doubled = map_leaves(out, _double)
    cache = doubled["cache"]
    assert type(cache) is Cache and cache is not out["cache"] and cache.layers[0] is not out["cache"].layers[0]
    assert torch.equal(cache.layers[0].keys, t(6.0)) and torch.equal(out["cache"].layers[0].keys, t(3.0))
    assert cache.owner is out["cache"].owner and cache.layers[0].update is print
    assert map_leaves(out, lambda v: v)["cache"] is out["cache"]
    seen: list[object] = []
    map_leaves(out, lambda v: seen.append(v) or v)
    assert seen == list(flatten(out).values())


def test_singletons_and_c_objects_stay_values() -> None:
    out = {"dtype": torch.float32, "none": None, "kind": torch.nn.Linear, "fn": print}
    assert flatten(out) == {"dtype": torch.float32, "none": None, "kind": torch.nn.Linear}


def _real(factory_name: str) -> tuple[object, object]:
    from tests.models import real_models

    target = getattr(real_models, factory_name)()
    with torch.no_grad():
        return target.model(**target.example_inputs), target.model(**target.example_inputs)


def test_gpt2_output_and_its_dynamic_cache_flatten_and_compare_by_content() -> None:
    from torch_diagnose.compare import compare

    out, again = _real("gpt2")
    names = list(flatten(out))
    assert names[0] == "logits" and "cache.layers[0].keys" in names and "cache.layers[1].values" in names
    assert compare(again, out).passed
    cast = map_leaves(out, lambda v: v.double() if isinstance(v, torch.Tensor) else v)
    assert type(cast) is type(out) and type(cast.cache) is type(out.cache)
    assert cast.cache.layers[0].keys.dtype == torch.float64 and out.cache.layers[0].keys.dtype == torch.float32
    assert list(flatten(cast)) == names and cast.cache.get_seq_length() == out.cache.get_seq_length()


def test_t5_encoder_decoder_cache_flattens_both_caches() -> None:
    from torch_diagnose.compare import compare

    out, again = _real("t5")
    names = list(flatten(out))
    assert "cache.self_attention_cache.layers[0].keys" in names
    assert "cache.cross_attention_cache.layers[1].values" in names and "encoder_last_hidden_state" in names
    assert compare(again, out).passed
    moved = map_leaves(out, lambda v: v * 0 if isinstance(v, torch.Tensor) else v)
    assert not compare(moved, out).passed and type(moved.cache) is type(out.cache)


def test_plain_objects_names_the_outermost_walked_objects() -> None:
    from torch_diagnose.tree import plain_objects

    out = _cache()
    found = plain_objects(out)
    assert list(found) == ["cache"] and found["cache"] is out["cache"]
    assert list(plain_objects(Cache([]))) == ["output"]
    assert plain_objects({"x": t(1.0), "d": torch.float32}) == {}
