"""The ``publish`` stage: validate a dataset or model folder, then upload it to the Hugging Face Hub.

Validation comes first and needs no network: for a dataset, the manifest check of
:func:`facesynth.core.integrity.verify_dataset` (every shard present, sha256 and row counts
right, no stray shards), the card (``README.md`` parses with ``huggingface_hub``'s card classes, has a
licence, allowed ``size_categories``, ``configs`` whose data files match the shards, split sizes that
agree with the manifest), and ``datasets`` loading the folder through those configs; for a model, the
card and safetensors / ONNX weights (no pickle files). Both are checked against the Hub's limits on
files per repo, entries per folder and file size.

The upload is ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder``: with
huggingface_hub >= 1.20 and ``hf_xet`` it commits in batches and resumes by re-running the same
command (committed files are skipped, chunks deduplicated). The token comes from the usual places
(``HF_TOKEN``, ``hf auth login``), resolved by huggingface_hub itself; it is never logged, and any
error text that reaches the user is scrubbed of it. ``dry_run`` lists what would be uploaded and makes
no network call.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.pipelines.cards import CARD_NAME, check_repo_id, folder_kind

logger = logging.getLogger(__name__)

RepoType = Literal["dataset", "model"]

# Never uploaded: generate's state folder, huggingface_hub's local cache, temp files, VCS folders.
IGNORE_PATTERNS = (
    ".facesynth/*",
    ".cache/*",
    ".git/*",
    "*.tmp",
    "*/.*.tmp",
    ".*.tmp",
    "*.lock",
    "__pycache__/*",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class PublishConfig(StageConfig):
    """Settings of ``facesynth publish``."""

    folder: Path = Field(description="dataset or model folder")
    repo_id: str = Field(description="NAMESPACE/NAME on the Hub")
    repo_type: Literal["auto", "dataset", "model"] = Field(
        default="auto", description="Hub repo type: auto detects it from the folder"
    )
    private: bool = Field(default=False, description="create the repo as private")
    dry_run: bool = Field(default=False, description="validate and list the upload; no network call")
    commit_message: str | None = Field(
        default=None, description="commit message (unset: 'Upload dataset with facesynth')"
    )


@dataclass(frozen=True)
class HubLimits:
    """The Hub's repository limits (hub-docs ``storage-limits.md`` / repository recommendations).

    Errors: more than ``max_files`` files, more than ``max_folder_entries`` entries in one folder, a
    file over ``max_file_bytes`` (50 GB hard limit per file). Warnings: files over the recommended
    20 GB, more than ``commit_batch`` files (several commits), a repo over ``large_repo_bytes``
    (the Hub asks to be contacted for repos of TBs), a private repo over the free tier.
    """

    max_files: int = 100_000
    max_folder_entries: int = 10_000
    max_file_bytes: int = 50 * 10**9
    recommended_file_bytes: int = 20 * 10**9
    large_repo_bytes: int = 300 * 10**9
    private_free_bytes: int = 100 * 10**9
    commit_batch: int = 100


@dataclass
class UploadPlan:
    folder: Path
    repo_id: str
    repo_type: RepoType
    private: bool
    files: list[tuple[str, int]]  # path in repo, size in bytes
    warnings: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # files in the folder that are not uploaded

    @property
    def allow_patterns(self) -> list[str]:
        """The exact upload list as ``upload_folder`` patterns (special characters escaped)."""
        return [glob.escape(path) for path, _ in self.files]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        """The human-readable listing that ``--dry-run`` prints."""
        lines = [
            f"would upload {len(self.files)} files ({_human(self.total_bytes)}) from {self.folder}",
            f"to https://huggingface.co/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"
            f" ({self.repo_type} repo, {'private' if self.private else 'public'})",
        ]
        width = max((len(p) for p, _ in self.files), default=0)
        lines += [f"  {path:<{width}}  {_human(size):>10}" for path, size in self.files]
        if self.left_out:
            shown = ", ".join(self.left_out[:8]) + (", ..." if len(self.left_out) > 8 else "")
            lines.append(f"left out ({len(self.left_out)}): {shown}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class PublishResult:
    plan: UploadPlan
    uploaded: bool
    url: str | None = None


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in IGNORE_PATTERNS)


def _inside(folder: Path, path: Path) -> bool:
    """A regular file reached without any link, inside ``folder``."""
    rel = path.relative_to(folder)
    probe = folder
    for part in rel.parts:
        probe = probe / part
        if probe.is_symlink():
            return False
    return path.is_file() and path.resolve().is_relative_to(folder.resolve())


def list_upload_files(folder: str | Path) -> list[tuple[str, int]]:
    """(path in repo, size) of every regular file in ``folder`` that may be sent, in sorted order:
    no links (a link could point at a secret outside), nothing ignored."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not _ignored(rel) and _inside(folder, path):
            files.append((rel, path.stat().st_size))
    return files


#: Besides the manifest's shards, what a dataset repo holds: card, manifest, quality report, figures.
DATASET_EXTRAS = (
    CARD_NAME,
    "facesynth.json",
    "quality.json",
    "quality.md",
    "ingest_report.json",
    "figures/*",
)
#: Never part of a model repo: training checkpoints (pickled optimizer state) and training logs.
MODEL_LEFT_OUT = ("checkpoints/*", "*/checkpoints/*", "train.log")


def select_upload(folder: Path, kind: str, files: list[tuple[str, int]]) -> tuple[list, list[str]]:
    """(files to upload, paths left out): a dataset sends exactly its manifest's shards plus
    :data:`DATASET_EXTRAS`; a model everything but checkpoints, logs and pickle files."""
    keep, left = [], []
    if kind == "dataset":
        from facesynth.core.manifest import Manifest

        try:
            shards = {r.file for r in Manifest.read(folder).shards}
        except FacesynthError:
            shards = set()
        for path, size in files:
            wanted = path in shards or any(fnmatch.fnmatch(path, p) for p in DATASET_EXTRAS)
            (keep.append((path, size)) if wanted else left.append(path))
    else:
        for path, size in files:
            dropped = any(fnmatch.fnmatch(path, p) for p in MODEL_LEFT_OUT) or path.endswith(PICKLE_SUFFIXES)
            (left.append(path) if dropped else keep.append((path, size)))
    return keep, left


def check_hub_limits(
    files: Sequence[tuple[str, int]], private: bool = False, limits: HubLimits | None = None
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a file list against the Hub's limits."""
    limits = limits or HubLimits()
    problems: list[str] = []
    warnings: list[str] = []
    if len(files) > limits.max_files:
        problems.append(f"{len(files)} files exceed the Hub's limit of {limits.max_files:,} files per repo")
    entries: dict[str, set[str]] = {}
    for path, size in files:
        parts = path.split("/")
        for depth in range(len(parts)):
            entries.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        if size > limits.max_file_bytes:
            problems.append(
                f"{path}: {_human(size)} exceeds the Hub's per-file limit of {_human(limits.max_file_bytes)}"
            )
        elif size > limits.recommended_file_bytes:
            warnings.append(
                f"{path}: {_human(size)} is above the recommended {_human(limits.recommended_file_bytes)} per file"
            )
    for folder, names in sorted(entries.items()):
        if len(names) > limits.max_folder_entries:
            problems.append(
                f"folder {folder or '.'!r} has {len(names):,} entries; the Hub allows {limits.max_folder_entries:,} per folder"
            )
    total = sum(size for _, size in files)
    if total > limits.large_repo_bytes:
        warnings.append(
            f"{_human(total)} in total: the Hub asks owners of repos this large to contact it first"
        )
    if private and total > limits.private_free_bytes:
        warnings.append(
            f"{_human(total)} private: above the free tier of {_human(limits.private_free_bytes)} of private storage"
        )
    if len(files) > limits.commit_batch:
        warnings.append(f"{len(files)} files: upload_folder will commit them in several batches")
    return problems, warnings


def validate_dataset_card(folder: Path, num_rows: int | None, upload_paths: Sequence[str]) -> list[str]:
    """Problems of a dataset card: parse, licence, size category, configs and split sizes."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    path = folder / CARD_NAME
    if not path.is_file():
        return [f"{path}: dataset card is missing (run `facesynth card {folder}`)"]
    try:
        card = DatasetCard.load(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a problem to report
        return [f"{path}: card does not parse ({exc})"]
    data = card.data.to_dict()
    problems: list[str] = []
    if data.get("license") in (None, "", "unknown"):
        problems.append(f"{path}: licence unknown; state it: facesynth card {path.parent} --license ID")
    allowed = set(_size_categories())
    for value in _as_list(data.get("size_categories")):
        if value not in allowed:
            problems.append(
                f"{path}: size_categories value {value!r} is not one of the Hub's {sorted(allowed)}"
            )
    try:
        configs = MetadataConfigs.from_dataset_card_data(card.data)
    except Exception as exc:  # noqa: BLE001
        return [*problems, f"{path}: configs are invalid ({exc})"]
    if not configs:
        problems.append(f"{path}: YAML has no configs (datasets would guess the data files)")
    for name, config in configs.items():
        for entry in _as_list(config.get("data_files")):
            patterns = _as_list(entry.get("path")) if isinstance(entry, dict) else [entry]
            for pattern in patterns:
                if not any(fnmatch.fnmatch(p, pattern) for p in upload_paths):
                    problems.append(f"{path}: config {name!r} data_files pattern {pattern!r} matches no file")
    try:
        infos = DatasetInfosDict.from_dataset_card_data(card.data)
    except Exception as exc:  # noqa: BLE001
        return [*problems, f"{path}: dataset_info is invalid ({exc})"]
    if num_rows is not None:
        for name, info in infos.items():
            if info.splits and "train" in info.splits and info.splits["train"].num_examples != num_rows:
                problems.append(
                    f"{path}: dataset_info ({name}) says {info.splits['train'].num_examples} train rows, "
                    f"the manifest {num_rows}; rerun `facesynth card`"
                )
    return problems


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _size_categories() -> list[str]:
    import json

    import datasets

    path = Path(datasets.__file__).parent / "utils" / "resources" / "size_categories.json"
    return json.loads(path.read_text(encoding="utf-8"))


_LOAD_CHECK = """
import json, os, sys
problems = []
try:
    from datasets import load_dataset

    dataset = load_dataset(sys.argv[1], split="train", streaming=True)
    first = next(iter(dataset))
    if "image" not in first or "label" not in first:
        problems.append(f"datasets loads rows without image/label columns ({sorted(first)})")
    features = dataset.features
    if features is not None and type(features.get("image")).__name__ != "Image":
        problems.append(f"datasets does not see 'image' as an Image feature ({features.get('image')})")
except Exception as exc:  # report whatever datasets complains about
    problems.append(f"datasets cannot load it ({type(exc).__name__}: {exc})")
print(json.dumps(problems), flush=True)
os._exit(0)
"""


def check_datasets_loads(folder: Path, timeout: float = 600.0) -> list[str]:
    """Load the folder with ``datasets`` through its card's configs (streaming, first row).

    Runs in a child process that leaves with ``os._exit``: a half-read ``datasets`` stream left to
    interpreter shutdown made the process abort ("terminate called without an active exception",
    status 134) or hang in about one run in three.
    """
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_CHECK, str(folder)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = done.stdout.strip().splitlines()
        problems = json.loads(lines[-1]) if lines else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        problems = None
    if problems is None:
        return [f"{folder}: the datasets loading check did not finish (run it again with -v)"]
    return [f"{folder}: {problem}" for problem in problems]


def validate_model_folder(folder: Path) -> list[str]:
    from huggingface_hub import ModelCard

    problems = []
    path = folder / CARD_NAME
    if not path.is_file():
        problems.append(f"{path}: model card is missing (run `facesynth card {folder}`)")
    else:
        try:
            card = ModelCard.load(path)
            if not card.data.to_dict().get("license"):
                problems.append(f"{path}: YAML has no license")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: card does not parse ({exc})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.onnx")):
        problems.append(f"{folder}: no *.safetensors or *.onnx weights")
    # pickles (checkpoints/, *.pt, *.bin) are left out of the upload by select_upload, not refused
    return problems


def plan_upload(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: RepoType | Literal["auto"] = "auto",
    private: bool = False,
    check_loading: bool = True,
    limits: HubLimits | None = None,
) -> UploadPlan:
    """Validate ``folder`` and list its upload; raise :class:`FacesynthError` naming every problem."""
    folder = Path(folder)
    check_repo_id(repo_id)
    kind = folder_kind(folder) if repo_type == "auto" else repo_type
    files, left_out = select_upload(folder, kind, list_upload_files(folder))
    problems: list[str] = []
    if kind == "dataset":
        from facesynth.core.integrity import verify_dataset
        from facesynth.core.manifest import Manifest

        # every image's header is read; every 64th is decoded in full
        problems += verify_dataset(folder, image_stride=64)
        listed = {p for p, _ in files}
        if not problems:
            problems += [
                f"{folder / r.file}: listed in the manifest but not an uploadable file (a link?)"
                for r in Manifest.read(folder).shards
                if r.file not in listed
            ]
        num_rows = None
        if not problems:
            num_rows = Manifest.read(folder).num_rows
        problems += validate_dataset_card(folder, num_rows, [p for p, _ in files])
        if not problems and check_loading:
            problems += check_datasets_loads(folder)
    else:
        problems += validate_model_folder(folder)
    limit_problems, warnings = check_hub_limits(files, private, limits)
    pickles = [p for p in left_out if p.endswith(PICKLE_SUFFIXES) and "checkpoints/" not in p]
    if pickles:
        warnings.append(f"pickle-based files {pickles[:5]} are left out; keep weights in safetensors")
    problems += limit_problems
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise FacesynthError(f"{folder} is not ready to publish ({count}):\n{listing}")
    return UploadPlan(folder, repo_id, kind, private, files, warnings, left_out)


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return text


def _supports_resumable_upload_folder() -> bool:
    import huggingface_hub
    from packaging.version import Version

    return Version(huggingface_hub.__version__) >= Version("1.20.0")


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    repo_type: RepoType | Literal["auto"] = "auto",
    commit_message: str | None = None,
    api: Any = None,
    check_loading: bool = True,
) -> PublishResult:
    """Validate, then (unless ``dry_run``) create the repo and upload the folder; re-run to resume.

    ``api`` is an :class:`huggingface_hub.HfApi` (built here when None; a dry run never builds or
    calls one).
    """
    plan = plan_upload(folder, repo_id, repo_type=repo_type, private=private, check_loading=check_loading)
    for warning in plan.warnings:
        logger.warning(warning)
    if dry_run:
        return PublishResult(plan, uploaded=False)
    from huggingface_hub import get_token

    token = get_token()
    if api is None:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            raise FacesynthError("HF_HUB_OFFLINE is set: cannot upload (unset it, or use --dry-run)")
        if not token:
            raise FacesynthError("no Hugging Face token found: set HF_TOKEN or run `hf auth login`")
        from huggingface_hub import HfApi

        api = HfApi()  # resolves the token itself; it never passes through our logs
    message = commit_message or f"Upload {plan.repo_type} with facesynth"
    try:
        repo = api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        logger.info("uploading %d files (%s) to %s", len(plan.files), _human(plan.total_bytes), plan.repo_id)
        if _supports_resumable_upload_folder():
            api.upload_folder(
                repo_id=plan.repo_id,
                folder_path=str(plan.folder),
                repo_type=plan.repo_type,
                commit_message=message,
                allow_patterns=plan.allow_patterns,  # exactly the listed files, as --dry-run shows
                ignore_patterns=list(IGNORE_PATTERNS),
            )
        else:  # older huggingface_hub: the large-folder uploader keeps resume state in the folder
            api.upload_large_folder(
                repo_id=plan.repo_id,
                folder_path=str(plan.folder),
                repo_type=plan.repo_type,
                allow_patterns=plan.allow_patterns,
                ignore_patterns=list(IGNORE_PATTERNS),
            )
    except FacesynthError:
        raise
    except Exception as exc:  # noqa: BLE001 - network / auth / server errors, shown without the token
        raise FacesynthError(
            f"upload to {plan.repo_id} failed: {_scrub(f'{type(exc).__name__}: {exc}', token)}\n"
            "  re-run the same command to resume (files already committed are skipped)"
        ) from None
    url = str(getattr(repo, "url", "") or f"https://huggingface.co/{plan.repo_id}")
    return PublishResult(plan, uploaded=True, url=url)


def run_publish(config: PublishConfig, *, api: Any = None) -> PublishResult:
    """The publish stage: :func:`publish` with the settings of ``config``."""
    return publish(
        config.folder,
        config.repo_id,
        private=config.private,
        dry_run=config.dry_run,
        repo_type=config.repo_type,
        commit_message=config.commit_message,
        api=api,
    )
