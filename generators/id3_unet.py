"""ID3's denoiser: a stock diffusers ``UNet2DConditionModel`` with named size presets.

ID3 uses a U-Net trained from scratch; its width, depth and resolution are not published, so the
presets below are our choice. ``sample_size`` is the pixel size in pixel mode or the latent size in
latent mode (``in_channels`` = the VAE's latent channels); it must be divisible by
``2 ** (levels - 1)`` (112 = 16 * 7 works with up to five levels).

Condition wiring (how the tokens of
:class:`~facesynth.generators.id3_condition_encoder.ID3ConditionEncoder` reach the UNet; the paper does
not say, every option is ours):

* cross-attention (always): the tokens are ``encoder_hidden_states``. With one token, softmax over a
  single key is 1, so cross-attention adds the same vector at every pixel: a spatially uniform bias.
  More tokens (``num_tokens`` of the condition encoder) let pixels attend to different tokens.
* ``cross_attention_levels``: ``"preset"`` keeps each preset's choice (``base``: the two
  low-resolution levels only); ``"all"`` puts cross-attention in every level, so the condition also
  reaches the high-resolution blocks.
* ``condition_in_time_embedding``: also add the condition to the timestep embedding, which modulates
  every ResNet block at every resolution (diffusers' ``addition_embed_type="text"``: an attention-pooled
  projection of the tokens, the ``class_embed_type="projection"`` idea without a second input).
  The call site is unchanged (the UNet reads the same ``encoder_hidden_states``), so trainer, pipeline
  and saved folders need nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from diffusers import UNet2DConditionModel

from facesynth.core.errors import ConfigError

#: name -> (block widths, cross-attention flag per level, layers per block, norm groups, head dim)
UNET_PRESETS: dict[str, tuple[tuple[int, ...], tuple[bool, ...], int, int, int]] = {
    # tests: two levels, a few thousand parameters per layer
    "tiny": ((16, 32), (False, True), 1, 8, 8),
    # CPU experiments at 32-48 px
    "small": ((64, 128, 128), (False, True, True), 1, 32, 32),
    # 112x112 pixel space on a GPU: attention at 28x28 and 14x14
    "base": ((128, 256, 256, 512), (False, False, True, True), 2, 32, 64),
}
CROSS_ATTENTION_LEVELS: tuple[str, ...] = ("preset", "all")


def _pooling_heads(width: int) -> int:
    """Heads of the attention pooling of ``condition_in_time_embedding``: 64-wide heads where possible."""
    return width // 64 if width % 64 == 0 else 1


def id3_unet_config(
    preset: str = "base",
    sample_size: int = 112,
    in_channels: int = 3,
    cross_attention_dim: int = 768,
    cross_attention_levels: Literal["preset", "all"] = "preset",
    condition_in_time_embedding: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of a preset (``overrides`` replace single entries).

    ``cross_attention_levels`` and ``condition_in_time_embedding`` are the condition-wiring options of
    the module docstring; they can be given through the trainer's ``unet_kwargs`` like any override.
    """
    if preset not in UNET_PRESETS:
        raise ConfigError(f"unet preset: unknown name {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    if cross_attention_levels not in CROSS_ATTENTION_LEVELS:
        raise ConfigError(
            f"unet cross_attention_levels: unknown value {cross_attention_levels!r}; "
            f"choose one of {CROSS_ATTENTION_LEVELS}"
        )
    widths, attention, layers, groups, head_dim = UNET_PRESETS[preset]
    if cross_attention_levels == "all":
        attention = (True,) * len(widths)
    factor = 2 ** (len(widths) - 1)
    if sample_size % factor:
        raise ConfigError(
            f"unet preset {preset!r}: sample_size {sample_size} must be divisible by {factor} "
            f"({len(widths)} resolution levels)"
        )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "block_out_channels": widths,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": layers,
        "norm_num_groups": groups,
        "attention_head_dim": head_dim,
        "cross_attention_dim": cross_attention_dim,
    }
    if condition_in_time_embedding:
        config["addition_embed_type"] = "text"
        config["addition_embed_type_num_heads"] = _pooling_heads(cross_attention_dim)
    config.update(overrides)
    return config


def build_id3_unet(
    preset: str = "base",
    sample_size: int = 112,
    in_channels: int = 3,
    cross_attention_dim: int = 768,
    **options: Any,
) -> UNet2DConditionModel:
    """A freshly initialised ID3 denoiser (see :func:`id3_unet_config` for ``options``)."""
    return UNet2DConditionModel(
        **id3_unet_config(preset, sample_size, in_channels, cross_attention_dim, **options)
    )
