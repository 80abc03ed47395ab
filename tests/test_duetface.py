"""DuetFace: channel split, masks, client/server API, payload checks, two-stage training through the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.privacy.api import build_privacy_method, load_privacy_method
from facesynth.privacy.duetface import MASK_NAMES
from facesynth.recognizers.methods import save_method
from facesynth.tests.shard_fixtures import add_manifest

CLIENT = (4, 4, 8, 8, 16)


def _method(**kwargs):
    torch.manual_seed(0)
    return build_privacy_method("duetface", "tiny", client_widths=CLIENT, **kwargs)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(112, 112), mode="bilinear", align_corners=False)


def test_payload_is_162_server_channels_plus_roi_masks():
    method = _method().eval()
    images = _faces(2)
    payload = method.protect(images, seed=0)
    assert payload.tensor.shape == (2, 162, 112, 112)
    assert {k: tuple(v.shape) for k, v in payload.extras.items()} == {
        "mask1": (2, 1, 56, 56),
        "mask2": (2, 1, 28, 28),
        "mask3": (2, 1, 14, 14),
        "mask4": (2, 1, 7, 7),
    }
    assert payload.nbytes == 2 * 4 * (162 * 112 * 112 + 56 * 56 + 28 * 28 + 14 * 14 + 7 * 7)
    # the server channels are the frontend's coefficients outside the 10 crucial frequencies
    coeffs = method.frontend(images)
    assert torch.equal(payload.tensor, coeffs[:, list(method.policy.channels)])
    assert not set(method.policy.channels) & {0, 1, 8, 9, 64, 128}
    # masks are normalised to [0, 1] and vanish outside the facial ROI (corners of an aligned face)
    m1 = payload.extras["mask1"]
    assert m1.min() >= 0 and m1.max() <= 1 + 1e-6
    assert m1[:, :, :3, :3].abs().max() == 0
    # landmarks move the ROI
    shifted = torch.tensor([[[20.0, 20.0], [50.0, 20.0], [35.0, 35.0], [22.0, 50.0], [48.0, 50.0]]]).repeat(
        2, 1, 1
    )
    other = method.protect(images, seed=0, landmarks=shifted)
    assert not torch.allclose(other.extras["mask1"], m1)
    emb = method.recognize(payload)
    assert emb.shape == (2, method.embedding_size) and torch.isfinite(emb).all()


def test_recognize_refuses_foreign_payloads():
    method = _method().eval()
    images = _faces(2)
    other_seed = _method(key_seed=1).eval()
    with pytest.raises(FacesynthError, match="client key"):
        method.recognize(other_seed.protect(images, seed=0))
    minus = build_privacy_method("minusface", "tiny", stage=2, generator_widths=(4, 8)).eval()
    with pytest.raises(FacesynthError, match="minusface"):
        method.recognize(minus.protect(images, seed=0))
    with pytest.raises(FacesynthError, match="Payload"):
        method.recognize(images)


def test_options_are_validated():
    with pytest.raises(FacesynthError, match="stage"):
        _method(stage="both")
    with pytest.raises(FacesynthError, match="interaction"):
        _method(interaction="add")
    with pytest.raises(FacesynthError, match="client_from"):
        _method(client_from="/nonexistent/run")


@pytest.mark.slow
def test_stages_train_the_right_parts_and_server_reuses_the_frozen_client(tmp_path):
    images, labels = _faces(4, seed=1), torch.tensor([0, 1, 0, 1])
    client_run = _method(stage="client").train()
    emb, aux = client_run(images, labels)
    assert emb.shape == (4, client_run.embedding_size) and aux == {}
    emb.pow(2).sum().backward()
    assert client_run.client.stem[0].weight.grad is not None
    assert all(not p.requires_grad for p in client_run.backbone.parameters())
    save_method(client_run, tmp_path / "client")

    server_run = _method(stage="server", client_from=str(tmp_path / "client"))
    for (name, a), b in zip(
        server_run.client.state_dict().items(), client_run.client.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    server_run.train()
    assert not server_run.client.training and all(not p.requires_grad for p in server_run.client.parameters())
    server_run.interaction_weights.data.fill_(0.5)
    emb, _ = server_run(images, labels)
    emb.pow(2).sum().backward()
    assert server_run.backbone.conv1.weight.grad is not None
    assert (
        server_run.interaction_weights.grad is not None
        and server_run.interaction_weights.grad.abs().sum() > 0
    )
    assert server_run.projections[0].weight.grad is not None
    assert server_run.client.stem[0].weight.grad is None

    # the saved config does not depend on the client_from folder any more
    save_method(server_run, tmp_path / "server")
    assert "client_from" not in server_run.method_kwargs()
    reloaded = load_privacy_method(str(tmp_path / "server"))
    server_run.eval()
    assert torch.allclose(reloaded.embed(images), server_run.embed(images), atol=1e-5)
    assert set(MASK_NAMES) == set(reloaded.extras_shapes())


@pytest.mark.slow
def test_train_recognizer_runs_both_stages(tmp_path):
    from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    rng = np.random.default_rng(0)
    rows = [
        ShardRow(
            image=rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
            label=i % 4,
            identity=f"id{i % 4}",
            index=i // 4,
        )
        for i in range(16)
    ]
    data = tmp_path / "data"
    write_shard(data / shard_name(0, 1), rows_to_table(rows, None))
    add_manifest(data)
    common = {
        "data": [str(data)],
        "backbone": "tiny",
        "method": "duetface",
        "batch_size": 4,
        "max_steps": 2,
        "num_workers": 0,
        "progress": False,
        "tensorboard": False,
        "checkpoint_every": 0,
    }
    train_recognizer(
        RecognizerTrainConfig(
            output_dir=str(tmp_path / "client"),
            method_kwargs={"stage": "client", "client_widths": list(CLIENT)},
            **common,
        )
    )
    result = train_recognizer(
        RecognizerTrainConfig(
            output_dir=str(tmp_path / "server"),
            method_kwargs={
                "stage": "server",
                "client_widths": list(CLIENT),
                "client_from": str(tmp_path / "client"),
            },
            **common,
        )
    )
    assert result.steps == 2 and np.isfinite(result.final_loss)
    method = load_privacy_method(str(tmp_path / "server"))
    assert method.stage == "server"
    assert method.recognize(method.protect(_faces(2), seed=0)).shape == (2, method.embedding_size)
