"""ID3's projection module: identity embedding + attributes -> cross-attention tokens for the UNet.

ID3 (Xu et al., NeurIPS 2024) projects its condition (a face-recognition embedding y and pose/age
attributes s) with a three-layer perceptron of widths (512, 256, 768) and ReLU. How the result enters
the UNet is not stated; our choice is cross-attention: the last layer emits ``num_tokens`` tokens of
width ``cross_attention_dim`` that ``UNet2DConditionModel`` consumes as ``encoder_hidden_states``.

For classifier-free guidance the module holds a learned *null condition* (``num_tokens`` tokens) that
replaces the projected condition of dropped samples during training (``condition_dropout``) and is the
unconditional branch at sampling time. Attributes enter normalised (see
:mod:`facesynth.generators.attributes`); :meth:`ID3ConditionEncoder.check_inputs` validates raw user
input (embedding width, unit norm, NaN, attribute ranges) with readable errors.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from facesynth.core.errors import FacesynthError
from facesynth.generators.attributes import NUM_ATTRIBUTES, check_attributes

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class ID3ConditionEncoder(ModelMixin, ConfigMixin):
    """Three-layer MLP ``[y ; s] -> hidden_dims -> num_tokens x cross_attention_dim``.

    Args:
        embedding_dim: width of the identity embedding y (any width; 512 for ArcFace-style encoders).
        num_attributes: width of the normalised attribute vector s (0 disables attribute conditioning,
            the "ID3-w/o-attribute" ablation).
        hidden_dims: widths of the two hidden layers (ID3: 512, 256).
        cross_attention_dim: token width (ID3's last layer: 768; must equal the UNet's).
        num_tokens: number of condition tokens (our choice: 1).
        activation: "relu" (ID3), "silu" or "gelu".
        condition_dropout: training-time probability of replacing a sample's condition with the
            learned null condition (0 disables; classifier-free guidance needs > 0).
        norm_tolerance: accepted deviation of ``||y||`` from 1 in :meth:`check_inputs`.
    """

    @register_to_config
    def __init__(
        self,
        embedding_dim: int = 512,
        num_attributes: int = NUM_ATTRIBUTES,
        hidden_dims: tuple[int, int] = (512, 256),
        cross_attention_dim: int = 768,
        num_tokens: int = 1,
        activation: str = "relu",
        condition_dropout: float = 0.0,
        norm_tolerance: float = 1e-2,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise FacesynthError(
                f"condition encoder: activation {activation!r} not in {sorted(_ACTIVATIONS)}"
            )
        if not 0.0 <= condition_dropout < 1.0:
            raise FacesynthError(f"condition encoder: condition_dropout {condition_dropout} not in [0, 1)")
        if num_attributes not in (0, NUM_ATTRIBUTES):
            raise FacesynthError(
                f"condition encoder: num_attributes must be 0 or {NUM_ATTRIBUTES}, got {num_attributes}"
            )
        width_1, width_2 = hidden_dims
        self.fc_in = nn.Linear(embedding_dim + num_attributes, width_1)
        self.act_1 = _ACTIVATIONS[activation]()
        self.fc_hidden = nn.Linear(width_1, width_2)
        self.act_2 = _ACTIVATIONS[activation]()
        self.fc_out = nn.Linear(width_2, num_tokens * cross_attention_dim)
        # learned unconditional tokens for classifier-free guidance (small init, like a token embedding)
        self.null_condition = nn.Parameter(torch.randn(num_tokens, cross_attention_dim) * 0.02)

    def forward(
        self,
        identity_embeddings: torch.Tensor,
        attributes: torch.Tensor | None = None,
        drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, D) unit embeddings + (B, 4) *normalised* attributes -> (B, num_tokens, cross_attention_dim).

        ``drop_mask`` (bool (B,)) marks samples whose condition is replaced by the null condition.
        """
        inputs = identity_embeddings.to(self.fc_in.weight.dtype)
        if self.config.num_attributes:
            if attributes is None:
                raise FacesynthError("condition encoder: this model is conditioned on attributes; pass them")
            inputs = torch.cat([inputs, attributes.to(inputs.dtype)], dim=1)
        hidden = self.act_1(self.fc_in(inputs))
        hidden = self.act_2(self.fc_hidden(hidden))
        tokens = self.fc_out(hidden).view(-1, self.config.num_tokens, self.config.cross_attention_dim)
        if drop_mask is not None:
            null = self.null_condition.to(tokens.dtype).unsqueeze(0).expand_as(tokens)
            tokens = torch.where(drop_mask.view(-1, 1, 1).to(tokens.device), null, tokens)
        return tokens

    def null_tokens(self, batch_size: int) -> torch.Tensor:
        """The unconditional tokens, (batch_size, num_tokens, cross_attention_dim)."""
        return self.null_condition.unsqueeze(0).expand(batch_size, -1, -1)

    def sample_drop_mask(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Training-time condition dropout mask (None when dropout is off)."""
        if self.config.condition_dropout <= 0:
            return None
        draws = torch.rand(batch_size, generator=generator)
        return draws < self.config.condition_dropout

    def check_inputs(
        self, identity_embeddings: torch.Tensor | np.ndarray, attributes: torch.Tensor | np.ndarray | None
    ) -> None:
        """Raise :class:`FacesynthError` for wrong width, NaN, non-unit embeddings or bad attributes.

        ``attributes`` are in physical units (degrees, years), as users give them.
        """
        emb = torch.as_tensor(identity_embeddings).detach().float().cpu()
        want = self.config.embedding_dim
        if emb.ndim != 2 or emb.shape[1] != want:
            raise FacesynthError(
                f"identity_embeddings: expected shape (batch, {want}) for this model, got {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            row = int((~torch.isfinite(emb)).any(dim=1).nonzero()[0])
            raise FacesynthError(f"identity_embeddings: row {row} contains NaN or inf")
        norms = emb.norm(dim=1)
        off = (norms - 1).abs() > self.config.norm_tolerance
        if off.any():
            row = int(off.nonzero()[0])
            raise FacesynthError(
                f"identity_embeddings: row {row} has L2 norm {float(norms[row]):.4f}; embeddings must be "
                f"unit-norm (tolerance {self.config.norm_tolerance}); L2-normalise them first"
            )
        if attributes is not None:
            check_attributes(attributes)
            if len(attributes) != len(emb):
                raise FacesynthError(f"attributes: {len(attributes)} rows for {len(emb)} identity embeddings")
