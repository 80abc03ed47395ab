"""Partial FC: class centres sharded across processes, with sampled negatives (Partial FC v2 semantics).

Written from arcface_torch's ``recognition/arcface_torch/partial_fc_v2.py`` (An et al., CVPR 2022). With ``W`` processes, rank ``r`` owns the
contiguous class slice ``[start, start + num_local)`` with ``num_local = C // W + (r < C % W)`` and
``start = (C // W) * r + min(r, C % W)``; its centres are an (num_local, D) parameter, N(0, 0.01).

Forward, per step:

1. all-gather embeddings (autograd-aware) and labels from every rank, so each rank scores the global
   batch against its own centres; labels outside the slice become -1;
2. with ``sample_rate < 1``, keep ``int(sample_rate * num_local)`` centres: every positive class of
   the global batch plus uniformly random negatives (only positives if they alone exceed the budget);
3. cosine logits (normalised embeddings . normalised centres, in float32), the margin head, then a
   cross-entropy whose softmax spans every shard (max and sum-exp are all-reduced).

Gradients: the loss value is the mean over the global batch, identical on every rank. The embedding
gradient is summed over ranks and multiplied by ``W``, so that DDP's gradient *averaging* of the
backbone gives exactly the single-process gradient of the global batch. The centres are not a DDP
module: each rank updates its own slice (never wrap this module in DDP; keep it out of
``accelerator.prepare``'s model list).

On one process (``torch.distributed`` not initialised, or world size 1) it is an ordinary normalised
FC layer with the margin head, with optional sampling. Every rank must pass the same batch size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facesynth.core.errors import ConfigError
from facesynth.recognizers.heads import CombinedMarginLoss


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def class_slice(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, num_local) of the classes ``rank`` owns."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


class _AllGatherGrad(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor; backward sums the gradient over ranks, times W."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.world, ctx.batch = dist.get_rank(), world, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch] * ctx.world


class _DistCrossEntropy(torch.autograd.Function):
    """Mean -log softmax(target) over the global batch, the softmax spanning every rank's classes."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, distributed: bool) -> torch.Tensor:
        max_logit = logits.max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(max_logit, op=dist.ReduceOp.MAX)
        exp = torch.exp(logits - max_logit)
        sum_exp = exp.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM)
        prob = exp.div_(sum_exp)
        rows = torch.nonzero(labels != -1, as_tuple=True)[0]
        target = torch.zeros(logits.shape[0], device=logits.device, dtype=prob.dtype)
        target[rows] = prob[rows, labels[rows]]
        if distributed:
            dist.all_reduce(target, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(prob, rows, labels[rows])
        return -target.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        prob, rows, cols = ctx.saved_tensors
        grad = prob.clone()
        grad[rows, cols] -= 1.0
        grad.mul_(grad_output / prob.shape[0])
        return grad, None, None


class PartialFC(nn.Module):
    """Sharded, sampled class centres + margin head + distributed softmax cross-entropy.

    Args:
        margin_loss: a :class:`~facesynth.recognizers.heads.CombinedMarginLoss`.
        embedding_size: D, the backbone's output width.
        num_classes: C over all processes.
        sample_rate: fraction of this rank's centres scored per step (1.0 = all; arcface_torch uses
            0.1-0.3 for millions of identities).

    ``rank``/``world_size`` are read from ``torch.distributed`` at construction.
    """

    def __init__(
        self,
        margin_loss: CombinedMarginLoss,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
    ):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.rank, self.world_size = _world()
        if num_classes < self.world_size:
            raise ConfigError(f"{num_classes} classes cannot be sharded over {self.world_size} processes")
        self.margin_loss = margin_loss
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.class_start, self.num_local = class_slice(num_classes, self.rank, self.world_size)
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, self.embedding_size)))

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, local=[{self.class_start}, {self.class_start + self.num_local}), "
            f"D={self.embedding_size}, sample_rate={self.sample_rate}, rank={self.rank}/{self.world_size}"
        )

    def _sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the centres to score (positives always) and remap local labels into that subset."""
        with torch.no_grad():
            positive = torch.unique(labels[labels >= 0], sorted=True)
            if self.num_sample - positive.numel() > 0:
                score = torch.rand(self.num_local, device=labels.device)
                score[positive] = 2.0
                index = torch.topk(score, k=self.num_sample)[1].sort()[0]
            else:
                index = positive
            remapped = labels.clone()
            hit = labels >= 0
            remapped[hit] = torch.searchsorted(index, labels[hit])
        return self.weight[index], remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of a (B, D) embedding batch with (B,) global labels."""
        labels = labels.view(-1).long()
        distributed = self.world_size > 1
        if distributed:
            embeddings = _AllGatherGrad.apply(embeddings)
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        if embeddings.shape[0] != labels.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        if self.sample_rate < 1.0:
            weight, local = self._sample(local)
        else:
            weight = self.weight
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float()))
            logits = self.margin_loss(cosine.clamp(-1.0, 1.0), local)
            return _DistCrossEntropy.apply(logits, local, distributed)

    @torch.no_grad()
    def accuracy(self, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 training accuracy of the local shard (single process; for logs and tests)."""
        cosine = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        return float((cosine.argmax(1) + self.class_start == labels).float().mean())
