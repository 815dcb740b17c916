"""core.models: building timm models for tiny data, size multipliers, weights files, cost counts."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from core.errors import ModelError
from core.models import ModelSpec, build_model, count_flops, count_params, list_models, model_card
from core.models import weights as weights_mod


def _forward(model: nn.Module, in_chans: int, size: int = 16) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, in_chans, size, size))


def _stage_params(model: nn.Module) -> int:
    return sum(p.numel() for i in range(1, 5) for p in getattr(model, f"layer{i}").parameters())


# --- building ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "lcnet_050", "test_efficientnet",
                                  "test_byobnet", "test_vit"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_small_models_run_at_16px(name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(name), num_classes=5, in_chans=in_chans, image_size=16)
    assert next(model.parameters()).device.type == "cpu"
    assert _forward(model, in_chans).shape == (2, 5)


def test_tagged_name_builds() -> None:
    model = build_model(ModelSpec("resnet10t.c3_in1k"), num_classes=3, in_chans=1)
    assert _forward(model, 1).shape == (2, 3)


def test_unknown_name_names_field_and_close_matches() -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("resnet1800"), 10, 3, field="teachers.1.model")
    err = info.value
    assert err.field == "teachers.1.model"
    assert "unknown model 'resnet1800'" in str(err)
    assert "kdlab models --filter resnet" in str(err)
    assert "close matches:" in str(err) and "resnet18" in err.fix
    assert "\n" not in str(err)


def test_seeded_builds_are_identical() -> None:
    torch.manual_seed(3)
    a = build_model(ModelSpec("resnet10t", width=0.25), 4, 1)
    torch.manual_seed(3)
    b = build_model(ModelSpec("resnet10t", width=0.25), 4, 1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- width / depth multipliers ----------------------------------------------------------------

def test_resnet_width_halves_channels_and_quarters_conv_params() -> None:
    full = build_model(ModelSpec("resnet18"), 10, 3)
    half = build_model(ModelSpec("resnet18", width=0.5), 10, 3)
    assert half.num_features == 256
    assert count_params(half) < count_params(full)
    assert 0.22 < _stage_params(half) / _stage_params(full) < 0.28
    assert _forward(half, 3).shape == (2, 10)


def test_resnet_multipliers_scale_the_variants_own_layout() -> None:
    # resnet10t: one block per stage and a deep-tiered stem of width 32
    model = build_model(ModelSpec("resnet10t", width=0.5, depth=2.0), 10, 1)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert model.conv1[3].out_channels == 16
    assert model.num_features == 256
    shallow = build_model(ModelSpec("resnet18", depth=0.5), 10, 1)
    assert [len(getattr(shallow, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    tiny = build_model(ModelSpec("resnet10t", width=0.01), 10, 1)  # channels floor at 8
    assert tiny.num_features == 8


def test_mobilenetv3_width_composes_with_the_variants_own_multiplier() -> None:
    small_100 = count_params(build_model(ModelSpec("mobilenetv3_small_100"), 10, 1))
    small_050 = count_params(build_model(ModelSpec("mobilenetv3_small_050"), 10, 1))
    assert count_params(build_model(ModelSpec("mobilenetv3_small_100", width=0.5), 10, 1)) == small_050
    assert count_params(build_model(ModelSpec("mobilenetv3_small_050", width=2.0), 10, 1)) == small_100
    assert small_050 < small_100


def test_efficientnet_depth_and_width_reduce_size() -> None:
    base = model_card(ModelSpec("efficientnet_b0"), 10, 1, 16)
    shallow = build_model(ModelSpec("efficientnet_b0", depth=0.5), 10, 1)
    base_blocks = sum(len(s) for s in build_model(ModelSpec("efficientnet_b0"), 10, 1).blocks)
    assert sum(len(s) for s in shallow.blocks) < base_blocks
    assert model_card(ModelSpec("efficientnet_b0", width=0.5), 10, 1, 16)["params"] < base["params"]
    assert _forward(shallow, 1).shape == (2, 10)


def test_multiplier_on_unsupported_family_names_the_field() -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("test_vit", width=0.5), 10, 1, field="student.model")
    assert info.value.field == "student.width"
    assert "ResNet" in str(info.value) and "MobileNetV3" in str(info.value)
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("lcnet_050", depth=2.0), 10, 1, field="teachers.0.model")
    assert info.value.field == "teachers.0.depth"


def test_changed_timm_builder_layout_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.models import sizing

    def moved(arch: str, kwargs: dict) -> None:
        raise LookupError("no _gen_* call")

    monkeypatch.setattr(sizing, "_capture_generator_call", moved)
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("mobilenetv3_small_100", width=0.5), 10, 1, field="student.model")
    assert info.value.field == "student.width" and "builder layout changed" in str(info.value)


def test_multiplier_of_one_is_the_plain_model() -> None:
    plain = count_params(build_model(ModelSpec("test_vit"), 10, 1, image_size=16))
    same = build_model(ModelSpec("test_vit", width=1.0, depth=1.0), 10, 1, image_size=16)
    assert count_params(same) == plain


# --- cost ---------------------------------------------------------------------------------------

def test_count_flops_matches_hand_count_and_restores_mode() -> None:
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert count_flops(linear, 3, 4) == 2 * 48 * 5  # one multiply-add = 2 FLOPs
    conv = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3, padding=1), nn.BatchNorm2d(2))
    conv.train()
    conv[0].weight.requires_grad_(True)
    assert count_flops(conv, 1, 4) == 2 * (2 * 1 * 9) * (4 * 4)
    assert conv.training and conv[1].training and conv[0].weight.requires_grad
    assert int(conv[1].num_batches_tracked) == 0  # eval forward: BN statistics untouched


def test_count_flops_and_card_for_timm_models() -> None:
    model = build_model(ModelSpec("mobilenetv3_small_050"), 10, 1)
    model.train()
    flops = count_flops(model, 1, 16)
    assert flops > 0 and model.training
    card = model_card(ModelSpec("mobilenetv3_small_050"), 10, 1, 16)
    assert card == {"name": "mobilenetv3_small_050", "params": count_params(model), "flops": flops}
    vit = model_card(ModelSpec("test_vit"), 10, 1, 16)
    assert vit["params"] > 0 and vit["flops"] > 0


def test_model_card_reports_too_small_images() -> None:
    with pytest.raises(ModelError) as info:
        model_card(ModelSpec("test_convnext"), 10, 1, 16, field="teachers.2.model")
    assert info.value.field == "teachers.2.model" and "16x16" in str(info.value)


def test_list_models_pattern_is_fast_and_counts_params() -> None:
    start = time.perf_counter()
    rows = list_models("resnet1", limit=4)
    assert time.perf_counter() - start < 10.0
    assert 0 < len(rows) <= 4
    assert all("resnet1" in r["name"] and isinstance(r["params"], int) and r["params"] > 0 for r in rows)
    by_name = {r["name"]: r["params"] for r in list_models("mobilenetv3_small_*")}
    assert by_name["mobilenetv3_small_100"] == 2_542_856  # timm's default 1000-class build
    assert list_models("no_such_family_xyz") == []


# --- weights files --------------------------------------------------------------------------------

def _save(model: nn.Module, path: Path, layout: str) -> Path:
    state = model.state_dict()
    if layout == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "torch":
        torch.save(state, path)
    elif layout == "timm_checkpoint":  # what timm's train script writes
        torch.save({"epoch": 3, "arch": "test_resnet", "state_dict": state,
                    "args": argparse.Namespace(lr=0.1)}, path)
    elif layout == "wrapped_model":  # DataParallel prefixes under a 'model' key
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.mark.parametrize("layout,suffix", [("safetensors", ".safetensors"), ("torch", ".pth"),
                                           ("timm_checkpoint", ".pth.tar"), ("wrapped_model", ".bin")])
def test_weights_file_round_trip_remakes_head(tmp_path: Path, layout: str, suffix: str) -> None:
    torch.manual_seed(0)
    source = build_model(ModelSpec("test_resnet"), num_classes=7, in_chans=3)
    path = _save(source, tmp_path / f"w{suffix}", layout)
    torch.manual_seed(1)
    model = build_model(ModelSpec("test_resnet", weights_file=str(path)), num_classes=4, in_chans=3,
                        field="teachers.0.model")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(model.bn1.running_var, source.bn1.running_var)
    assert model.fc.weight.shape == (4, source.fc.in_features)
    assert _forward(model, 3).shape == (2, 4)


def test_weights_file_adapts_rgb_stem_to_grey(tmp_path: Path) -> None:
    source = build_model(ModelSpec("test_resnet"), num_classes=7, in_chans=3)
    path = _save(source, tmp_path / "w.safetensors", "safetensors")
    model = build_model(ModelSpec("test_resnet", weights_file=str(path)), num_classes=7, in_chans=1)
    assert torch.allclose(model.conv1[0].weight[:, 0], source.conv1[0].weight.sum(dim=1))
    assert torch.equal(model.fc.weight, source.fc.weight)  # same class count: head kept


def test_weights_file_of_a_scaled_student_loads(tmp_path: Path) -> None:
    source = build_model(ModelSpec("resnet10t", width=0.25), num_classes=4, in_chans=1)
    path = _save(source, tmp_path / "student.safetensors", "safetensors")
    model = build_model(ModelSpec("resnet10t", width=0.25, weights_file=str(path)), 4, 1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("damage", ["random_safetensors", "random_pth", "truncated", "empty"])
def test_corrupt_weights_file_is_a_one_line_model_error(tmp_path: Path, damage: str) -> None:
    good = _save(build_model(ModelSpec("test_resnet"), 7, 3), tmp_path / "good.safetensors", "safetensors")
    if damage == "random_safetensors":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(os.urandom(4096))
    elif damage == "random_pth":
        path = tmp_path / "bad.pth"
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path = tmp_path / "cut.safetensors"
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("test_resnet", weights_file=str(path)), 7, 3, field="teachers.0.model")
    assert info.value.field == "teachers.0.weights_file"
    assert "\n" not in str(info.value)


def test_weights_file_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    mnv3 = build_model(ModelSpec("mobilenetv3_small_050"), 7, 3)
    other = _save(mnv3, tmp_path / "m.safetensors", "safetensors")
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("test_resnet", weights_file=str(other)), 7, 3, field="student.model")
    assert info.value.field == "student.weights_file" and "does not fit" in str(info.value)
    wide_model = build_model(ModelSpec("resnet10t", width=0.5), 7, 3)
    wide = _save(wide_model, tmp_path / "r.safetensors", "safetensors")
    with pytest.raises(ModelError, match="does not fit"):
        build_model(ModelSpec("resnet10t", width=0.25, weights_file=str(wide)), 7, 3)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("test_resnet", weights_file=str(tmp_path / "nope.pth")), 7, 3)
    assert info.value.field == "weights_file" and "does not exist" in str(info.value)


# --- pretrained=True ------------------------------------------------------------------------------

def test_pretrained_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_mod, "cached_pretrained_file", lambda cfg: None)
    monkeypatch.setenv("KDLAB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("resnet10t", pretrained=True), 10, 1, field="teachers.0.model")
    assert time.perf_counter() - start < 5.0
    assert info.value.field == "teachers.0.pretrained"
    assert "could not be fetched" in str(info.value) and "weights_file" in str(info.value)


def test_network_probe_gives_up_quickly() -> None:
    start = time.perf_counter()
    assert not weights_mod.host_reachable("kdlab-no-such-host.invalid", timeout_s=1.0)
    assert time.perf_counter() - start < 3.0


def test_pretrained_uses_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = build_model(ModelSpec("test_resnet"), num_classes=1000, in_chans=3)
    cached = _save(source, tmp_path / "model.safetensors", "safetensors")
    monkeypatch.setattr(weights_mod, "cached_pretrained_file", lambda cfg: cached)
    model = build_model(ModelSpec("test_resnet", pretrained=True), num_classes=6, in_chans=1)
    assert torch.equal(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    assert model.fc.weight.shape[0] == 6


def test_pretrained_with_multipliers_is_rejected() -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec("resnet10t", width=0.5, pretrained=True), 10, 1, field="student.model")
    assert info.value.field == "student.pretrained"
