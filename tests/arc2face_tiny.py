"""Tiny random Arc2Face weights in exactly the published layout, for offline tests.

``FoivosPar/Arc2Face``: ``arc2face/`` (diffusers UNet: config.json + diffusion_pytorch_model.safetensors)
and ``encoder/`` (transformers CLIP text model: config.json + pytorch_model.bin with ``text_model.``
keys). ``stable-diffusion-v1-5``: ``model_index.json``, ``vae/``, ``tokenizer/`` (vocab.json, merges.txt,
tokenizer_config.json, special_tokens_map.json) and ``scheduler/scheduler_config.json`` (PNDM).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

#: identity width of the tiny setup (Arc2Face: 512) and CLIP width (Arc2Face: 768)
ID_DIM, TEXT_WIDTH, MAX_TOKENS = 16, 32, 16
WORDS = ("photo", "of", "a", "id", "person")


def _tokenizer_files(folder: Path) -> None:
    """A byte-pair vocabulary that spells the five prompt words as one token each."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for char in string.ascii_lowercase:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merges.append(f"{current} {part}")
            current += part
            vocab.setdefault(current, len(vocab))
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MAX_TOKENS,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def build_published_layout(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write tiny random weights as (model folder, base-model folder) in the published layout."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    model, base = root / "Arc2Face", root / "stable-diffusion-v1-5"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
    )
    unet.save_pretrained(model / "arc2face")

    _tokenizer_files(base / "tokenizer")
    vocab_size = len(json.loads((base / "tokenizer" / "vocab.json").read_text()))
    torch.manual_seed(seed + 1)
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    encoder = CLIPTextModel(text_config)
    (model / "encoder").mkdir(parents=True)
    text_config.architectures = ["CLIPTextModelWrapper"]  # what Arc2Face's file records
    text_config.save_pretrained(model / "encoder")
    state = {
        (key if key.startswith("text_model.") else f"text_model.{key}"): value.contiguous()
        for key, value in encoder.state_dict().items()
    }
    torch.save(state, model / "encoder" / "pytorch_model.bin")

    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    vae.save_pretrained(base / "vae")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).save_pretrained(base / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (base / "model_index.json").write_text(json.dumps(index, indent=2))
    return model, base


def tiny_onnx_recognizer(path: Path, seed: int = 0) -> Path:
    """A 112x112 -> ID_DIM ONNX recognizer (Conv, PRelu, Conv, Flatten, Gemm) for ``onnx-torch:``."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.05, (8, 3, 8, 8)).astype(np.float32),
        "slope": np.full((8, 1, 1), 0.25, np.float32),
        "w2": rng.normal(0, 0.2, (8, 8, 2, 2)).astype(np.float32),
        "fc": rng.normal(0, 0.05, (ID_DIM, 8 * 7 * 7)).astype(np.float32),
        "fcb": np.zeros(ID_DIM, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["data", "w1"], ["c1"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("PRelu", ["c1", "slope"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["embedding"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_recognizer",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", ID_DIM])],
        [numpy_helper.from_array(value, key) for key, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
