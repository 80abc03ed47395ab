"""`facesynth generate`: deterministic whatever the process count, resumable after kill -9, strict on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.integrity import verify_dataset
from facesynth.core.manifest import Manifest
from facesynth.generators.registry import FaceGenerator, GeneratedFace, register_generator, sample_seed
from facesynth.pipelines.cli import main
from facesynth.pipelines.generate import GenerateConfig, generate_dataset, plan_shards
from facesynth.tests.cli_processes import run_cli


@register_generator("test-noise")
class NoiseGenerator(FaceGenerator):
    """A deliberately trivial generator: seeded noise faces with an 8-d embedding."""

    embedding_dim = 8

    def __init__(self, num_identities: int, seed: int, device="cpu", level: int = 255):
        self.level = level

    def config(self):
        return {"level": self.level}

    def generate(self, requests):
        faces = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            faces.append(
                GeneratedFace(
                    image=rng.integers(0, self.level, (112, 112, 3), dtype=np.uint8),
                    embedding=np.full(8, r.label, dtype=np.float32),
                    attributes={"yaw": 1.0, "pitch": 2.0, "roll": 3.0, "age": 30.0},
                    anchor_cos=0.8,
                )
            )
        return faces


def _config(out: Path, **kw) -> GenerateConfig:
    base = dict(generator="test-noise", identities=12, per_identity=3, out=out, shard_size=9, seed=5)
    return GenerateConfig.from_mapping(base | kw)


def _rows_by_key(folder: Path) -> dict[tuple[int, int], tuple]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted((folder / "data").glob("*.parquet")))
    rows = table.to_pylist()
    return {(r["label"], r["index"]): (r["identity"], r["seed"], r["image"]["bytes"]) for r in rows}


def test_plan_is_whole_identities_and_fixed(tmp_path):
    plans = plan_shards(_config(tmp_path))
    assert [(p.label_start, p.label_stop) for p in plans] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert all(p.file.endswith("-of-00004.parquet") for p in plans)


def test_generate_writes_verified_dataset_and_is_idempotent(tmp_path):
    config = _config(tmp_path / "ds")
    result = generate_dataset(config, show_progress=False)
    assert result.manifest.num_rows == 36 and result.shards_reused == 0
    assert verify_dataset(config.out) == []
    rows = _rows_by_key(config.out)
    assert len(rows) == 36
    assert rows[(4, 2)][1] == sample_seed(5, 4, 2)
    again = generate_dataset(config, show_progress=False)
    assert again.images_written == 0 and again.shards_reused == 4


def test_thread_and_process_encoding_write_the_same_rows(tmp_path, monkeypatch):
    """Small datasets encode on a thread (no spawned process to start); larger ones in a process."""
    import facesynth.pipelines.generate as generate

    assert generate.IN_PROCESS_ENCODING_ROWS >= 36
    with monkeypatch.context() as patch:
        patch.setattr(generate, "ProcessPoolExecutor", None)  # would fail if a process were started
        generate_dataset(_config(tmp_path / "thread"), show_progress=False)
    monkeypatch.setattr(generate, "IN_PROCESS_ENCODING_ROWS", 0)
    generate_dataset(_config(tmp_path / "process"), show_progress=False)
    assert _rows_by_key(tmp_path / "thread") == _rows_by_key(tmp_path / "process")


def test_load_dataset_on_generated_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    config = _config(tmp_path / "ds")
    generate_dataset(config, show_progress=False)
    ds = datasets.load_dataset("parquet", data_dir=str(config.out), split="train")
    assert len(ds) == 36 and sorted(set(ds["label"])) == list(range(12))
    assert ds.features["embedding"].length == 8
    assert np.asarray(ds[0]["image"]).shape == (112, 112, 3)


def test_resume_redoes_missing_and_corrupted_shards(tmp_path):
    config = _config(tmp_path / "ds")
    generate_dataset(config, show_progress=False)
    reference = _rows_by_key(config.out)
    (config.out / "facesynth.json").unlink()  # as if the run had died before finishing
    shards = sorted((config.out / "data").glob("*.parquet"))
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:-100])  # truncated
    (config.out / "data" / ".train-00003-of-00004.parquet.999.tmp").write_bytes(b"half")
    result = generate_dataset(config, show_progress=False)
    assert result.shards_reused == 2 and result.images_written == 18
    assert _rows_by_key(config.out) == reference
    assert verify_dataset(config.out) == []
    assert not list((config.out / "data").glob(".*.tmp"))


def test_refuses_other_config_and_foreign_folder(tmp_path):
    config = _config(tmp_path / "ds")
    generate_dataset(config, show_progress=False)
    with pytest.raises(FacesynthError, match="another config"):
        generate_dataset(_config(tmp_path / "ds", seed=6), show_progress=False)
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "train-00000-of-00001.parquet").write_bytes(b"x")
    with pytest.raises(FacesynthError, match="not made by this command"):
        generate_dataset(_config(foreign), show_progress=False)
    assert (foreign / "data" / "train-00000-of-00001.parquet").read_bytes() == b"x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(FacesynthError, match="not writable"):
        generate_dataset(_config(locked / "ds"), show_progress=False)


def test_unwritable_output_folder_path_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FacesynthError, match="not writable"):
        generate_dataset(_config(blocker / "ds"), show_progress=False)


@pytest.mark.parametrize(
    ("field", "value"), [("identities", 0), ("per_identity", -3), ("shard_size", 0), ("image_format", "gif")]
)
def test_nonsense_counts_name_the_field(tmp_path, field, value):
    with pytest.raises(ConfigError, match=f"field '{field}': bad value"):
        _config(tmp_path, **{field: value})


def test_cli_reports_bad_input_with_exit_code(tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "--generator",
                "nope",
                "--identities",
                "2",
                "--per-identity",
                "2",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown generator 'nope'; available: " in err and "id3, parametric" in err
    assert main(["generate", "--identities", "-1", "--per-identity", "2", "--out", str(tmp_path / "y")]) == 2
    assert "--identities: bad value -1" in capsys.readouterr().err


def test_cli_config_file_sets_defaults(tmp_path, capsys):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"generator: test-noise\nidentities: 4\nper_identity: 2\nout: {tmp_path / 'viaconfig'}\n")
    assert main(["generate", "--config", str(cfg), "--identities", "3", "--no-progress"]) == 0
    assert Manifest.read(tmp_path / "viaconfig").num_identities == 3  # the flag wins over the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("idenities: 4\n")
    assert (
        main(
            [
                "generate",
                "--config",
                str(bad),
                "--identities",
                "3",
                "--per-identity",
                "1",
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "unknown setting 'idenities'" in capsys.readouterr().err


@pytest.mark.slow
def test_one_vs_two_processes_give_identical_rows(tmp_path):
    args = [
        "--generator",
        "parametric",
        "--identities",
        "10",
        "--per-identity",
        "4",
        "--shard-size",
        "8",
        "--no-progress",
    ]
    single = run_cli("generate", *args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    two = run_cli("generate", *args, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _rows_by_key(tmp_path / "one") == _rows_by_key(tmp_path / "two")
    assert verify_dataset(tmp_path / "two") == []
    plan = json.loads((tmp_path / "two" / ".facesynth" / "plan.json").read_text())
    assert plan["config"]["identities"] == 10


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(tmp_path):
    args = [
        "--generator",
        "parametric",
        "--identities",
        "60",
        "--per-identity",
        "5",
        "--shard-size",
        "10",
        "--no-progress",
    ]
    reference = run_cli("generate", *args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "facesynth.pipelines.cli", "generate", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "data").glob("train-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list((out / "data").glob("train-*.parquet")))
    # 60 identities x 5 images in shards of 10 = 30 shards: the kill must land before the last one
    assert 3 <= written < 30, f"the kill must land in the middle of the run ({written} shards written)"
    assert not (out / "facesynth.json").exists()
    rerun = run_cli("generate", *args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _rows_by_key(out) == _rows_by_key(tmp_path / "ref")
    assert run_cli("verify", str(out)).returncode == 0


def test_verify_names_each_problem(tmp_path):
    config = _config(tmp_path / "ds")
    generate_dataset(config, show_progress=False)
    shards = sorted((config.out / "data").glob("*.parquet"))
    shards[0].unlink()
    shards[1].write_bytes(b"PAR1garbagePAR1")
    pq.write_table(pa.table({"a": [1]}), config.out / "data" / "train-00009-of-00010.parquet")
    problems = verify_dataset(config.out)
    text = "\n".join(problems)
    assert "train-00000-of-00004.parquet: shard listed in the manifest is missing" in text
    assert "train-00001-of-00004.parquet: sha256 differs" in text
    assert "train-00009-of-00010.parquet: shard is not listed" in text
    assert main(["verify", str(config.out)]) == 1
    (config.out / "facesynth.json").write_text("{not json")
    assert "manifest is not valid JSON" in verify_dataset(config.out)[0]


# ---- issue 11.3 / 11.4 / 13.1 / 13.5 / 13.8: validate first, own folder only, one writer, bounded memory


@pytest.mark.parametrize(
    ("generator", "options", "message"),
    [
        ("foo", {}, "unknown generator 'foo'"),
        ("parametric", {"pipeline": "x"}, "pipeline"),
        ("parametric", {"image_size": 1}, "image_size"),
        ("parametric", {"no_such_key": 3}, "no_such_key"),
    ],
)
def test_bad_generator_or_options_create_nothing(tmp_path, generator, options, message):
    out = tmp_path / "ds"
    config = GenerateConfig.from_mapping(
        dict(generator=generator, identities=2, per_identity=2, out=out, options=options)
    )
    with pytest.raises(ConfigError, match=message):
        generate_dataset(config, show_progress=False)
    assert not out.exists()  # no plan.json: the corrected command is not refused afterwards


def test_non_empty_foreign_folder_is_refused_unless_allowed(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(FacesynthError, match="not empty and is not a facesynth dataset.*notes.txt"):
        generate_dataset(_config(out), show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    generate_dataset(_config(out, allow_non_empty_out=True), show_progress=False)
    assert verify_dataset(out) == [] and (out / "notes.txt").read_text() == "my notes"
    readme_only = tmp_path / "readme-only"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("# my own project\n")
    with pytest.raises(FacesynthError, match="holds README.md"):
        generate_dataset(_config(readme_only), show_progress=False)


def test_card_never_overwrites_a_users_readme(tmp_path):
    from facesynth.core.ownership import check_may_write, owned_write

    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    with pytest.raises(FacesynthError, match="not written by facesynth"), owned_write(readme) as handle:
        handle.write(b"card")
    assert readme.read_text() == "# my project\n"
    readme.unlink()
    with owned_write(readme) as handle:
        handle.write(b"card v1")
    check_may_write(readme)  # ours, unchanged: may be rewritten
    readme.write_text("edited by hand")
    with pytest.raises(FacesynthError):
        check_may_write(readme)


def test_second_generate_into_a_locked_folder_is_refused(tmp_path):
    from facesynth.core.locks import LockedError, acquire

    out = tmp_path / "ds"
    code = (
        "import time; from facesynth.core.locks import acquire; "
        f"lock = acquire({str(out)!r}, 'generate'); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            generate_dataset(_config(out), show_progress=False)
        assert not list(out.glob("data/*.parquet")) and not (out / ".facesynth" / "plan.json").exists()
    finally:
        holder.kill()
        holder.wait()
    generate_dataset(_config(out), show_progress=False)  # the dead holder's lock is taken over
    assert verify_dataset(out) == []
    acquire(out, "check").release()  # and the finished run released its own


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"identities": 10**9}, "GiB of per-identity state"), ({"per_identity": 10**9}, "images per shard")],
)
def test_absurd_sizes_are_refused_with_the_number(tmp_path, kw, message):
    with pytest.raises(FacesynthError, match=message):
        generate_dataset(_config(tmp_path / "ds", **kw), show_progress=False)
    assert not (tmp_path / "ds").exists()
