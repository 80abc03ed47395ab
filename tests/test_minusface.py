"""MinusFace: residue, stage-1 losses and LR scaling, stage-2 shuffled protective image, payload checks."""

from __future__ import annotations

import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.core.optim_groups import TrainerOptimizer, build_optimizers
from facesynth.privacy.api import build_privacy_method, load_privacy_method
from facesynth.recognizers.methods import save_method

GEN = (4, 8)


def _method(**kwargs):
    torch.manual_seed(0)
    return build_privacy_method("minusface", "tiny", generator_widths=GEN, **kwargs)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(112, 112), mode="bilinear", align_corners=False)


def test_stage1_losses_and_generator_learning_rate_group():
    images, labels = _faces(2), torch.tensor([0, 1])
    method = _method(stage=1, generator_lr_scale=0.1).train()
    emb, aux = method(images, labels)
    assert emb.shape == (2, method.embedding_size)
    assert set(aux) == {"minusface_l1"} and aux["minusface_l1"].item() > 0
    assert method.backbone.conv1.weight.shape[1] == 192
    # g trains at 0.1x the recognizer's learning rate: its own optimizer group in the shared trainer
    trainer = TrainerOptimizer("sgd", lr=0.1, weight_decay=5e-4)
    (optimizer,), (schedules,) = build_optimizers(
        method.named_parameters(), method.optimizer_groups(), trainer
    )
    groups = {s.base_lr: g["params"] for g, s in zip(optimizer.param_groups, schedules, strict=True)}
    assert sorted(groups) == pytest.approx([0.01, 0.1])
    generator_group = next(v for k, v in groups.items() if k < 0.05)
    assert {id(p) for p in generator_group} == {id(p) for p in method.generator.parameters()}
    assert sum(map(len, groups.values())) == len([p for p in method.parameters() if p.requires_grad])
    sparse = _method(stage=1, sparsity_weight=1e-3).train()
    assert "minusface_sparsity" in sparse(images, labels)[1]


def test_stage2_protective_image_is_random_per_query_and_image_sized(tmp_path):
    stage1 = _method(stage=1)
    save_method(stage1, tmp_path / "s1")
    method = _method(stage=2, stage1_from=str(tmp_path / "s1")).eval()
    for a, b in zip(method.generator.parameters(), stage1.generator.parameters(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad
    images = _faces(3)
    p0, p0_again, p1 = (method.protect(images, seed=s) for s in (0, 0, 1))
    assert p0.tensor.shape == (3, 3, 112, 112) and p0.nbytes == 3 * 4 * 3 * 112 * 112
    assert p0.tensor.min() >= -1 and p0.tensor.max() <= 1
    assert torch.equal(p0.tensor, p0_again.tensor)
    assert not torch.allclose(p0.tensor, p1.tensor)
    # without shuffling, decoding the residue plus the regeneration would give the face back: the
    # payload is the decoded *shuffled* residue, far from the face
    assert (p0.tensor - images).abs().mean() > 0.1
    method.train()
    assert not method.generator.training
    emb, aux = method(images, torch.tensor([0, 1, 2]))
    assert aux == {} and emb.shape == (3, method.embedding_size)
    dup = _method(stage=2, n_dup=2).eval()
    assert dup.protect(images, seed=0).tensor.shape == (3, 6, 112, 112)
    save_method(method, tmp_path / "s2")
    assert "stage1_from" not in method.method_kwargs()
    assert load_privacy_method(str(tmp_path / "s2")).recognize(p0).shape == (3, method.embedding_size)


def test_payload_from_another_stage_or_seed_is_refused_and_options_validated():
    images = _faces(2)
    server = _method(stage=2).eval()
    with pytest.raises(FacesynthError, match="client key"):
        server.recognize(_method(stage=2, key_seed=3).eval().protect(images, seed=0))
    with pytest.raises(FacesynthError, match="client key|shape"):
        server.recognize(_method(stage=2, n_dup=2).eval().protect(images, seed=0))
    with pytest.raises(FacesynthError, match="stage"):
        _method(stage=3)
    with pytest.raises(FacesynthError, match="n_dup"):
        _method(n_dup=0)
    with pytest.raises(FacesynthError, match="stage1_from"):
        _method(stage=2, stage1_from="/nonexistent")


def test_stage1_model_cannot_be_deployed_but_can_be_monitored():
    images = _faces(2)
    stage1 = _method(stage=1).eval()
    with pytest.raises(FacesynthError, match="stage-1 model, which cannot be deployed.*stage=2"):
        stage1.protect(images, seed=0)
    # the trainer's evaluation still sees the recognizer on the (un-shuffled) residue
    assert stage1.embed(images).shape == (2, stage1.embedding_size)


def test_residual_generator_regenerates_the_face_before_any_training():
    # the paper's g starts far from x, so the residue starts as the whole face (DC included); the
    # residual option (x' = x + g(x)) starts with x' close to x and a residue that has shed the DC
    images, labels = _faces(4), torch.arange(4)
    losses, dc_left = {}, {}
    for residual in (False, True):
        method = _method(stage=1, generator_residual=residual).train()
        _, aux = method(images, labels)
        losses[residual] = aux["minusface_l1"].item()
        x, _, residue, _ = method.residue(images)
        dc = [0, 64, 128]
        dc_left[residual] = (residue[:, dc].abs().mean() / x[:, dc].abs().mean()).item()
    assert losses[True] < 0.2 * losses[False]
    assert dc_left[False] > 0.5 and dc_left[True] < 0.05
    assert _method(stage=1, generator_residual=True).config["generator_residual"] is True
