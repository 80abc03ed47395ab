"""The one registry (lazy built-ins, clear errors, duplicate guard, restorable) and the one saved-model format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.registry import Registry
from facesynth.recognizers.backbones import BACKBONES, build_backbone, load_backbone, save_backbone
from facesynth.recognizers.heads import HEADS
from facesynth.recognizers.iresnet import IResNet
from facesynth.recognizers.methods import (
    METHOD_CONFIG,
    METHODS,
    PlainMethod,
    RecognitionMethod,
    build_method,
    load_method,
    register_method,
    save_method,
)

REPO_PARENT = Path(__file__).resolve().parents[2]


def test_unknown_name_lists_the_names_and_duplicates_are_refused() -> None:
    registry: Registry[object] = Registry("widget", {"lazy": "facesynth.nowhere"})
    registry.register("a")(len)
    with pytest.raises(ConfigError, match=r"unknown widget 'b'; available: a, lazy"):
        registry.get("b")
    with pytest.raises(ValueError, match="widget 'a' is already registered by builtins.len"):
        registry.register("a")(abs)
    assert registry.register("a")(len) is len  # the same object again is fine
    assert "lazy" in registry and registry.names() == ["a", "lazy"]


def test_restored_forgets_what_a_test_registered_and_keeps_lazily_imported_builtins() -> None:
    before = METHODS.names()
    with METHODS.restored():

        @register_method("restored-probe")
        class _Probe(PlainMethod):
            pass

        assert "restored-probe" in METHODS
        assert METHODS.get("partialface").name == "partialface"  # lazily imported inside the block
    assert METHODS.names() == before and "restored-probe" not in METHODS
    assert METHODS.get("partialface").name == "partialface"  # still resolvable afterwards


def test_every_kind_uses_the_one_registry_class() -> None:
    from facesynth.generators.registry import GENERATORS

    for registry in (BACKBONES, HEADS, METHODS, GENERATORS):
        assert isinstance(registry, Registry)
    assert {"dctdp", "duetface", "partialface", "minusface", "plain"} <= set(METHODS.names())
    assert {"id3", "parametric"} <= set(GENERATORS.names())


def test_lookups_work_in_a_fresh_interpreter_without_importing_providers() -> None:
    """Bug 3: build_method("dctdp") failed unless facesynth.privacy had been imported first."""
    code = (
        "import sys\n"
        "from facesynth.recognizers.methods import available_methods, build_method\n"
        "from facesynth.generators.registry import get_generator_class\n"
        "assert 'facesynth.privacy.dctdp' not in sys.modules\n"
        "assert 'dctdp' in available_methods()\n"
        "assert 'facesynth.privacy.dctdp' not in sys.modules  # listing imports nothing\n"
        "method = build_method('dctdp', 'tiny', {'input_size': [16, 16]}, epsilon_mean=2.0)\n"
        "print(type(method).__name__, method.noise.epsilon_mean, get_generator_class('parametric').name)\n"
    )
    env = {"PYTHONPATH": ":".join(p for p in sys.path if p), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DCTDP", "2.0", "parametric"]


#: Each registered method with options that differ from its defaults (tiny backbones, 16 x 16 inputs).
NON_DEFAULT_OPTIONS = {
    "plain": {},
    "dctdp": {"epsilon_mean": 4.0, "per_sample_noise": False, "learn_locs": False, "key_seed": 3},
    "partialface": {"tables": "random", "num_subsets": 4, "subsets_per_identity": 2, "key_seed": 5},
    "duetface": {"client_widths": [4, 4, 8, 8, 16], "interaction": "residual", "roi_expand": 1.5},
    "minusface": {"generator_widths": [4, 8], "n_dup": 2, "l1_weight": 3.0, "eval_seed": 7},
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT_OPTIONS))
def test_every_registered_method_round_trips_its_options(name: str, tmp_path: Path) -> None:
    """Bug 2: DCTDP(..., epsilon_mean=4.0) saved with save_method reloaded with 0.5."""
    options = NON_DEFAULT_OPTIONS[name]
    method = build_method(name, "tiny", {"input_size": [16, 16]}, **options).eval()
    save_method(method, tmp_path, metadata={"license": "mit"})
    loaded = load_method(tmp_path)
    assert type(loaded) is type(method)
    for key, value in options.items():
        assert loaded.config[key] == value, key
    assert loaded.method_kwargs() == json.loads(json.dumps(method.method_kwargs()))  # tuples -> lists
    saved = json.loads((tmp_path / METHOD_CONFIG).read_text())
    assert saved["method"] == name and saved["_license"] == "mit"
    state, reloaded_state = method.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], reloaded_state[k]) for k in state)


def test_a_directly_constructed_method_records_its_options(tmp_path: Path) -> None:
    from facesynth.privacy.dctdp import DCTDP

    method = DCTDP("tiny", {"input_size": [16, 16]}, epsilon_mean=4.0)
    save_method(method, tmp_path)
    assert load_method(tmp_path).noise.epsilon_mean == 4.0


def test_build_time_weight_sources_are_not_saved(tmp_path: Path) -> None:
    stage1 = build_method("minusface", "tiny", {"input_size": [16, 16]}, stage=1, generator_widths=[4, 8])
    save_method(stage1, tmp_path / "stage1")
    stage2 = build_method(
        "minusface",
        "tiny",
        {"input_size": [16, 16]},
        generator_widths=[4, 8],
        stage1_from=str(tmp_path / "stage1"),
    )
    assert "stage1_from" not in stage2.config
    save_method(stage2, tmp_path / "stage2")
    torch.testing.assert_close(
        load_method(tmp_path / "stage2").generator.state_dict(), stage2.generator.state_dict()
    )


def test_pre_configmixin_method_folders_still_load(tmp_path: Path) -> None:
    method = build_method("dctdp", "tiny", {"input_size": [16, 16]}, epsilon_mean=4.0)
    save_method(method, tmp_path)
    legacy = {
        "method": "dctdp",
        "backbone": "tiny",
        "backbone_kwargs": {"input_size": [16, 16]},
        "method_kwargs": {"epsilon_mean": 4.0},
        "_license": "mit",
    }
    (tmp_path / METHOD_CONFIG).write_text(json.dumps(legacy))
    loaded = load_method(tmp_path)
    assert loaded.noise.epsilon_mean == 4.0 and loaded.config["backbone"] == "tiny"


def test_unknown_saved_method_is_a_clear_error(tmp_path: Path) -> None:
    save_method(build_method("plain", "tiny"), tmp_path)
    config = json.loads((tmp_path / METHOD_CONFIG).read_text())
    (tmp_path / METHOD_CONFIG).write_text(json.dumps({**config, "method": "gone"}))
    with pytest.raises(FacesynthError, match="unknown recognition method 'gone'"):
        load_method(tmp_path)


def test_subclass_records_its_own_arguments_not_its_parents() -> None:
    with METHODS.restored():

        @register_method("scaled-probe")
        class _Scaled(PlainMethod):
            def __init__(self, backbone: str = "tiny", backbone_kwargs=None, scale: float = 1.0):
                super().__init__(backbone, backbone_kwargs)
                self.scale = scale

        method = build_method("scaled-probe", "tiny", scale=3.0)
        assert method.config["scale"] == 3.0 and method.method_kwargs() == {"scale": 3.0}
        assert isinstance(method, RecognitionMethod)


def test_backbones_save_their_full_constructor_config(tmp_path: Path) -> None:
    direct = IResNet(
        layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=8, num_features=32, dropout_rate=0.2
    )
    save_backbone(direct, tmp_path / "direct")
    loaded = load_backbone(tmp_path / "direct")
    assert loaded.config.dropout_rate == 0.2 and tuple(loaded.config.widths) == (8, 8, 16, 16)
    built = build_backbone("tiny", num_features=64, zero_init_residual=True)
    save_backbone(built, tmp_path / "built")
    reloaded = load_backbone(tmp_path / "built")
    assert reloaded.backbone_name == "tiny" and reloaded.config.num_features == 64
    assert reloaded.config.zero_init_residual is True


def test_all_registries_restored_covers_every_registry() -> None:
    """What conftest's autouse fixture uses: a registration inside is gone afterwards, in every registry."""
    from facesynth.core.registry import all_registries_restored

    with all_registries_restored():
        register_method("leaky-probe")(type("_Leaky", (PlainMethod,), {}))
        HEADS.register("leaky-head")(len)
        assert "leaky-probe" in METHODS and "leaky-head" in HEADS
    assert "leaky-probe" not in METHODS and "leaky-head" not in HEADS


def test_pre_configmixin_backbone_folders_still_load(tmp_path: Path) -> None:
    model = build_backbone("tiny", input_size=(48, 48))
    save_backbone(model, tmp_path)
    # the old format: the registry name and only the options given to build_backbone
    (tmp_path / "backbone_config.json").write_text(json.dumps({"backbone": "tiny", "input_size": [48, 48]}))
    loaded = load_backbone(tmp_path)
    assert tuple(loaded.config.input_size) == (48, 48)
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(loaded(x), model.eval()(x))
