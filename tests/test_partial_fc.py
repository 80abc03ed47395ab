"""Partial FC: single-process behaviour, sampling keeps positives, and a real 2-process gloo run that
must reproduce the single-process loss and gradients of the global batch."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.nn.functional as F

from facesynth.core.errors import ConfigError
from facesynth.recognizers.heads import build_head
from facesynth.recognizers.partial_fc import PartialFC, class_slice

CLASSES, DIM, BATCH, WORLD = 11, 16, 6, 2


def test_class_slices_cover_all_classes():
    for classes, world in [(11, 2), (10, 3), (7, 7)]:
        slices = [class_slice(classes, r, world) for r in range(world)]
        covered = [c for start, n in slices for c in range(start, start + n)]
        assert covered == list(range(classes))


def test_single_process_equals_normalised_fc_cross_entropy():
    pfc = PartialFC(build_head("cosface", s=16.0), DIM, CLASSES)
    emb = torch.randn(BATCH, DIM, requires_grad=True)
    labels = torch.randint(0, CLASSES, (BATCH,))
    loss = pfc(emb, labels)
    cosine = F.linear(F.normalize(emb), F.normalize(pfc.weight))
    target = F.one_hot(labels, CLASSES).bool()
    reference = F.cross_entropy(16.0 * torch.where(target, cosine - 0.4, cosine), labels)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    emb_grad, w_grad = emb.grad.clone(), pfc.weight.grad.clone()
    emb.grad, pfc.weight.grad = None, None
    reference.backward()
    torch.testing.assert_close(emb_grad, emb.grad)
    torch.testing.assert_close(w_grad, pfc.weight.grad)


def test_sampling_keeps_every_positive():
    pfc = PartialFC(build_head("arcface"), DIM, 100, sample_rate=0.1)
    labels = torch.tensor([3, 50, 99, 3, 71, 12])
    emb = torch.randn(6, DIM)
    pfc(emb, labels).backward()
    touched = set(torch.nonzero(pfc.weight.grad.abs().sum(1)).flatten().tolist())
    assert len(touched) == pfc.num_sample == 10
    assert {3, 50, 99, 71, 12} <= touched
    # more positives than the budget: only positives are scored
    pfc.weight.grad = None
    many = torch.arange(0, 60, 3)
    pfc(torch.randn(len(many), DIM), many).backward()
    assert set(torch.nonzero(pfc.weight.grad.abs().sum(1)).flatten().tolist()) == set(many.tolist())


def test_bad_settings():
    with pytest.raises(ConfigError, match="sample_rate"):
        PartialFC(build_head("arcface"), DIM, 10, sample_rate=0.0)


def _rank_main(rank: int, init_file: str, out_dir: str, emb: torch.Tensor, labels: torch.Tensor, weight):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pfc = PartialFC(build_head("arcface", s=16.0), DIM, CLASSES)
        with torch.no_grad():
            pfc.weight.copy_(weight[pfc.class_start : pfc.class_start + pfc.num_local])
        local = emb[rank * BATCH : (rank + 1) * BATCH].clone().requires_grad_(True)
        loss = pfc(local, labels[rank * BATCH : (rank + 1) * BATCH])
        loss.backward()
        torch.save(
            {
                "loss": loss.detach(),
                "emb_grad": local.grad,
                "w_grad": pfc.weight.grad,
                "start": pfc.class_start,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    torch.manual_seed(1)
    emb = torch.randn(WORLD * BATCH, DIM)
    labels = torch.randint(0, CLASSES, (WORLD * BATCH,))
    weight = torch.randn(CLASSES, DIM) * 0.01
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_rank_main, args=(r, str(tmp_path / "init"), str(tmp_path), emb, labels, weight))
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    ref = PartialFC(build_head("arcface", s=16.0), DIM, CLASSES)
    with torch.no_grad():
        ref.weight.copy_(weight)
    ref_emb = emb.clone().requires_grad_(True)
    ref_loss = ref(ref_emb, labels)
    ref_loss.backward()
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(out["loss"], ref_loss.detach())
        # DDP averages backbone gradients over ranks, so each rank's embedding gradient carries a factor W
        torch.testing.assert_close(out["emb_grad"] / WORLD, ref_emb.grad[rank * BATCH : (rank + 1) * BATCH])
        start, n = class_slice(CLASSES, rank, WORLD)
        assert out["start"] == start
        torch.testing.assert_close(out["w_grad"], ref.weight.grad[start : start + n])
