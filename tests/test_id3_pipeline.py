"""ID3Pipeline: save/load round trip, schedulers, ID-preserving guidance, latent mode, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler, UNet2DModel

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.generators.id3_pipeline import ID3Pipeline
from facesynth.tests.id3_tiny import one_thread, tiny_encoder, tiny_pipeline, unit_embeddings


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_save_load_round_trip_gives_identical_samples(tmp_path):
    pipe = tiny_pipeline()
    y = unit_embeddings(3)
    attrs = np.array([[0, 0, 0, 30], [40, -10, 5, 60], [-70, 20, 0, 10]], np.float32)
    before = pipe(y, attrs, num_inference_steps=4, generator=_gen(), output_type="np").images
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["condition_encoder"] == ["facesynth.generators.id3_condition_encoder", "ID3ConditionEncoder"]
    loaded = ID3Pipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    after = loaded(y, attrs, num_inference_steps=4, generator=_gen(), output_type="np").images
    assert before.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(before, after)
    other_seed = loaded(y, attrs, num_inference_steps=4, generator=_gen(1), output_type="np").images
    assert not np.array_equal(before, other_seed)
    pil = loaded(y[:1], num_inference_steps=2, generator=_gen(), output_type="pil").images
    assert pil[0].size == (8, 8)


def test_per_sample_generators_make_samples_batch_independent():
    pipe = tiny_pipeline()
    y = unit_embeddings(2)
    both = pipe(y, num_inference_steps=3, generator=[_gen(5), _gen(6)], output_type="pt").images
    alone = pipe(y[1:], num_inference_steps=3, generator=[_gen(6)], output_type="pt").images
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_other_schedulers_with_guidance(scheduler_cls):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    out = pipe(
        unit_embeddings(2),
        num_inference_steps=4,
        guidance_scale=2.0,
        id_guidance=10.0,
        identity_encoder=tiny_encoder(),
        generator=_gen(),
        output_type="np",
    )
    assert out.images.shape == (2, 8, 8, 3) and np.isfinite(out.images).all()
    assert out.identity_cos is not None and out.identity_cos.shape == (2,)


def test_id_guidance_raises_the_reversed_likelihood_objective():
    """kappa > 0 must raise <f(x0), y> over kappa = 0 for the same model, conditions and seed."""
    pipe = tiny_pipeline()
    encoder = tiny_encoder()
    y = unit_embeddings(4, seed=3)
    results = {}
    for kappa, through in [(0.0, False), (30.0, False), (30.0, True)]:
        out = pipe(
            y,
            num_inference_steps=6,
            id_guidance=kappa,
            id_guidance_through_unet=through,
            identity_encoder=encoder,
            generator=_gen(),
            output_type="np",
        )
        results[(kappa, through)] = float(out.identity_cos.mean())
    plain = results[(0.0, False)]
    assert results[(30.0, False)] > plain + 0.05
    assert results[(30.0, True)] > plain + 0.05
    # the constant schedule is a different (raw) guidance weight and also works
    out = pipe(
        y,
        num_inference_steps=6,
        id_guidance=0.05,
        id_guidance_schedule="constant",
        identity_encoder=encoder,
        generator=_gen(),
        output_type="np",
    )
    assert float(out.identity_cos.mean()) > plain


def test_latent_mode_decodes_through_the_vae(tmp_path):
    from diffusers import DDPMScheduler

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
    from facesynth.generators.id3_unet import build_id3_unet

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    unet = build_id3_unet("tiny", 8, in_channels=4, cross_attention_dim=32)
    encoder = ID3ConditionEncoder(embedding_dim=16, hidden_dims=(32, 32), cross_attention_dim=32)
    pipe = ID3Pipeline(
        unet=unet, scheduler=DDPMScheduler(clip_sample=False), condition_encoder=encoder, vae=vae
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_size == 16
    out = pipe(
        unit_embeddings(1),
        num_inference_steps=2,
        generator=_gen(),
        output_type="np",
        id_guidance=5.0,
        identity_encoder=tiny_encoder(),
    )
    assert out.images.shape == (1, 16, 16, 3)
    pipe.save_pretrained(tmp_path / "latent")
    assert ID3Pipeline.from_pretrained(tmp_path / "latent").vae is not None


def test_bad_inputs_have_clear_errors(tmp_path):
    pipe = tiny_pipeline()
    y = unit_embeddings(2)
    cases = [
        (dict(identity_embeddings=unit_embeddings(2, dim=8)), r"expected shape \(batch, 16\)"),
        (dict(identity_embeddings=y * 2), "L2 norm"),
        (dict(identity_embeddings=torch.full((2, 16), float("nan"))), "NaN"),
        (dict(identity_embeddings=y, attributes=np.array([[0, 0, 0, 130]] * 2, np.float32)), "age=130"),
        (dict(identity_embeddings=y, id_guidance=1.0), "needs an identity encoder"),
        (dict(identity_embeddings=y, id_guidance=-1.0), "must be >= 0"),
        (dict(identity_embeddings=y, guidance_scale=0.5), "guidance_scale"),
        (dict(identity_embeddings=y, output_type="jpg"), "output_type"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FacesynthError, match=message):
            pipe(num_inference_steps=1, **kwargs)

    class Frozen:
        differentiable = False

    with pytest.raises(FacesynthError, match="not differentiable"):
        pipe(y, num_inference_steps=1, id_guidance=1.0, identity_encoder=Frozen())


def test_pipeline_folder_from_another_model_is_refused(tmp_path):
    other = DDPMPipeline(
        unet=UNet2DModel(
            sample_size=8,
            block_out_channels=(8, 16),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        ),
        scheduler=DDIMScheduler(),
    )
    other.save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ConfigError, match="holds a 'DDPMPipeline', not an ID3Pipeline"):
        ID3Pipeline.from_pretrained(tmp_path / "ddpm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model_index.json"):
        ID3Pipeline.from_pretrained(tmp_path / "empty")
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "id3")
    index = tmp_path / "id3" / "model_index.json"
    data = json.loads(index.read_text())
    data["condition_encoder"] = ["diffusers", "UNet2DModel"]
    index.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="condition_encoder entry"):
        ID3Pipeline.from_pretrained(tmp_path / "id3")


def test_saved_pipeline_records_the_identity_encoder_as_an_absolute_path(tmp_path, monkeypatch):
    """A relative ``torch:runs/rec`` typed in one folder must still load from another (issue 13.12)."""
    (tmp_path / "runs" / "rec").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    tiny = tiny_pipeline()
    pipe = ID3Pipeline(
        unet=tiny.unet,
        scheduler=tiny.scheduler,
        condition_encoder=tiny.condition_encoder,
        identity_encoder_spec="torch:runs/rec",
    )
    pipe.save_pretrained(tmp_path / "pipe")
    monkeypatch.chdir(tmp_path / "runs")
    spec = ID3Pipeline.from_pretrained(tmp_path / "pipe").config["identity_encoder_spec"]
    assert spec == f"torch:{(tmp_path / 'runs' / 'rec').resolve()}"
    assert (
        ID3Pipeline(  # names that are no local path stay as they are
            unet=tiny.unet,
            scheduler=tiny.scheduler,
            condition_encoder=tiny.condition_encoder,
            identity_encoder_spec="insightface:buffalo_l",
        ).config["identity_encoder_spec"]
        == "insightface:buffalo_l"
    )
