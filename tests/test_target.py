"""Target specs (diagnostics/target.py): every accepted form, and a one-line fix for every bad one."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from torch_diagnose.errors import TargetError, UsageError
from torch_diagnose.inputs import call_model
from torch_diagnose.target import DEFAULT_FACTORIES, Target, coerce_target, load_target
from tests.models import targets as factories

FACTORY_FILE = '''\
import torch
from torch import nn

from torch_diagnose.target import Target


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def only_module():
    torch.manual_seed(0)
    return Net()


def with_inputs():
    return only_module(), torch.ones(2, 4)


def as_target():
    return Target(model=only_module(), example_inputs={"x": torch.ones(3, 4)}, name="custom")


def broken():
    raise ValueError("config has no key 'depth'")


def returns_none():
    return None


def noisy():
    raise RuntimeError("shape mismatch in layer 3\\n  details the CLI cannot show on one line")
'''


def bad_spec(spec: str, **kwargs) -> str:
    """The message of the TargetError that `spec` raises; it must be one line."""
    with pytest.raises(TargetError) as info:
        load_target(spec, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, UsageError)
    assert message and "\n" not in message, message
    return message


@pytest.fixture()
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_FILE)
    return path


# --- spec forms -----------------------------------------------------------------------------


def test_demo() -> None:
    target = load_target("demo")
    assert target.name == "demo-resnet18" and target.source == "demo"
    assert tuple(target.example_inputs.shape) == (2, 3, 224, 224)
    assert callable(target.factory)


def test_file_factory_returning_module_and_inputs(factory_file: Path) -> None:
    target = load_target(f"{factory_file}:with_inputs")
    assert type(target.model).__name__ == "Net" and target.name == "Net"
    assert torch.equal(target.example_inputs, torch.ones(2, 4))
    assert target.source == f"{factory_file}:with_inputs"
    fresh = target.factory()  # rebuilds the same model: the factory is what the spec named
    fresh = fresh[0] if isinstance(fresh, tuple) else fresh
    assert torch.equal(fresh.fc.weight, target.model.fc.weight)


def test_file_factory_returning_target(factory_file: Path) -> None:
    target = load_target(f"{factory_file}:as_target")
    assert target.name == "custom"
    assert set(target.example_inputs) == {"x"}
    assert call_model(target.model, target.example_inputs).shape == (3, 2)


def test_file_factory_returning_module_needs_input_shape(factory_file: Path) -> None:
    message = bad_spec(f"{factory_file}:only_module")
    assert "no example inputs" in message and "--input-shape" in message
    target = load_target(f"{factory_file}:only_module", input_shape=(5, 4))
    assert target.example_inputs.shape == (5, 4) and target.example_inputs.dtype == torch.float32
    again = load_target(f"{factory_file}:only_module", input_shape=(5, 4))
    assert torch.equal(again.example_inputs, target.example_inputs)  # synthesised with a fixed seed
    half = load_target(f"{factory_file}:only_module", input_shape=(5, 4), input_dtype="float64")
    assert half.example_inputs.dtype == torch.float64


def test_input_shape_replaces_the_factory_inputs() -> None:
    target = load_target("tests.models.targets:module_and_inputs", input_shape=(6, 8))
    assert target.example_inputs.shape == (6, 8)


def test_a_target_file_is_the_users_code_wherever_it_sits(tmp_path: Path) -> None:
    from torch_diagnose.locate.code import owner

    folder = tmp_path / "site-packages" / "mypkg"
    folder.mkdir(parents=True)
    path = folder / "served_model.py"
    path.write_text("import torch\n\ndef build_model():\n    return torch.nn.Linear(3, 1), torch.zeros(1, 3)\n")
    assert owner(str(path)) == "library"  # by its path alone
    load_target(f"{path}:build_model")
    assert owner(str(path)) == "user"


def test_default_factory_names(tmp_path: Path) -> None:
    path = tmp_path / "defaults.py"
    path.write_text("import torch\n\ndef build_model():\n    return torch.nn.Linear(3, 1), torch.zeros(1, 3)\n")
    target = load_target(str(path))
    assert isinstance(target.model, torch.nn.Linear)
    none = tmp_path / "nothing_here.py"
    none.write_text("def helper():\n    return 1\n")
    message = bad_spec(str(none))
    assert "names no factory" in message and f"{none}:FACTORY" in message
    assert all(name in message for name in DEFAULT_FACTORIES)


def test_missing_factory_lists_what_the_file_defines(factory_file: Path) -> None:
    message = bad_spec(f"{factory_file}:build")
    assert "no factory 'build'" in message
    assert "it defines: Net, only_module, with_inputs, as_target, broken, returns_none, noisy" in message
    assert "Target" not in message.split("it defines:")[1]  # imported names are not offered


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken_syntax.py"
    path.write_text("import torch\n\ndef make_model(:\n    return None\n")
    message = bad_spec(f"{path}:make_model")
    assert "syntax error" in message and str(path) in message and "line 3" in message


def test_import_error_in_file(tmp_path: Path) -> None:
    path = tmp_path / "bad_import.py"
    path.write_text("import no_such_dependency_xyz\n")
    message = bad_spec(f"{path}:make_model")
    assert "ModuleNotFoundError" in message and "no_such_dependency_xyz" in message


def test_factory_that_raises(factory_file: Path) -> None:
    message = bad_spec(f"{factory_file}:broken")
    assert "broken raised ValueError" in message and "config has no key 'depth'" in message
    message = bad_spec(f"{factory_file}:noisy")  # a multi-line exception still gives one line
    assert message.endswith("noisy raised RuntimeError: shape mismatch in layer 3")


def test_factory_returning_a_non_model(factory_file: Path) -> None:
    message = bad_spec(f"{factory_file}:returns_none")
    assert "returned NoneType" in message
    assert "nn.Module" in message and "(module, example_inputs)" in message and "Target" in message
    message = bad_spec("tests.models.targets:not_a_model")
    assert "returned dict" in message
    message = bad_spec("tests.models.targets:NOT_CALLABLE")
    assert "NOT_CALLABLE is a int, not a callable factory" in message


def test_missing_file() -> None:
    message = bad_spec("does/not/exist.py:make_model")
    assert "does/not/exist.py" in message and "does not exist" in message
    message = bad_spec("missing_model.pt")
    assert "'missing_model.pt' does not exist" in message


def test_module_factory() -> None:
    target = load_target("tests.models.targets:module_and_inputs")
    assert isinstance(target.model, factories.TinyNet)
    assert torch.equal(target.example_inputs, factories.tiny_inputs())
    assert target.factory is factories.module_and_inputs
    default = load_target("tests.models.targets")  # make_target, the first default name
    assert default.name == "tiny" and default.factory is factories.make_target


def test_module_factory_problems() -> None:
    message = bad_spec("tests.models.targets:nope")
    assert "tests.models.targets has no factory 'nope'" in message
    assert "module_and_inputs" in message and "tiny_net" in message
    message = bad_spec("tests.models.targets:raises")
    assert "raised RuntimeError: weights file missing: /nowhere/tiny.pt" in message
    message = bad_spec("no_such_package_xyz.models:make")
    assert "cannot import module 'no_such_package_xyz.models'" in message and "No module named" in message


def test_unparseable_specs() -> None:
    assert "empty target spec" in bad_spec("  ")
    message = bad_spec("not a spec:at all")
    assert "cannot understand target" in message and "file.py:factory" in message


def test_folder_is_not_a_target(tmp_path: Path) -> None:
    assert "is a folder" in bad_spec(str(tmp_path))


def test_torchvision_model_with_random_weights() -> None:
    target = load_target("torchvision:resnet18")
    assert target.name == "resnet18" and type(target.model).__name__ == "ResNet"
    assert tuple(target.example_inputs.shape) == (2, 3, 224, 224)
    rebuilt = target.factory()  # seeded: the same random weights again
    assert torch.equal(rebuilt.conv1.weight, target.model.conv1.weight)


def test_torchvision_segmentation_and_detection_build_without_downloading(monkeypatch) -> None:
    """Their builders default to ImageNet backbone weights: random must mean random throughout (offline)."""
    from torchvision.models import _api

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    monkeypatch.setattr(_api, "load_state_dict_from_url", no_download)
    for name in ("lraspp_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"):
        target = load_target(f"torchvision:{name}")
        assert target.name == name


def test_torchvision_bad_names_and_parameters() -> None:
    message = bad_spec("torchvision:nonexistent")
    assert "torchvision has no model 'nonexistent'" in message and "list_models()" in message
    message = bad_spec("torchvision:resnet19")
    assert "did you mean" in message and "resnet18" in message
    message = bad_spec("torchvision:resnet18?pretrained=1")
    assert "unknown parameter 'pretrained'" in message and "weights" in message


# --- model files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    return factories.module_and_inputs()


def test_torchscript_file(tmp_path: Path, tiny) -> None:
    model, x = tiny
    path = tmp_path / "tiny_scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
        torch.jit.trace(model, x).save(str(path))
        # The model's class lives in tests/models/, so the archive holds code/.../models/...: it is
        # still TorchScript, not an exported program.
        message = bad_spec(str(path))
        target = load_target(str(path), input_shape=(3, 8))
    assert "no example inputs" in message and "--input-shape" in message
    assert isinstance(target.model, torch.jit.ScriptModule) and target.name == "tiny_scripted"
    with torch.no_grad():
        assert torch.equal(target.model(x), model(x))


def test_exported_program_recovers_example_inputs(tmp_path: Path, tiny) -> None:
    model, x = tiny
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    target = load_target(str(path))
    assert target.name == "tiny"
    assert torch.equal(target.example_inputs, x)
    with torch.no_grad():
        torch.testing.assert_close(call_model(target.model, target.example_inputs), model(x))
    renamed = tmp_path / "tiny_exported.pt"  # recognised by content, not only by the .pt2 suffix
    renamed.write_bytes(path.read_bytes())
    assert torch.equal(load_target(str(renamed)).example_inputs, x)


def test_exported_program_with_positional_and_keyword_inputs(tmp_path: Path) -> None:
    model = factories.MaskedNet()
    x, mask = torch.randn(2, 3), torch.tensor([[1.0, 0.0, 1.0]]).expand(2, 3).contiguous()
    path = tmp_path / "masked.pt2"
    torch.export.save(torch.export.export(model, (x,), {"mask": mask}), str(path))
    target = load_target(str(path))
    # The mask must not be dropped: the inputs call the loaded model as they called the original.
    assert isinstance(target.example_inputs, tuple) and len(target.example_inputs) == 2
    assert torch.equal(call_model(target.model, target.example_inputs), model(x, mask=mask))


def test_full_pickle_needs_trust_pickle(tmp_path: Path, tiny) -> None:
    model, x = tiny
    path = tmp_path / "full_model.pt"
    torch.save(model, str(path))
    message = bad_spec(str(path))
    assert "--trust-pickle" in message and "run code" in message
    target = load_target(str(path), trust_pickle=True, input_shape=(3, 8))
    assert isinstance(target.model, factories.TinyNet)
    with torch.no_grad():
        assert torch.equal(target.model(x), model(x))


def test_state_dict_file_is_refused_with_advice(tmp_path: Path, tiny) -> None:
    model, _ = tiny
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), str(path))
    for trust in (False, True):
        message = bad_spec(str(path), trust_pickle=trust)
        assert "holds a state_dict, not a model" in message
        assert "factory" in message and "load_state_dict" in message
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, str(checkpoint))
    message = bad_spec(str(checkpoint))
    assert "not a model" in message and "load_state_dict" in message


def test_unknown_file_format_is_not_called_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(7, 107)))
    for trust in (False, True):
        message = bad_spec(str(path), trust_pickle=trust)
        assert "not a model file" in message and "--trust-pickle" not in message
        assert "factory" in message


# --- coerce_target --------------------------------------------------------------------------


def test_coerce_target_accepts_the_three_forms_and_names_the_source() -> None:
    model, x = factories.module_and_inputs()
    assert coerce_target(model).example_inputs is None
    assert coerce_target((model, x), source="api").source == "api"
    target = Target(model=model, example_inputs=x)
    assert coerce_target(target) is target
    with pytest.raises(TargetError, match="returned list"):
        coerce_target([model, x], source="api")
    with pytest.raises(TargetError, match="not a torch.nn.Module"):
        Target(model=lambda t: t, name="fn")


def test_hub_specs_dispatch_and_are_named_in_the_empty_spec_message(tmp_path: Path) -> None:
    message = bad_spec(" ")
    assert "timm:NAME" in message and "hf:FOLDER" in message
    assert "has no config.json" in bad_spec(f"hf:{tmp_path}")  # hf: goes to hub.py, not to the module loader
