"""preprocessing and input_audit: train/serve skew found, named and explained; clean pairs pass."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import v2

from torch_diagnose import FAIL, PASS, SKIP, WARN, Target, run_check
from torch_diagnose.images import generated_images
from tests.models import preprocessing as P

MODELS_FILE = os.path.join("tests", "models", "preprocessing.py")


def check(serving, ref=None, **opts):
    return run_check("preprocessing", P.target(serving, ref), **opts)


# -- clean pairs pass ----------------------------------------------------------------------------


def test_transforms_v1_vs_v2_pass() -> None:
    result = check(P.serving_v2())
    assert result.status == PASS, result.explain()
    assert result.metrics["pixel_mean_abs_255"] < 0.01
    assert result.metrics["top1_changed"] == 0
    assert result.metrics["scale_diagnosis"] == "same scaling and normalisation"
    assert "ImageNet" in result.metrics["reference_normalisation"]


def test_pil_vs_tensor_resize_with_antialias_passes() -> None:
    result = check(P.serving_tensor_resize())
    assert result.status == PASS, result.explain()
    # Resampling noise: far below the 0.5/255 that passes, but not bitwise equal.
    assert 0 < result.metrics["pixel_mean_abs_255"] < 0.05
    assert result.metrics["top1_changed"] == 0


def test_identical_pipeline_passes_with_zero_difference() -> None:
    result = check(P.reference())
    assert result.status == PASS, result.explain()
    assert result.metrics["max_abs_diff"] == 0.0
    assert result.metrics["samples_source"] == "generated"


# -- each skew fails with its diagnosis ----------------------------------------------------------


def test_bgr_from_opencv_is_named_with_cvtcolor_hint() -> None:
    pytest.importorskip("cv2")
    result = check(P.serve_cv2_bgr)
    assert result.status == FAIL, result.explain()
    assert "BGR" in result.summary
    assert result.culprit_label.startswith("preprocess serve_cv2_bgr(): channel order BGR")
    assert result.culprit.kind == "step"
    assert "cv2.COLOR_BGR2RGB" in result.hint
    assert result.location and result.location.startswith(MODELS_FILE + ":")
    assert result.metrics["diagnosis"].startswith("channel_order")


def test_channel_flip_step_in_compose_is_named() -> None:
    result = check(P.serving_flip_channels())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label.startswith("preprocess[3] Lambda")
    assert "BGR" in result.culprit_label
    assert "remove the channel flip" in result.hint


def test_missing_normalize_is_named_with_the_reference_stats() -> None:
    result = check(P.serving_no_normalize())
    assert result.status == FAIL, result.explain()
    assert "no Normalize" in result.culprit_label
    assert "un-normalised 0..1" in result.summary
    assert "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])" in result.hint
    assert result.metrics["scale_diagnosis"] == "0..1 values without Normalize"


def test_0_255_range_is_named_at_the_todtype_step() -> None:
    result = check(P.serving_0_255())
    assert result.status == FAIL, result.explain()
    assert "0..255" in result.summary
    assert result.culprit_label.startswith("preprocess[3] ToDtype")
    assert "scale=True" in result.hint
    # The fit recovers the factor of 255 per channel.
    for c in range(3):
        assert result.metrics[f"fit.ch{c}_scale"] == pytest.approx(255, rel=0.01)


def test_hwc_layout_is_named_and_the_model_error_reported() -> None:
    result = check(P.serve_hwc)
    assert result.status == FAIL, result.explain()
    assert "HWC" in result.culprit_label
    assert "permute(2, 0, 1)" in result.hint
    assert result.metrics["serving_shape"] == f"{P.SIZE}x{P.SIZE}x3"
    assert "model fails on the serving tensors" in result.summary


def test_nearest_vs_bilinear_resize_is_named() -> None:
    result = check(P.serving_nearest())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "preprocess[0] Resize(size=73, interpolation=nearest, antialias=True): nearest interpolation"
    assert "interpolates with nearest instead of bilinear" in result.summary
    assert "InterpolationMode.BILINEAR" in result.hint
    assert result.metrics["pixel_mean_abs_255"] > 2.0


def test_wrong_mean_std_is_translated_back_into_the_serving_stats() -> None:
    result = check(P.serving_wrong_mean_std())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label.startswith("preprocess[3] Normalize(mean=[0.5, 0.5, 0.5]")
    assert "wrong mean/std" in result.culprit_label
    assert "0.5/0.5" in result.summary
    assert "Normalize(mean=[0.485, 0.456, 0.406]" in result.hint
    finding = next(f for f in result.details["findings"] if f["kind"] == "scale")
    assert finding["evidence.serving_mean"] == pytest.approx([0.5] * 3, abs=0.01)
    assert finding["evidence.serving_std"] == pytest.approx([0.5] * 3, rel=0.02)


def test_double_normalize_is_named() -> None:
    result = check(P.serving_double_normalize())
    assert result.status == FAIL, result.explain()
    assert "Normalize applied twice" in result.culprit_label
    assert result.culprit_label.startswith("preprocess[4] Normalize")
    assert "remove the second normalisation" in result.hint


def test_random_augmentation_in_serving_is_named() -> None:
    result = check(P.serving_random_crop())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label.startswith("preprocess[0] RandomResizedCrop")
    assert result.culprit_label.endswith(": random")
    assert "augmentation" in result.hint


def test_crop_before_resize_is_named() -> None:
    result = check(P.serving_crop_first())
    assert result.status == FAIL, result.explain()
    assert "crops before resizing" in result.summary
    assert result.culprit_label.startswith("preprocess[0] CenterCrop")
    assert "Resize(73" in result.hint and "then CenterCrop(64)" in result.hint


def test_opencv_linear_resize_without_antialias_is_named() -> None:
    pytest.importorskip("cv2")
    result = check(P.serving_cv2_linear)
    assert result.status == FAIL, result.explain()
    assert "does not antialias" in result.summary
    assert "OpenCV" in result.summary
    assert "INTER_AREA" in result.hint
    assert result.metrics["decode_cv2_vs_pil_mean_abs_255"] >= 0


def test_batch_dependent_step_is_named() -> None:
    result = check(P.standardizing_pipeline(), P.standardizing_pipeline())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label.startswith("preprocess[4] PerImageStandardize")
    assert result.culprit.kind == "step" and result.culprit.location == result.location
    assert "batch" in result.summary
    assert result.location and result.location.startswith(MODELS_FILE + ":")


def test_serving_that_returns_pil_fails_clearly() -> None:
    result = check(T.Compose([T.Resize(P.RESIZE), T.CenterCrop(P.SIZE)]))
    assert result.status == FAIL
    assert "returns a PIL.Image" in result.summary
    assert "ToTensor" in result.hint


def test_serving_that_raises_fails_clearly() -> None:
    def broken(img):
        raise ValueError("no decoder")

    result = check(broken)
    assert result.status == FAIL
    assert "no decoder" in result.summary
    assert result.culprit_label.startswith("preprocess broken(): raises")


def test_random_reference_warns_instead_of_comparing() -> None:
    result = check(P.serving_v2(), P.serving_random_crop())
    assert result.status == WARN
    assert result.culprit_label.startswith("reference_preprocess[0] RandomResizedCrop")


# -- samples: paths, arrays, skips ---------------------------------------------------------------


def _jpeg_paths(tmp_path, n: int = 5) -> list[str]:
    paths = []
    for i, img in enumerate(generated_images(n, seed=5)):
        path = str(tmp_path / f"img_{i}.jpg")
        img.save(path, quality=92)
        paths.append(path)
    return paths


def _imread_pipeline(convert: bool):
    cv2 = pytest.importorskip("cv2")

    def serve_from_path(path: str) -> torch.Tensor:
        arr = cv2.imread(path)
        if convert:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        t = torch.from_numpy(arr).permute(2, 0, 1)
        t = v2.functional.center_crop(v2.functional.resize(t, [P.RESIZE], antialias=True), [P.SIZE, P.SIZE])
        return v2.functional.normalize(t.float() / 255, P.MEAN, P.STD)

    return serve_from_path


def test_file_path_samples_with_cv2_imread_bgr_fail(tmp_path) -> None:
    result = run_check("preprocessing", P.target(_imread_pipeline(convert=False), samples=_jpeg_paths(tmp_path)))
    assert result.status == FAIL, result.explain()
    assert result.metrics["samples_source"] == "target"
    assert result.metrics["serving_input"] == "raw" and result.metrics["reference_input"] == "pil"
    assert "BGR" in result.culprit_label and "cvtColor" in result.hint


def test_file_path_samples_with_cv2_imread_rgb_pass(tmp_path) -> None:
    result = run_check("preprocessing", P.target(_imread_pipeline(convert=True), samples=_jpeg_paths(tmp_path)))
    assert result.status == PASS, result.explain()
    assert result.metrics["samples"] == 5


def test_array_samples_pass_through_to_image_pipelines() -> None:
    arrays = [np.asarray(img.reduce(3)) for img in generated_images(4, seed=7)]  # ~160x213: a fast model pass
    serving = v2.Compose([v2.ToImage(), v2.Resize(P.RESIZE), v2.CenterCrop(P.SIZE), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(P.MEAN, P.STD)])
    result = run_check("preprocessing", P.target(serving, samples=arrays))
    assert result.status == PASS, result.explain()


def test_array_samples_skipped_by_v2_resize_are_named() -> None:
    # v2 transforms pass plain numpy arrays through untouched: the serving tensor is never resized.
    arrays = [np.asarray(img.reduce(3)) for img in generated_images(3, seed=7)]
    result = run_check("preprocessing", P.target(P.serving_v2(), samples=arrays))
    assert result.status == FAIL, result.explain()
    assert "output size" in result.culprit_label
    assert "ToImage() first" in result.hint


def test_no_pipelines_skips_and_points_to_input_audit() -> None:
    result = run_check("preprocessing", Target(P.classifier(), torch.randn(1, 3, P.SIZE, P.SIZE)))
    assert result.status == SKIP
    assert "input_audit" in result.summary


def test_one_pipeline_only_skips() -> None:
    result = run_check("preprocessing", Target(P.classifier(), torch.randn(1, 3, P.SIZE, P.SIZE), preprocess=P.reference()))
    assert result.status == SKIP
    assert "reference_preprocess" in result.summary


# -- input_audit ---------------------------------------------------------------------------------


def _batch(raw: bool = False) -> torch.Tensor:
    """8 generated images through the reference pipeline; `raw` undoes the normalisation (0..1)."""
    x = torch.stack([P.reference()(img) for img in generated_images(8)])
    if raw:
        x = x * torch.tensor(P.STD).view(1, 3, 1, 1) + torch.tensor(P.MEAN).view(1, 3, 1, 1)
    return x


def audit(x: torch.Tensor):
    return run_check("input_audit", Target(P.classifier(), x))


def test_audit_normalised_images_pass() -> None:
    result = audit(_batch())
    assert result.status == PASS, result.explain()
    assert result.metrics["kind"] == "normalised" and result.metrics["layout"] == "NCHW"
    assert result.metrics["neighbour_correlation"] > 0.8


def test_audit_0_255_warns() -> None:
    result = audit(_batch(raw=True) * 255)
    assert result.status == WARN
    assert "un-normalised" in result.summary and "0..255" in result.summary
    assert result.culprit.kind == "input" and result.culprit_label == "input `x` (NCHW, float32)"


def test_audit_uint8_warns() -> None:
    result = audit((_batch(raw=True) * 255).round().to(torch.uint8))
    assert result.status == WARN
    assert result.metrics["dtype"] == "uint8"
    assert "ToDtype(torch.float32, scale=True)" in result.hint


def test_audit_0_1_without_normalize_warns() -> None:
    result = audit(_batch(raw=True))
    assert result.status == WARN
    assert "not normalised" in result.summary
    assert "Normalize(mean=[0.485" in result.hint


def test_audit_channel_swapped_images_warn() -> None:
    raw = _batch(raw=True).flip(1)
    x = (raw - torch.tensor(P.MEAN).view(1, 3, 1, 1)) / torch.tensor(P.STD).view(1, 3, 1, 1)
    result = audit(x)
    assert result.status == WARN, result.explain()
    assert "BGR" in result.summary
    assert "cvtColor" in result.hint


def test_audit_nhwc_that_the_model_rejects_warns() -> None:
    result = audit(_batch().permute(0, 2, 3, 1).contiguous())
    assert result.status == WARN
    assert result.metrics["layout"] == "NHWC"
    assert "permute(0, 3, 1, 2)" in result.hint


def test_audit_random_noise_skips() -> None:
    result = audit(torch.randn(2, 3, P.SIZE, P.SIZE))
    assert result.status == SKIP
    assert "random noise" in result.summary


def test_audit_non_image_model_skips() -> None:
    result = run_check("input_audit", Target(torch.nn.Linear(8, 2), torch.randn(2, 8)))
    assert result.status == SKIP


# -- smaller differences: named, graded ----------------------------------------------------------


def test_slightly_wrong_mean_warns_with_the_shift() -> None:
    serving = T.Compose([T.Resize(P.RESIZE), T.CenterCrop(P.SIZE), T.ToTensor(), T.Normalize([0.48, 0.456, 0.406], P.STD)])
    result = check(serving)
    assert result.status == WARN, result.explain()
    assert "differs slightly" in result.summary
    assert result.metrics["scale_shift_255"] == pytest.approx(0.005 * 255, rel=0.05)
    assert result.culprit_label.startswith("preprocess[3] Normalize(mean=[0.48,")


def test_missing_center_crop_is_named() -> None:
    result = check(T.Compose([T.Resize(P.RESIZE), T.ToTensor(), T.Normalize(P.MEAN, P.STD)]))
    assert result.status == FAIL, result.explain()
    assert result.culprit_label.endswith("no CenterCrop")
    assert "then CenterCrop(64)" in result.hint


def test_squash_resize_instead_of_resize_and_crop_fails() -> None:
    result = check(T.Compose([T.Resize((P.SIZE, P.SIZE)), T.ToTensor(), T.Normalize(P.MEAN, P.STD)]))
    assert result.status == FAIL, result.explain()
    assert "Resize((64, 64))" in result.summary
    assert result.metrics["pixel_mean_abs_255"] > 2.0


def test_dict_outputs_are_diagnosed_per_leaf() -> None:
    ref = P.reference()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = P.classifier()

        def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(pixel_values)}

    def serving(img):
        return {"pixel_values": P.serving_no_normalize()(img)}

    x = {"pixel_values": torch.randn(2, 3, P.SIZE, P.SIZE)}
    result = run_check("preprocessing", Target(Wrapped().eval(), x, preprocess=serving,
                                               reference_preprocess=lambda img: {"pixel_values": ref(img)}))
    assert result.status == FAIL, result.explain()
    assert "no Normalize" in result.culprit_label and "`pixel_values`" in result.culprit_label


def test_scaled_twice_is_named() -> None:
    serving = T.Compose([T.Resize(P.RESIZE), T.CenterCrop(P.SIZE), T.ToTensor(), T.Lambda(lambda x: x / 255), T.Normalize(P.MEAN, P.STD)])
    result = check(serving)
    assert result.status == FAIL, result.explain()
    assert "divides by 255 twice" in result.summary
    assert result.culprit_label.startswith("preprocess[3] Lambda")
    assert "remove the extra `/ 255`" in result.hint


def test_reference_divided_by_255_is_named_divided_twice_not_a_wrong_std() -> None:
    result = check(P.serving_divided_after_normalize())
    assert result.status == FAIL, result.explain()
    assert "divides by 255 twice" in result.summary and "reference's divided by 255" in result.summary
    assert "std" not in result.summary  # not "wrong mean/std (std ~ 58)"
    assert result.culprit_label == "preprocess[4] Lambda(lambda): divided by 255 twice"
    assert "remove the extra `/ 255`" in result.hint


@pytest.mark.parametrize("serving", [P.serving_tensor_resize_no_antialias(),
                                     v2.Compose([v2.PILToTensor(), v2.Resize(P.RESIZE, antialias=False), v2.CenterCrop(P.SIZE),
                                                 v2.ToDtype(torch.float32, scale=True), v2.Normalize(P.MEAN, P.STD)])],
                         ids=["v1", "v2"])
def test_tensor_resize_without_antialias_is_a_known_path(serving) -> None:
    result = check(serving)
    assert result.status == FAIL, result.explain()
    assert "resize without antialias (torchvision tensor Resize(antialias=False))" in result.summary
    assert "OpenCV" not in result.summary  # v1's rounding ties with cv2 INTER_LINEAR: the declared step wins
    assert result.culprit_label.startswith("preprocess[1] Resize(") and result.culprit_label.endswith(": resize without antialias")
    assert "antialias=True" in result.hint


def test_nan_in_serving_tensors_is_reported() -> None:
    # log(0) on black pixels: -inf reaches the model.
    serving = T.Compose([T.Resize(P.RESIZE), T.CenterCrop(P.SIZE), T.ToTensor(), T.Lambda(torch.log), T.Normalize(P.MEAN, P.STD)])
    result = check(serving)
    assert result.status == FAIL, result.explain()
    assert "NaN/Inf" in result.summary and "NaN/Inf" in result.culprit_label


def test_works_without_opencv(monkeypatch) -> None:
    import torch_diagnose.images as images

    monkeypatch.setattr(images, "opencv", lambda: None)
    result = check(P.serving_nearest())
    assert result.status == FAIL, result.explain()
    assert result.metrics["opencv"] is False
    assert "decode_cv2_vs_pil_mean_abs_255" not in result.metrics
    assert "nearest" in result.culprit_label
    assert all("OpenCV" not in row["variant"] for row in result.details["analysis"]["serving_variants"])


def test_non_image_samples_skip() -> None:
    result = run_check("preprocessing", P.target(P.serving_v2(), samples=["a sentence", "another one"]))
    assert result.status == SKIP
    assert "not an image" in result.summary
