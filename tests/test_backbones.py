"""IResNet state-dict compatibility with arcface_torch's backbone.pth layout, registry, weight files."""

from __future__ import annotations

import json

import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.backbones import (
    BACKBONE_CONFIG,
    BACKBONE_WEIGHTS,
    available_backbones,
    build_backbone,
    iresnet_config_from_state_dict,
    load_backbone,
    save_backbone,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_arcface_torch_keys(blocks: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """The key -> shape map of an official 112x112, 512-d IResNet, written out from its description."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for suffix in BN:
            keys[f"{prefix}.{suffix}"] = () if suffix == "num_batches_tracked" else (c,)

    keys["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    keys["prelu.weight"] = (64,)
    in_c = 64
    for stage, (count, out_c) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), start=1):
        for i in range(count):
            p = f"layer{stage}.{i}"
            c_in = in_c if i == 0 else out_c
            bn(f"{p}.bn1", c_in)
            keys[f"{p}.conv1.weight"] = (out_c, c_in, 3, 3)
            bn(f"{p}.bn2", out_c)
            keys[f"{p}.prelu.weight"] = (out_c,)
            keys[f"{p}.conv2.weight"] = (out_c, out_c, 3, 3)
            bn(f"{p}.bn3", out_c)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (out_c, c_in, 1, 1)
                bn(f"{p}.downsample.1", out_c)
        in_c = out_c
    bn("bn2", 512)
    keys["fc.weight"] = (512, 512 * 7 * 7)
    keys["fc.bias"] = (512,)
    bn("features", 512)
    return keys


@pytest.mark.parametrize(("name", "blocks"), [("r50", (3, 4, 14, 3)), ("r100", (3, 13, 30, 3))])
def test_official_key_names_and_shapes(name, blocks, tmp_path):
    model = build_backbone(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = expected_arcface_torch_keys(blocks)
    assert sorted(got) == sorted(expected)
    assert got == expected
    # a file in the official layout (torch.save of a plain state dict) loads strictly, architecture read off the keys
    state = {k: torch.randn(s) if s else torch.tensor(3) for k, s in expected.items()}
    torch.save(state, tmp_path / "backbone.pth")
    loaded = load_backbone(tmp_path / "backbone.pth")
    assert loaded.backbone_name == name
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert iresnet_config_from_state_dict(state) == (name, {})


def test_features_bn_weight_is_frozen_and_output_shape():
    model = build_backbone("tiny", input_size=(64, 64))
    assert not model.features.weight.requires_grad
    assert model.features.bias.requires_grad
    out = model.eval()(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.shape == (2, 128)
    assert model.fc.in_features == 128 * 4 * 4


def test_registry_names():
    assert {"r18", "r34", "r50", "r100", "r200", "tiny"} <= set(available_backbones())
    with pytest.raises(FacesynthError, match="unknown backbone 'r7'"):
        build_backbone("r7")


def test_safetensors_round_trip_strict(tmp_path):
    model = build_backbone("tiny", input_size=(48, 48), num_features=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model.train()(torch.randn(4, 3, 48, 48))  # move BN running stats away from their init
    save_backbone(model, tmp_path / "run", metadata={"step": 7})
    config = json.loads((tmp_path / "run" / BACKBONE_CONFIG).read_text())
    assert config["backbone"] == "tiny" and config["input_size"] == [48, 48] and config["_step"] == 7
    loaded = load_backbone(tmp_path / "run")
    assert not loaded.training
    x = torch.randn(3, 3, 48, 48)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    # the bare safetensors file next to its config, and a bare one read off its keys
    load_backbone(tmp_path / "run" / BACKBONE_WEIGHTS)
    (tmp_path / "bare").mkdir()
    (tmp_path / "run" / BACKBONE_WEIGHTS).rename(tmp_path / "bare" / "w.safetensors")
    bare = load_backbone(tmp_path / "bare" / "w.safetensors")
    assert bare.backbone_name == "iresnet"
    torch.testing.assert_close(bare(x), model(x))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    save_backbone(build_backbone("tiny"), tmp_path)
    with pytest.raises(FacesynthError, match=r"does not match the backbone: .*shape mismatches"):
        load_backbone(tmp_path, name="tiny", num_features=64)
    with pytest.raises(FacesynthError, match="missing keys"):
        load_backbone(tmp_path / BACKBONE_WEIGHTS, name="r18")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FacesynthError, match="junk.pth"):
        load_backbone(tmp_path / "junk.pth", name="tiny")
