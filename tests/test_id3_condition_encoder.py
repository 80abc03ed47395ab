"""ID3ConditionEncoder and the attribute mapping: shapes, null condition, round trip, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.generators.attributes import (
    NEUTRAL_ATTRIBUTES,
    attributes_to_array,
    check_attributes,
    denormalize_attributes,
    normalize_attributes,
)
from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder


def _encoder(**kwargs) -> ID3ConditionEncoder:
    defaults = dict(embedding_dim=16, hidden_dims=(32, 24), cross_attention_dim=12, num_tokens=2)
    defaults.update(kwargs)
    return ID3ConditionEncoder(**defaults)


def _unit(batch: int, dim: int = 16) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(batch, dim), dim=1)


def test_attribute_mapping_round_trip_and_neutral_fill():
    physical = np.array([[-90, 45, 0, 0], [90, -90, 30, 100]], dtype=np.float32)
    normalized = normalize_attributes(physical)
    assert normalized.abs().max() <= 1.0
    assert torch.allclose(normalized[1], torch.tensor([1.0, -1.0, 1 / 3, 1.0]))
    assert torch.allclose(denormalize_attributes(normalized), torch.from_numpy(physical))
    array, filled = attributes_to_array([{"yaw": 5.0, "age": None}, None])
    assert filled == 7
    assert array[0].tolist() == [5.0, 0.0, 0.0, NEUTRAL_ATTRIBUTES["age"]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[91.0, 0, 0, 30]], "yaw=91 is outside"),
        ([[0, 0, 0, -1.0]], "age=-1 is outside"),
        ([[0, float("nan"), 0, 30]], "pitch is nan"),
        ([[0, 0, 0]], "expected shape"),
    ],
)
def test_bad_attributes_are_named(values, message):
    with pytest.raises(FacesynthError, match=message):
        check_attributes(np.array(values, dtype=np.float32))


def test_tokens_shape_and_null_condition_dropout():
    encoder = _encoder(condition_dropout=0.5)
    y, s = _unit(6), torch.zeros(6, 4)
    tokens = encoder(y, s)
    assert tokens.shape == (6, 2, 12)
    drop = torch.tensor([True, False, True, False, False, False])
    dropped = encoder(y, s, drop)
    assert torch.equal(dropped[0], encoder.null_condition.detach())
    assert torch.equal(dropped[1], tokens[1])
    mask = encoder.sample_drop_mask(1000, torch.Generator().manual_seed(0))
    assert 400 < int(mask.sum()) < 600
    assert _encoder().sample_drop_mask(4) is None
    # the attribute input matters; without attributes the model ignores them
    assert not torch.allclose(encoder(y, s), encoder(y, torch.ones(6, 4)))
    no_attr = _encoder(num_attributes=0)
    assert no_attr(y, None).shape == (6, 2, 12)
    with pytest.raises(FacesynthError, match="conditioned on attributes"):
        encoder(y, None)


def test_save_pretrained_round_trip(tmp_path):
    encoder = _encoder(activation="silu")
    encoder.save_pretrained(tmp_path / "ce")
    loaded = ID3ConditionEncoder.from_pretrained(tmp_path / "ce")
    assert loaded.config.activation == "silu" and loaded.config.num_tokens == 2
    y, s = _unit(3), torch.rand(3, 4) * 2 - 1
    assert torch.equal(encoder(y, s), loaded(y, s))


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (torch.nn.functional.normalize(torch.randn(2, 8), dim=1), r"expected shape \(batch, 16\)"),
        (torch.randn(2, 16) * 3, "L2 norm"),
        (torch.full((2, 16), float("nan")), "NaN"),
    ],
)
def test_check_inputs_rejects_bad_embeddings(embeddings, message):
    with pytest.raises(FacesynthError, match=message):
        _encoder().check_inputs(embeddings, None)


def test_check_inputs_attribute_rows_and_range():
    encoder = _encoder()
    encoder.check_inputs(_unit(2), np.zeros((2, 4), np.float32))
    with pytest.raises(FacesynthError, match="3 rows for 2"):
        encoder.check_inputs(_unit(2), np.zeros((3, 4), np.float32))
    with pytest.raises(FacesynthError, match="roll=120"):
        encoder.check_inputs(_unit(1), np.array([[0, 0, 120, 30]], np.float32))
