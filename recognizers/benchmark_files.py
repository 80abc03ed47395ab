"""Verification benchmark inputs: insightface ``.bin`` packs and LFW-style ``pairs.txt`` folders.

A ``.bin`` file (arcface_torch ``eval/verification.py``) is a pickle of ``(bins, issame_list)``:
``bins`` holds 2N encoded images (JPEG/PNG, as ``bytes`` or as 1-D uint8 numpy arrays depending on
the Python that wrote it) of already-aligned 112x112 faces, pair i = ``(bins[2i], bins[2i+1])``;
``issame_list`` holds N booleans. The public files were pickled by Python 2.

A pickle can run arbitrary code when loaded, so :func:`load_bin` reads it with a restricted
unpickler that only rebuilds the containers the format needs (lists, tuples, bytes, booleans and
plain numpy arrays) and refuses every other global *before* calling it.

``pairs.txt`` (the LFW "View 2" format) is a header line (``folds pairs_per_fold`` or just a count)
then genuine lines ``name n1 n2`` and impostor lines ``name1 n1 name2 n2``; image ``n`` of ``name``
is ``<root>/name/name_000n.<ext>`` with any image extension.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesynth.core.atomic_io import atomic_write
from facesynth.core.errors import FacesynthError

#: Benchmarks arcface_torch validates on, in its order, plus the two cross-age/pose LFW variants.
STANDARD_BENCHMARKS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")


class UnsafePickleError(FacesynthError):
    """A pickle asked for something the restricted unpickler does not allow."""


def _ndarray_token(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for ``numpy.ndarray``: a pickle may name it as ``_reconstruct``'s subtype, never call it."""
    raise UnsafePickleError("refused to call numpy.ndarray directly (it would allocate any shape)")


class _Budget:
    """Bytes a pickle may make the loader allocate beyond its own size: arrays hold data the file carries."""

    def __init__(self, file_bytes: int):
        self.left = int(file_bytes) + 4096

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise UnsafePickleError(
                f"{what} would allocate {nbytes:,} bytes, more than the {self.left:,} bytes the file can carry"
            )
        self.left -= nbytes


def _safe_dtype(value: Any) -> np.dtype:
    dtype = np.dtype(value)
    if dtype.hasobject:
        raise UnsafePickleError(f"refused numpy dtype {dtype} (object arrays can hold any Python object)")
    return dtype


def _restricted_globals(budget: _Budget) -> dict[tuple[str, str], Any]:
    """(module, name) -> what the restricted unpickler hands back: checked stand-ins, never the raw callables."""

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _ndarray_token:
            raise UnsafePickleError("refused numpy _reconstruct of a type other than ndarray")
        dims = tuple(int(d) for d in (shape if isinstance(shape, tuple | list) else (shape,)))
        if any(d < 0 for d in dims):
            raise UnsafePickleError(f"refused numpy array shape {dims}")
        kind = _safe_dtype(dtype)
        budget.take(int(np.prod(dims, dtype=object)) * kind.itemsize, f"numpy array of shape {dims}")
        return np.ndarray.__new__(np.ndarray, dims, kind)

    def dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(spec, str | bytes):
            raise UnsafePickleError(f"refused numpy dtype built from {type(spec).__name__}")
        result = _safe_dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)
        budget.take(0 if result.itemsize <= 64 else result.itemsize, f"numpy dtype {result}")
        return np.dtype(result, align=bool(align), copy=bool(copy))

    def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        return np.frombuffer(buffer, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()

    def encode(text: Any, encoding: Any = "latin1") -> bytes:
        if not isinstance(text, str) or str(encoding).replace("-", "").lower() not in ("latin1", "iso88591"):
            raise UnsafePickleError("refused _codecs.encode other than str -> latin1 bytes")
        return text.encode("latin1")

    def make_bytearray(source: Any = b"", *rest: Any) -> bytearray:
        if isinstance(source, int):
            raise UnsafePickleError("refused bytearray(size): a .bin stores bytes, not sizes to allocate")
        return bytearray(source, *rest)

    table: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = frombuffer
    table[("numpy", "ndarray")] = _ndarray_token
    table[("numpy", "dtype")] = dtype
    # Python 3 pickles ``bytes`` at protocol < 3 as _codecs.encode(text, "latin1")
    table[("_codecs", "encode")] = encode
    table[("builtins", "bytearray")] = table[("__builtin__", "bytearray")] = make_bytearray
    return table


#: Opcodes that only push data, build containers or call one of the allowed globals above.
_UNSAFE_OPCODES = frozenset(
    {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
)


def check_pickle_opcodes(data: bytes) -> None:
    """Walk the opcodes without building anything: every length-prefixed item must fit in the bytes
    left (a BYTEARRAY8 claiming 2^40 bytes is refused here, before any allocation)."""
    import pickletools

    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            if opcode.name in _UNSAFE_OPCODES:
                raise UnsafePickleError(
                    f"refused pickle opcode {opcode.name} (a .bin benchmark never needs it)"
                )
    except UnsafePickleError:
        raise
    except (ValueError, EOFError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        # a length running past the end of the file lands here too
        raise FacesynthError(f"not a readable .bin benchmark pickle ({exc})") from None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, encoding: str, budget: _Budget):
        super().__init__(file, encoding=encoding)
        self._allowed = _restricted_globals(budget)

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"refused to load global {module}.{name}: a .bin benchmark holds only lists of "
                "encoded images and booleans, so this file is not one (and may carry code)"
            )
        return self._allowed[(module, name)]


def restricted_loads(data: bytes, encoding: str = "ASCII") -> object:
    """``pickle.loads`` that refuses every global outside the ``.bin`` allow-list and any allocation
    beyond what the bytes of ``data`` can carry."""
    check_pickle_opcodes(data)
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding, budget=_Budget(len(data))).load()


@dataclass
class VerificationSet:
    """Pairs of aligned face images with same/different labels, read lazily.

    ``sources`` has 2N entries (encoded image bytes or file paths); pair i is (2i, 2i+1).
    """

    name: str
    sources: list[bytes | Path]
    issame: np.ndarray
    origin: str = ""
    image_size: int = 112
    notes: list[str] = field(default_factory=list)
    #: optional :class:`~facesynth.recognizers.alignment.Aligner` for unaligned photos (e.g. raw LFW
    #: 250x250 images); a photo without a face is then an error, never a silently dropped pair
    aligner: Any = None
    #: what to do when the aligner finds no face: "error", or "center" (centre-crop the photo, count
    #: it in ``fallbacks``, and let the report say how many pairs rest on such crops)
    no_face: str = "error"
    fallbacks: set[int] = field(default_factory=set)
    #: optional (2N, 5, 2) landmarks of the images on their crops (NaN where unknown), for privacy
    #: methods whose client uses them (DuetFace's ROI); recognizers ignore them
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame, dtype=bool)
        if self.landmarks is not None and len(self.landmarks) != len(self.sources):
            raise FacesynthError(
                f"{self.origin or self.name}: {len(self.landmarks)} landmark sets for {len(self.sources)} images"
            )
        if len(self.sources) != 2 * len(self.issame):
            raise FacesynthError(
                f"{self.origin or self.name}: {len(self.sources)} images for {len(self.issame)} pairs "
                f"(expected {2 * len(self.issame)})"
            )
        if len(self.issame) == 0:
            raise FacesynthError(f"{self.origin or self.name}: no pairs")

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.sources)

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as RGB uint8 (size, size, 3); a clear error if it cannot be decoded or has the wrong size."""
        source = self.sources[i]
        where = f"{source}" if isinstance(source, Path) else f"{self.origin or self.name} image #{i}"
        try:
            if isinstance(source, Path):
                with Image.open(source) as pil:
                    rgb = np.asarray(pil.convert("RGB"))
            else:
                with Image.open(io.BytesIO(source)) as pil:
                    rgb = np.asarray(pil.convert("RGB"))
        except FileNotFoundError:
            raise FacesynthError(f"{where}: image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise FacesynthError(f"{where}: cannot decode image ({exc})") from None
        if self.aligner is not None:
            face = self.aligner.align_largest(rgb)
            if face is None and self.no_face != "center":
                raise FacesynthError(
                    f"{where}: no face found by the {self.aligner.name} aligner "
                    "(facesynth bench --no-face center centre-crops such photos and counts them)"
                )
            if face is None:
                from facesynth.recognizers.alignment import NoneAligner

                self.fallbacks.add(i)
                face = NoneAligner(self.image_size, mode="crop", max_aspect=float("inf")).align_largest(rgb)
            rgb = face.image
        if rgb.shape[:2] != (self.image_size, self.image_size):
            raise FacesynthError(
                f"{where}: image is {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned "
                f"{self.image_size}x{self.image_size} face (pass an aligner, e.g. facesynth bench --aligner dlib)"
            )
        return rgb

    def load_images(self, indices: Sequence[int]) -> np.ndarray:
        """Images as an (n, size, size, 3) uint8 array."""
        return np.stack([self.load_image(int(i)) for i in indices])


def _unpickle_bin(data: bytes, path: Path) -> object:
    # Python 3 pickles load as is; Python 2 `str` objects need encoding="bytes" (arcface_torch does
    # the same); numpy arrays pickled by Python 2 want latin1.
    try:
        check_pickle_opcodes(data)
    except FacesynthError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    last: Exception | None = None
    for encoding in ("ASCII", "bytes", "latin1"):
        try:
            return restricted_loads(data, encoding=encoding)
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
            last = exc  # UnicodeDecodeError is a ValueError: try the next encoding
    raise FacesynthError(f"{path}: not a readable .bin benchmark pickle ({type(last).__name__}: {last})")


def load_bin(path: str | os.PathLike, name: str | None = None) -> VerificationSet:
    """Read an insightface ``.bin`` benchmark safely (restricted unpickler, structure checked)."""
    path = Path(path)
    if not path.is_file():
        raise FacesynthError(f"{path}: benchmark file not found")
    obj = _unpickle_bin(path.read_bytes(), path)
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise FacesynthError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, list | tuple) or not isinstance(issame, list | tuple | np.ndarray):
        raise FacesynthError(f"{path}: expected (list of images, list of booleans)")
    sources: list[bytes | Path] = []
    for i, item in enumerate(bins):
        if isinstance(item, bytes | bytearray):
            sources.append(bytes(item))
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            sources.append(item.tobytes())
        else:
            kind = (
                f"array of {item.dtype}, shape {item.shape}"
                if isinstance(item, np.ndarray)
                else type(item).__name__
            )
            raise FacesynthError(f"{path}: image #{i} is a {kind}, expected encoded image bytes")
    flags = []
    for i, flag in enumerate(issame):
        if not isinstance(flag, bool | np.bool_ | int | np.integer) or int(flag) not in (0, 1):
            raise FacesynthError(f"{path}: issame entry #{i} is {flag!r}, expected a boolean")
        flags.append(bool(flag))
    return VerificationSet(name or path.stem, sources, np.array(flags, dtype=bool), origin=str(path))


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + len(data).to_bytes(4, "little") + data


def _py2_uint8_array(data: bytes) -> bytes:
    """A 1-D uint8 numpy array the way Python 2 + numpy 1.x pickle it (protocol 2)."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01J"
        + len(data).to_bytes(4, "little")
        + b"\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        + b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89"
        + _py2_str(data)
        + b"tb"
    )


def _py2_pickle(bins: Sequence[bytes], issame: Sequence[bool], as_numpy: bool = False) -> bytes:
    """Protocol-2 opcodes as Python 2 writes them: images as ``str`` (BINSTRING), not ``bytes``,
    or as numpy arrays whose buffer is such a ``str``."""
    out = bytearray(b"\x80\x02](")
    for data in bins:
        out += _py2_uint8_array(data) if as_numpy else _py2_str(data)
    out += b"e](" + b"".join(b"\x88" if flag else b"\x89" for flag in issame) + b"e\x86."
    return bytes(out)


def write_bin(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    issame: Sequence[bool],
    variant: str = "bytes",
    image_format: str = "JPEG",
) -> Path:
    """Write a ``.bin`` benchmark (for tests and for packing one's own pairs).

    ``variant``: ``"bytes"`` (Python 3, images as ``bytes``), ``"numpy"`` (images as 1-D uint8
    arrays, the cv2.imencode output), ``"py2"`` (Python 2 ``str`` opcodes, like the public files) or
    ``"py2-numpy"`` (Python 2 + numpy 1.x pickling cv2.imencode arrays).
    """
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs")
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format=image_format, quality=95)
        encoded.append(buffer.getvalue())
    flags = [bool(f) for f in issame]
    if variant == "bytes":
        data = pickle.dumps((encoded, flags), protocol=pickle.HIGHEST_PROTOCOL)
    elif variant == "numpy":
        arrays = [np.frombuffer(e, dtype=np.uint8).copy() for e in encoded]
        data = pickle.dumps((arrays, flags), protocol=pickle.HIGHEST_PROTOCOL)
    elif variant in ("py2", "py2-numpy"):
        data = _py2_pickle(encoded, flags, as_numpy=variant == "py2-numpy")
    else:
        raise ValueError(f"variant must be 'bytes', 'numpy', 'py2' or 'py2-numpy', got {variant!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:  # a full disk leaves the previous file, never a truncated one
        handle.write(data)
    return path


# --------------------------------------------------------------------------------------------------
# LFW-style pairs.txt over image folders


def _find_image(root: Path, name: str, number: int, pairs_file: Path, line_no: int) -> Path:
    folder = root / name
    stem = f"{name}_{number:04d}"
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + ext), folder / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    if folder.is_dir():
        matches = sorted(p for p in folder.glob(stem + ".*") if p.is_file())
        if matches:
            return matches[0]
    raise FacesynthError(
        f"{pairs_file}:{line_no}: image {number} of {name!r} not found (looked for {folder / stem}.<ext>)"
    )


def load_pairs_folder(
    root: str | os.PathLike, pairs_file: str | os.PathLike | None = None, name: str | None = None
) -> VerificationSet:
    """Pairs listed in an LFW-format ``pairs.txt`` over ``root/<name>/<name>_<nnnn>.<ext>`` images.

    Every referenced file must exist; a missing one is an error naming it and its line.
    """
    root = Path(root)
    pairs_path = Path(pairs_file) if pairs_file is not None else root / "pairs.txt"
    if not pairs_path.is_file():
        raise FacesynthError(f"{pairs_path}: pairs file not found")
    lines = pairs_path.read_text(encoding="utf-8").splitlines()
    sources: list[bytes | Path] = []
    issame: list[bool] = []
    for line_no, raw in enumerate(lines, start=1):
        parts = raw.split()
        if not parts:
            continue
        if line_no == 1 and all(p.isdigit() for p in parts) and len(parts) <= 2:
            continue  # header: "folds pairs_per_fold" or a count
        try:
            if len(parts) == 3:
                a = _find_image(root, parts[0], int(parts[1]), pairs_path, line_no)
                b = _find_image(root, parts[0], int(parts[2]), pairs_path, line_no)
                same = True
            elif len(parts) == 4:
                a = _find_image(root, parts[0], int(parts[1]), pairs_path, line_no)
                b = _find_image(root, parts[2], int(parts[3]), pairs_path, line_no)
                same = False
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as exc:
            raise FacesynthError(
                f"{pairs_path}:{line_no}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {raw.strip()!r} ({exc})"
            ) from None
        sources += [a, b]
        issame.append(same)
    return VerificationSet(name or root.name, sources, np.array(issame, dtype=bool), origin=str(pairs_path))


def load_verification_set(spec: str | os.PathLike, name: str | None = None) -> VerificationSet:
    """A ``.bin`` file, a folder with ``pairs.txt``, or a ``pairs.txt`` file (images next to it)."""
    path = Path(spec)
    if path.suffix == ".bin":
        return load_bin(path, name)
    if path.is_dir():
        return load_pairs_folder(path, name=name)
    if path.is_file() and path.suffix == ".txt":
        return load_pairs_folder(path.parent, path, name=name or path.parent.name)
    if not path.exists():
        raise FacesynthError(f"{path}: benchmark not found (expected a .bin file or a folder with pairs.txt)")
    raise FacesynthError(f"{path}: not a benchmark (expected a .bin file or a folder with pairs.txt)")


def find_benchmarks(folder: str | os.PathLike, names: Sequence[str] = STANDARD_BENCHMARKS) -> list[Path]:
    """The ``<folder>/<name>.bin`` files that exist, in the order of ``names``."""
    folder = Path(folder)
    return [folder / f"{n}.bin" for n in names if (folder / f"{n}.bin").is_file()]
