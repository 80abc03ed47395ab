"""Multi-query recovery attacks: the attacker holds k payloads of the same face (issue 15.4).

The randomised methods draw fresh randomness per query, so a face queried k times leaves k different
payloads. An attacker who links them (same device, same session) combines them before decoding:

- DCTDP: the mean of the k noisy coefficient tensors (independent Laplace noise averages out as
  1/sqrt(k); the learned noise locations do not, they are part of the public client);
- PartialFace: the *union* of the k subsets. The white-box attacker knows the selection and
  permutation tables; here it is also told which (subset, permutation) each payload used (an oracle:
  per-channel energy statistics identify them easily, so this is an upper bound on the union
  attack). Each payload's 27 channels are placed at their frequencies in the 162 kept channels, and 54
  indicator planes say which frequencies were observed;
- MinusFace: the mean of the k decoded protective images (independent shuffles);
- any other randomised method: the mean of the attack views.

The combined view goes through the same attackers (:func:`facesynth.privacy.attacks.run_attack`,
trained on combined views of public faces with the same k), and :func:`multi_query_attack` reports
leakage and success for every k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from facesynth.core.errors import FacesynthError
from facesynth.privacy.api import PrivacyMethod
from facesynth.privacy.attacks import AttackConfig, attack_view, run_attack

MULTI_QUERY_KS = (1, 4, 16)
MAX_K = 64


def query_seeds(seed: int, k: int) -> list[int]:
    """The k per-query seeds of one multi-query batch (distinct across batches for distinct ``seed``)."""
    if not 1 <= k <= MAX_K:
        raise FacesynthError(f"multi-query k must be in 1..{MAX_K}, got {k}")
    return [int(seed) * MAX_K + j for j in range(k)]


def partialface_draws(method: PrivacyMethod, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(subset ids, permutation ids) that ``method.protect(images, seed=seed)`` drew (the oracle).

    Replays the client's draw from the same seed on the CPU; valid for a CPU ``protect``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return method.policy.draw(batch_size, None, generator)


def partialface_union(method: PrivacyMethod, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Union view of PartialFace payloads: (B, 162 + 54, g, g) values at their frequencies + observed planes."""
    policy = method.policy
    kept = torch.tensor(policy.channels, dtype=torch.long)
    values = None
    observed = torch.zeros(images.shape[0], 192, dtype=torch.bool)
    for seed in seeds:
        payload = method.protect(images, seed=seed).tensor.float().cpu()
        subset_ids, perm_ids = partialface_draws(method, images.shape[0], seed)
        index = policy.index_table[subset_ids, perm_ids]  # (B, 27) global channel per payload slot
        if values is None:
            values = torch.zeros(payload.shape[0], 192, *payload.shape[-2:])
        rows = torch.arange(payload.shape[0])[:, None]
        values[rows, index] = payload
        observed[rows, index] = True
    assert values is not None
    per_frequency = observed[:, kept][:, : len(kept) // 3].float()  # colour components share the draw
    planes = per_frequency[:, :, None, None].expand(-1, -1, *values.shape[-2:])
    return torch.cat([values[:, kept], planes], dim=1)


def combined_view(method: PrivacyMethod, images: torch.Tensor, seed: int, k: int) -> torch.Tensor:
    """What a k-query attacker decodes for a batch of faces (see the module docstring)."""
    if not method.randomised:
        raise FacesynthError(
            f"{method.name} is deterministic: its k payloads of one face are identical, so a multi-query "
            "attack is the single-query attack"
        )
    seeds = query_seeds(seed, k)
    if method.name == "partialface":
        return partialface_union(method, images, seeds)
    views = [attack_view(method.protect(images, seed=s)).float().cpu() for s in seeds]
    return torch.stack(views).mean(dim=0)


def multi_query_protect_fn(method: PrivacyMethod, k: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A ``protect_fn`` for :func:`~facesynth.privacy.attacks.run_attack` returning k-query views."""
    method.eval()

    def protect(images: torch.Tensor, seed: int) -> torch.Tensor:
        return combined_view(method, images, seed, k)

    return protect


def multi_query_attack(
    method: PrivacyMethod,
    public_images: torch.Tensor,
    victim_images: torch.Tensor,
    victim_labels: torch.Tensor,
    config: AttackConfig,
    ks: Sequence[int] = MULTI_QUERY_KS,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    single_query: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the attackers once per k; returns ``{"k": [...], "by_k": {k: metrics per attacker}}``.

    ``single_query``: the metrics of :func:`~facesynth.privacy.attacks.run_attack` on this method with
    the same config. For an averaging method, k = 1 *is* that attack (the mean of one view is the
    view), so it is reused instead of trained again; PartialFace's k = 1 union view (values at their
    frequencies, with the oracle's indicator planes) is a different attack and always runs.
    """
    by_k: dict[str, Any] = {}
    for k in ks:
        if int(k) == 1 and single_query is not None and method.name != "partialface":
            by_k["1"] = single_query
            continue
        metrics, _, _ = run_attack(
            multi_query_protect_fn(method, int(k)),
            public_images,
            victim_images,
            victim_labels,
            config,
            embed=embed,
            progress=progress,
        )
        by_k[str(int(k))] = metrics
    return {"k": [int(k) for k in ks], "by_k": by_k}
