"""Verification protocol: hand-worked 10-fold accuracy and TAR@FAR, flip-TTA, reports, the bench command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from facesynth.core.errors import FacesynthError
from facesynth.core.verification_metrics import kfold_accuracy, tar_at_far
from facesynth.pipelines.cli import main
from facesynth.recognizers.benchmark_files import load_bin, write_bin
from facesynth.recognizers.encoders import TorchEncoder, images_to_tensor
from facesynth.recognizers.verification import embed_images, evaluate_benchmark, write_report


def test_kfold_accuracy_hand_worked():
    # 20 pairs alternate genuine/impostor; genuine distance 1.0, impostor 2.0, except pair 0 (a hard
    # genuine pair at 3.0). Ten folds of two pairs. Fold 0 trains on pairs 2..19, where 1.5 and 1.8 both
    # score 100 %; the first (1.5) wins; on its test pairs pair 0 (3.0) is called "different" (wrong) and
    # pair 1 is right: 50 %. Every other fold trains with pair 0 inside: 1.5 -> 17/18, 2.5 -> 10/18, so 1.5
    # again and its test pairs are both right. Mean = (0.5 + 9) / 10 = 0.95; std = sqrt((0.45^2 + 9 *
    # 0.05^2) / 10) = 0.15.
    issame = np.array([i % 2 == 0 for i in range(20)])
    distances = np.where(issame, 1.0, 2.0)
    distances[0] = 3.0
    result = kfold_accuracy(distances, issame, n_folds=10, thresholds=np.array([0.5, 1.5, 1.8, 2.5]))
    assert result["accuracies"] == [0.5] + [1.0] * 9
    assert result["thresholds"] == [1.5] * 10
    assert result["accuracy"] == pytest.approx(0.95)
    assert result["accuracy_std"] == pytest.approx(0.15)


def test_kfold_accuracy_rejects_bad_input():
    with pytest.raises(FacesynthError, match="cannot be split"):
        kfold_accuracy(np.zeros(5), np.zeros(5, bool))
    with pytest.raises(FacesynthError, match="must be equal"):
        kfold_accuracy(np.zeros(20), np.zeros(19, bool))


def test_tar_at_far_hand_worked():
    # 4 genuine, 1000 impostor pairs. One impostor scores 0.75, the rest <= 0.3. FAR <= 1e-3 allows one
    # false accept: threshold 0.7 accepts 0.9, 0.8, 0.7 -> TAR 0.75. FAR 1e-4 allows none: threshold
    # above 0.75 -> TAR 0.5, and 1e-4 * 1000 < 1 so it is flagged as not resolvable.
    genuine = np.array([0.9, 0.8, 0.7, 0.2])
    impostor = np.concatenate([[0.75], np.linspace(-0.5, 0.3, 999)])
    scores = np.concatenate([genuine, impostor])
    issame = np.concatenate([np.ones(4, bool), np.zeros(1000, bool)])
    result = tar_at_far(scores, issame, fars=(1e-3, 1e-4))
    assert result["tar_at_far"]["0.001"] == {"tar": 0.75, "resolvable": True}
    assert result["tar_at_far"]["0.0001"] == {"tar": 0.5, "resolvable": False}
    assert result["num_impostor"] == 1000


class PixelProjection(nn.Module):
    """A fixed random projection of the pixels: distinct images -> nearly orthogonal embeddings."""

    def __init__(self, dim: int = 32, size: int = 112):
        super().__init__()
        self.proj = nn.Linear(3 * size * size, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def _pair_bin(path, num_pairs: int, seed: int, variant: str = "bytes"):
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for i in range(num_pairs):
        a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        same = i % 2 == 0
        noise = rng.integers(-6, 7, a.shape)
        b = np.clip(a + noise, 0, 255).astype(np.uint8) if same else rng.integers(0, 256, a.shape, np.uint8)
        images += [a, b]
        issame.append(same)
    return write_bin(path, images, issame, variant=variant, image_format="PNG")


def test_flip_tta_sums_raw_embeddings_then_normalises(tmp_path):
    encoder = TorchEncoder(PixelProjection())
    bench = load_bin(_pair_bin(tmp_path / "p.bin", 3, seed=0))
    got = embed_images(encoder, bench, batch_size=4, flip=True)
    x = images_to_tensor(bench.load_images(range(6)))
    with torch.no_grad():
        raw = encoder.model(x) + encoder.model(torch.flip(x, dims=[3]))
    np.testing.assert_allclose(got, torch.nn.functional.normalize(raw, dim=1).numpy(), atol=1e-5)
    no_flip = embed_images(encoder, bench, batch_size=4, flip=False)
    assert np.abs(no_flip - got).max() > 1e-3


def test_evaluate_benchmark_and_report(tmp_path):
    encoder = TorchEncoder(PixelProjection())
    results = []
    for name, variant in (("lfw", "numpy"), ("cfp_fp", "py2")):
        bench = load_bin(_pair_bin(tmp_path / f"{name}.bin", 40, seed=len(name), variant=variant))
        result = evaluate_benchmark(encoder, bench, batch_size=16)
        assert result["accuracy"] == 1.0 and result["accuracy_std"] == 0.0
        assert result["num_pairs"] == 40 and result["name"] == name
        assert result["auc"] == pytest.approx(1.0)
        results.append(result)
    files = write_report(results, tmp_path / "report", model="projection")
    report = json.loads(files["json"].read_text())
    assert [b["name"] for b in report["benchmarks"]] == ["lfw", "cfp_fp"]
    assert report["average"]["accuracy"] == 1.0 and report["average"]["num_pairs"] == 80
    assert "fpr" not in report["benchmarks"][0]
    markdown = files["markdown"].read_text()
    assert "| **average** | 80 | 100.00 +- 0.00 |" in markdown
    assert "not resolvable" in markdown  # 20 impostor pairs cannot resolve FAR 1e-3
    assert files["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command_end_to_end(tmp_path, capsys):
    from facesynth.recognizers.backbones import build_backbone, save_backbone

    save_backbone(build_backbone("tiny"), tmp_path / "model")
    _pair_bin(tmp_path / "bins" / "lfw.bin", 10, seed=1)
    _pair_bin(tmp_path / "bins" / "agedb_30.bin", 10, seed=2)
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--model",
            f"torch:{tmp_path / 'model'}",
            "--bin-dir",
            str(tmp_path / "bins"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert [b["name"] for b in report["benchmarks"]] == ["lfw", "agedb_30"]
    accuracies = [b["accuracy"] for b in report["benchmarks"]]
    assert report["average"]["accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert (out / "roc.png").is_file() and (out / "bench.md").is_file()
    # bad input: a missing benchmark and a benchmark with wrong-size images give exit 2 with the reason
    assert (
        main(
            ["bench", "--model", f"torch:{tmp_path / 'model'}", str(tmp_path / "nope.bin"), "--out", str(out)]
        )
        == 2
    )
    rng = np.random.default_rng(0)
    write_bin(tmp_path / "small.bin", [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)] * 2, [True])
    assert (
        main(
            [
                "bench",
                "--model",
                f"torch:{tmp_path / 'model'}",
                str(tmp_path / "small.bin"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "benchmark file not found" in err and "96x96, expected an aligned 112x112" in err


def test_evaluate_benchmark_keeps_a_training_model_training(tmp_path):
    # the trainer's periodic verification wraps its live model: BN statistics and mode must survive
    from facesynth.recognizers.backbones import build_backbone

    model = build_backbone("tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = TorchEncoder(model, set_eval=False)
    assert model.training
    evaluate_benchmark(encoder, load_bin(_pair_bin(tmp_path / "t.bin", 10, seed=3)), batch_size=20)
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_unaligned_pairs_without_faces_error_or_are_counted(tmp_path):
    from PIL import Image

    from facesynth.recognizers.alignment import Aligner
    from facesynth.recognizers.benchmark_files import load_pairs_folder

    class FindsNothing(Aligner):
        """A detector that finds no face in any photo (as dlib does on noise)."""

        name = "finds-nothing"

        def align(self, image):
            return []

    rng = np.random.default_rng(0)
    lines = ["10"]
    for k in range(10):
        for name in (f"p{k}", f"q{k}"):
            (tmp_path / name).mkdir()
            for i in (1, 2):
                noise = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)  # not 112x112
                Image.fromarray(noise).save(tmp_path / name / f"{name}_{i:04d}.png")
        lines.append(f"p{k} 1 2" if k % 2 == 0 else f"p{k} 1 q{k} 2")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    bench = load_pairs_folder(tmp_path)
    bench.aligner = FindsNothing()
    encoder = TorchEncoder(PixelProjection())
    with pytest.raises(FacesynthError, match="p0_0001.png: no face found by the finds-nothing aligner"):
        evaluate_benchmark(encoder, bench)
    bench.no_face = "center"
    result = evaluate_benchmark(encoder, bench, batch_size=20)
    assert (result["no_face_images"], result["no_face_pairs"]) == (20, 10)
    markdown = write_report([result], tmp_path / "r")["markdown"].read_text()
    assert "20 images without a detected face were centre-cropped (10 of 10 pairs)" in markdown
