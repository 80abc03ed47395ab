"""Identity sampling: exact cosine construction, pure per-image draws, attribute tables, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.core.errors import FacesynthError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.generators.identity_sampling import (
    AttributeSampler,
    IdentityPlan,
    attribute_table,
    check_cos_band,
    check_embeddings,
    cosine_band_embeddings,
    load_anchor_file,
    load_attribute_sampler,
    make_anchors,
)
from facesynth.generators.registry import SampleRequest, sample_seed
from facesynth.tests.shard_fixtures import add_manifest


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cosine_construction_is_exact():
    rng = np.random.default_rng(0)
    anchor = _unit(rng, 1, 512)[0]
    cosines = np.array([-1.0, -0.3, 0.0, 0.5, 0.7, 0.8, 0.9, 0.999, 1.0])
    x = cosine_band_embeddings(anchor, cosines, rng)
    assert x.shape == (cosines.size, 512)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    assert np.abs(x @ anchor - cosines).max() < 1e-12
    # the part orthogonal to the anchor points in a different random direction for every row
    ortho = x[3:6] - np.outer(x[3:6] @ anchor, anchor)
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
    assert np.abs(ortho @ ortho.T - np.eye(3)).max() > 0.01
    assert np.abs(ortho @ ortho.T)[~np.eye(3, dtype=bool)].max() < 0.3
    with pytest.raises(FacesynthError, match=r"\[-1, 1\]"):
        cosine_band_embeddings(anchor, [1.5], rng)


def test_plan_draws_uniform_cosines_exactly_and_purely():
    rng = np.random.default_rng(1)
    anchors = _unit(rng, 5, 64)
    table = np.array([[10.0, -5.0, 2.0, 30.0], [-40.0, 8.0, 0.0, 70.0], [0.0, 0.0, 0.0, 5.0]])
    plan = IdentityPlan(anchors, 0.7, 0.9, AttributeSampler(table, "test"))
    seeds = [sample_seed(11, label, index) for label in range(5) for index in range(200)]
    labels = [label for label in range(5) for _ in range(200)]
    draws = [plan.condition(label, seed) for label, seed in zip(labels, seeds, strict=True)]
    cos = np.array([d.anchor_cos for d in draws])
    realised = np.array(
        [d.embedding.astype(np.float64) @ anchors[label] for d, label in zip(draws, labels, strict=True)]
    )
    assert np.abs(realised - cos).max() < 1e-6  # float32 storage of an exact float64 construction
    assert cos.min() >= 0.7 and cos.max() <= 0.9
    # uniform on [0.7, 0.9]: mean 0.8, sd 0.2/sqrt(12), each fifth of the band gets about a fifth
    assert abs(cos.mean() - 0.8) < 0.006
    assert abs(cos.std() - 0.2 / np.sqrt(12)) < 0.004
    counts = np.histogram(cos, bins=5, range=(0.7, 0.9))[0]
    assert counts.min() > 150
    # attributes are whole rows of the table
    rows = {tuple(d.attributes[k] for k in ("yaw", "pitch", "roll", "age")) for d in draws}
    assert rows == {tuple(r) for r in table.astype(np.float32).tolist()}
    # a pure function of (label, seed): order and batching do not matter
    again = plan.conditions([SampleRequest(labels[i], 0, seeds[i]) for i in (7, 3, 900)])
    for got, i in zip(again, (7, 3, 900), strict=True):
        assert np.array_equal(got.embedding, draws[i].embedding)
        assert got.anchor_cos == draws[i].anchor_cos and got.attributes == draws[i].attributes


def test_fixed_band_and_no_attribute_ablation():
    anchors = _unit(np.random.default_rng(2), 2, 16)
    plan = IdentityPlan(anchors, 0.5, 0.5, None)
    draw = plan.condition(1, 123)
    assert draw.anchor_cos == 0.5 and draw.attributes is None
    assert abs(float(draw.embedding @ anchors[1]) - 0.5) < 1e-6
    with pytest.raises(FacesynthError, match="label 2"):
        plan.condition(2, 0)
    with pytest.raises(FacesynthError, match="cos_lb <= cos_ub"):
        check_cos_band(0.9, 0.7)
    with pytest.raises(FacesynthError, match="cos_lb <= cos_ub"):
        IdentityPlan(anchors, 0.7, 1.2)


def test_bad_embeddings_are_explained():
    good = _unit(np.random.default_rng(3), 4, 8)
    assert check_embeddings(good, 8).dtype == np.float32
    with pytest.raises(FacesynthError, match="8-d but the model expects 512-d"):
        check_embeddings(good, 512)
    nan = good.copy()
    nan[2, 1] = np.nan
    with pytest.raises(FacesynthError, match="NaN or inf .*row 2"):
        check_embeddings(nan, 8)
    with pytest.raises(FacesynthError, match="not unit vectors .*norm 3.0000.*L2-normalise"):
        check_embeddings(good * 3.0, 8)
    with pytest.raises(FacesynthError, match="rows, dim"):
        check_embeddings(np.zeros((2, 2, 2)))


def test_bad_attributes_are_explained(tmp_path):
    with pytest.raises(FacesynthError, match="yaw=120 is outside"):
        attribute_table([[120.0, 0.0, 0.0, 30.0]])
    with pytest.raises(FacesynthError, match="age=-3 is outside"):
        AttributeSampler(np.array([[0.0, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, -3.0]]), "x")
    with pytest.raises(FacesynthError, match="not finite"):
        attribute_table([[0.0, np.nan, 0.0, 30.0]])
    with pytest.raises(FacesynthError, match=r"shape \(batch, 4\)"):
        attribute_table([[0.0, 0.0, 30.0]])
    csv = tmp_path / "attrs.csv"
    csv.write_text("yaw,pitch,roll\n1,2,3\n")
    with pytest.raises(FacesynthError, match="lacks columns"):
        AttributeSampler.from_file(csv)
    csv.write_text("yaw,pitch,roll,age\n1,2,3,40\n-20,5,1,60\n")
    assert AttributeSampler.from_file(csv).table.shape == (2, 4)
    npy = tmp_path / "attrs.npy"
    np.save(npy, np.array([[0.0, 0.0, 0.0, 200.0]]))
    with pytest.raises(FacesynthError, match="age=200"):
        AttributeSampler.from_file(npy)
    with pytest.raises(FacesynthError, match="not found"):
        AttributeSampler.from_file(tmp_path / "missing.csv")


def _write_reference(folder, rows_attrs, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        ShardRow(
            image=np.zeros((112, 112, 3), np.uint8),
            label=i,
            identity=f"id{i}",
            index=0,
            embedding=_unit(rng, 1, dim)[0].astype(np.float32),
            attributes=attrs,
        )
        for i, attrs in enumerate(rows_attrs)
    ]
    write_shard(folder / shard_name(0, 1), rows_to_table(rows, dim))
    add_manifest(folder, embedding_dim=dim)


def test_empirical_attributes_from_shards(tmp_path):
    attrs = [
        {"yaw": 10.0, "pitch": 1.0, "roll": 0.0, "age": 20.0},
        None,
        {"yaw": -30.0, "pitch": 4.0, "roll": 2.0, "age": 61.0},
    ]
    _write_reference(tmp_path / "ref", attrs)
    sampler = load_attribute_sampler("empirical", [tmp_path / "ref"])
    assert sampler.table.tolist() == [[10.0, 1.0, 0.0, 20.0], [-30.0, 4.0, 2.0, 61.0]]  # null row skipped
    assert load_attribute_sampler("none") is None
    neutral = load_attribute_sampler("empirical", None)
    assert neutral.table.tolist() == [[0.0, 0.0, 0.0, 35.0]]
    _write_reference(tmp_path / "empty", [None, None])
    with pytest.raises(FacesynthError, match="no attributes"):
        load_attribute_sampler("empirical", [tmp_path / "empty"])


def test_anchor_sources(tmp_path):
    tammes = make_anchors(40, 16, seed=5, method="tammes", tammes_steps=60, progress=False)
    random = make_anchors(40, 16, seed=5, method="random")
    assert tammes.shape == random.shape == (40, 16)
    assert np.array_equal(
        tammes, make_anchors(40, 16, seed=5, method="tammes", tammes_steps=60, progress=False)
    )

    def max_cos(x):
        s = x.astype(np.float64) @ x.T.astype(np.float64)
        np.fill_diagonal(s, -2)
        return s.max()

    assert max_cos(tammes) < max_cos(random) - 0.1
    path = tmp_path / "anchors.npy"
    np.save(path, tammes)
    assert np.array_equal(make_anchors(30, 16, seed=0, method=str(path)), tammes[:30])
    with pytest.raises(FacesynthError, match="holds 40 anchors but 50"):
        load_anchor_file(path, 50, 16)
    with pytest.raises(FacesynthError, match="16-d but the model expects 512-d"):
        load_anchor_file(path, 10, 512)
    np.save(path, tammes * 2)
    with pytest.raises(FacesynthError, match="not unit vectors"):
        load_anchor_file(path, 10, 16)
    # subspace restriction needs reference shards with embeddings
    with pytest.raises(FacesynthError, match="reference shards"):
        make_anchors(10, 16, seed=0, subspace_rank=4)
    _write_reference(tmp_path / "ref", [None] * 50, dim=16)
    restricted = make_anchors(
        10, 16, seed=0, subspace_rank=4, reference=[tmp_path / "ref"], tammes_steps=20, progress=False
    )
    assert restricted.shape == (10, 16)


def test_anchor_cache_is_reused(tmp_path, monkeypatch):
    import facesynth.generators.tammes as tammes

    first = make_anchors(20, 8, seed=3, tammes_steps=10, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("anchors-20x8-*.npy"))) == 1

    def no_solve(*args, **kwargs):
        raise AssertionError("the cached anchors should have been used")

    monkeypatch.setattr(tammes, "solve_tammes", no_solve)
    assert np.array_equal(make_anchors(20, 8, seed=3, tammes_steps=10, cache_dir=tmp_path), first)
    with pytest.raises(AssertionError, match="cached"):  # other settings: another file
        make_anchors(20, 8, seed=4, tammes_steps=10, cache_dir=tmp_path)
