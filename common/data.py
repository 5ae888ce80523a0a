"""Data-set registry: every image set held in memory as uint8 tensors, normalised per batch.

A data set is loaded from the *data root* (see `data_root`), verified (file sha256 and sample
counts), decoded into a cache of plain arrays (`.cache/data/*.npz`, never into the data root) and
from then on read in milliseconds. The cache is keyed by the data root and the files' checksums, and
the source files are verified by content on every load (a full sha256 of each file, whatever its size and
mtime), so a moved root or a damaged file is noticed even with a warm cache. Images are `uint8 [N, C, H, W]`,
labels `int64 [N]`;
`Dataset.normalize` turns a batch of them into floats on the fly, so no per-sample Python runs
in a training loop.

Storage follows `shared/data/MANIFEST.md`: MNIST and Fashion-MNIST as the original idx.gz files,
CIFAR-10/100 and MNIST-M as lossless WebP tiles (10x10 images of 32x32 per tile) in npz files,
USPS as an npz. Where the files are missing, torchvision's own download is used (MNIST,
Fashion-MNIST, CIFAR-10/100, USPS) into the cache; otherwise the error names the data set, the
paths searched and how to provide it.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
DATA_ENV = "REPLICATIONS_DATA"
CACHE_ENV = "REPLICATIONS_CACHE"


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not under the data root and could not be downloaded."""


class DataCorruptError(ValueError):
    """A data set's file does not match its checksum, or decodes to the wrong number of samples."""


class UnknownDataError(KeyError):
    """An unknown data set or split name."""

    __str__ = Exception.__str__


def data_root() -> Path:
    """The one data-root setting: $REPLICATIONS_DATA, else `data_root` in config/config.yaml, else data/."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    cfg = REPO / "config" / "config.yaml"
    if cfg.exists():
        value = (yaml.safe_load(cfg.read_text()) or {}).get("data_root")
        if value:
            path = Path(value).expanduser()
            return (path if path.is_absolute() else REPO / path).resolve()
    return (REPO / "data").resolve()


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV, REPO / ".cache" / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Dataset:
    """Images `x` uint8 [N, C, H, W] and labels `y` int64 [N], with the per-channel normalisation."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    @cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel mean and std as [1, C, 1, 1] tensors on the data's device, built once."""
        return tuple(torch.tensor(v, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
                     for v in (self.mean, self.std))

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 batch [B, C, H, W] -> float32, scaled to [0, 1] then standardised per channel."""
        mean, std = self._mean_std
        return (xb.float().div_(255.0) - mean) / std

    def subset(self, index: torch.Tensor | np.ndarray) -> "Dataset":
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return Dataset(self.name, self.split, self.x[index], self.y[index], self.mean, self.std,
                       self.num_classes)

    def to(self, device: torch.device | str) -> "Dataset":
        """The same images and labels on `device` (one copy; the run's batches are then cut there)."""
        if torch.device(device) == self.device:
            return self
        return Dataset(self.name, self.split, self.x.to(device), self.y.to(device), self.mean, self.std,
                       self.num_classes)


@dataclass(frozen=True)
class _Spec:
    """How to read one data set from the data root (`files` relative to it, with sha256)."""

    folder: str
    files: dict[str, str]
    counts: dict[str, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    download: Callable[[Path, str], tuple[np.ndarray, np.ndarray]] | None
    how_to_get: str


# ---------------------------------------------------------------- readers of the stored formats

def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped): magic, dims, then big-endian uint8 data."""
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _idx_reader(folder: str) -> Callable[[Path, str], tuple[np.ndarray, np.ndarray]]:
    def read(root: Path, split: str):
        prefix = "train" if split == "train" else "t10k"
        raw = root / folder / "raw"
        x = _read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")[:, None]
        y = _read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        return x, y
    return read


def _decode_webp_tiles(npz_path: Path) -> tuple[np.ndarray, dict]:
    """Lossless WebP tiles of g x g images of 32 x 32 px -> uint8 [N, 32, 32, 3] (MANIFEST.md)."""
    from PIL import Image

    z = np.load(npz_path)
    webp, offsets = z["webp"], z["offsets"]
    n, g = int(z["n_images"]), int(z["tile"])
    tiles = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        tile = np.asarray(Image.open(io.BytesIO(webp[start:stop].tobytes())).convert("RGB"))
        tiles.append(tile.reshape(g, 32, g, 32, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, 32, 32, 3))
    images = np.concatenate(tiles)[:n]
    return images, {k: z[k] for k in z.files if k not in ("webp", "offsets")}


def _read_cifar10(root: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = zip(*(_decode_webp_tiles(root / "CIFAR10" / "cifar-10-webp" / f"{n}.npz") for n in names))
    return np.concatenate(xs).transpose(0, 3, 1, 2), np.concatenate([i["labels"] for i in ys]).astype(np.int64)


def _read_cifar100(root: Path, split: str):
    x, info = _decode_webp_tiles(root / "CIFAR100" / "cifar-100-webp" / f"{split}.npz")
    return x.transpose(0, 3, 1, 2), info["fine_labels"].astype(np.int64)


def _read_mnist_m(root: Path, split: str):
    x, info = _decode_webp_tiles(root / "MNISTM" / f"mnist_m_{split}.npz")
    return x.transpose(0, 3, 1, 2), info["labels"].astype(np.int64)


def _read_usps(root: Path, split: str):
    z = np.load(root / "USPS" / "usps.npz")
    return z[f"x_{split}"].transpose(0, 3, 1, 2), z[f"y_{split}"].astype(np.int64)


# ---------------------------------------------------------------- torchvision's download (real users)

def _torchvision_download(cls_name: str, split_arg: Callable[[str], dict]):
    def download(dest: Path, split: str):
        import torchvision

        ds = getattr(torchvision.datasets, cls_name)(str(dest), download=True, **split_arg(split))
        data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
        labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
        return data.astype(np.uint8), labels
    return download


def _train_flag(split: str) -> dict:
    return {"train": split == "train"}


_MNIST_HOWTO = "put the four original idx .gz files in <root>/{f}/raw/ (torchvision layout)"
_WEBP_HOWTO = "copy shared/data/{f}/ (lossless WebP npz files, see shared/data/MANIFEST.md) under <root>"

REGISTRY: dict[str, _Spec] = {
    "mnist": _Spec(
        "MNIST",
        {"MNIST/raw/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
         "MNIST/raw/train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
         "MNIST/raw/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
         "MNIST/raw/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
        {"train": 60000, "test": 10000}, 10, (0.1307,), (0.3081,),
        _idx_reader("MNIST"), _torchvision_download("MNIST", _train_flag), _MNIST_HOWTO.format(f="MNIST")),
    "fashion_mnist": _Spec(
        "FashionMNIST",
        {"FashionMNIST/raw/train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
         "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
         "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
         "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"},
        {"train": 60000, "test": 10000}, 10, (0.2860,), (0.3530,),
        _idx_reader("FashionMNIST"), _torchvision_download("FashionMNIST", _train_flag),
        _MNIST_HOWTO.format(f="FashionMNIST")),
    "cifar10": _Spec(
        "CIFAR10",
        {f"CIFAR10/cifar-10-webp/data_batch_{i}.npz": h for i, h in enumerate([
            "0dcb942dc8e6c71f2591f97ea92979a95b682ed6aa27683dde691de839e645cf",
            "cd4d13b92cc66d83e46a59433a350e030ae66b9bdae2873c5ccaab34d18dea1b",
            "c7ca920ca0a01bfb7958f2b2ca258cdbebf30453a072328206facd0a08617756",
            "c82a1efea688b3ac1c67ed9f54073ad370cf10e8eb32d6a18b8bbb022b6cf939",
            "6915f52e80f52f60586ce329d0e551354b75dc2d32e761dae7fff8f867e1839c"], start=1)}
        | {"CIFAR10/cifar-10-webp/test_batch.npz": "c0efcc38931bc76ed42baa703c6b4cfab4f1401d72254440dfc1a60eb542e3dc"},
        {"train": 50000, "test": 10000}, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        _read_cifar10, _torchvision_download("CIFAR10", _train_flag), _WEBP_HOWTO.format(f="CIFAR10")),
    # CIFAR-100 here: the full test set and a 10,000-image train subset (MANIFEST.md); a
    # torchvision download gives the full 50,000 under the split name "train".
    "cifar100": _Spec(
        "CIFAR100",
        {"CIFAR100/cifar-100-webp/train_subset.npz": "3824e5d70dac1fd9de318e6f1482cf4674914b1ca7317947f3530c82f1b892b2",
         "CIFAR100/cifar-100-webp/test.npz": "74c9beedb95b893e8953281703257b20f31f8a1eb532cc750143eb58ea3e9567"},
        {"train_subset": 10000, "test": 10000}, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        _read_cifar100, None, _WEBP_HOWTO.format(f="CIFAR100")),
    "mnist_m": _Spec(
        "MNISTM",
        {"MNISTM/mnist_m_test.npz": "3d26c57649cee819b2cc97d8ac356ee84fee2dad5c46e0646ef97fd258a75267"},
        {"test": 9001}, 10, (0.4639, 0.4676, 0.4199), (0.2534, 0.2380, 0.2618),
        _read_mnist_m, None, _WEBP_HOWTO.format(f="MNISTM")),
    "usps": _Spec(
        "USPS",
        {"USPS/usps.npz": "65ebfd44b1f0f2688577c15bfc518b0bc8bb158e8155827b518b43137feb3cca"},
        {"train": 7291, "test": 2007}, 10, (0.2469,), (0.2989,),
        _read_usps, _torchvision_download("USPS", _train_flag), "copy shared/data/USPS/usps.npz to <root>/USPS/"),
}


def sha256(path: Path) -> str:
    """The file's sha256, hex, read in 1 MiB chunks. The data are verified by content on every load with it (a
    flipped byte is caught even when the file's size and mtime were kept): 0.15 s for CIFAR-10's 99 MB, under
    0.06 s for each other data set (the README's Data paragraph)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, x=x, y=y)
    os.replace(tmp, path)


def verify(name: str) -> str:
    """Check that data set `name` is under the data root with the expected checksums; return the cache key
    (data root + checksums) its decoded arrays are stored under, or "download" when the files are not there
    and torchvision's download must be used. Raises DataCorruptError for a changed file."""
    spec = REGISTRY[name]
    root = data_root()
    present = [rel for rel in spec.files if (root / rel).exists()]
    if len(present) < len(spec.files):
        return "download"
    for rel, digest in spec.files.items():
        if sha256(root / rel) != digest:
            raise DataCorruptError(
                f"{name}: {root / rel} does not match its sha256 in shared/data/MANIFEST.md; the file is damaged "
                "or a different version: replace it with the original (check with python ../shared/data/check.py)")
    return hashlib.sha1((str(root) + "".join(sorted(spec.files.values()))).encode()).hexdigest()[:12]


def _decode(name: str, spec: _Spec, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    root = data_root()
    if key != "download":
        return spec.read(root, split)
    present = [rel for rel in spec.files if (root / rel).exists()]
    if spec.download is not None:
        try:
            return spec.download(cache_dir() / "downloads", split)
        except Exception as exc:  # no network, or the mirror is down
            reason = f"torchvision's download failed ({type(exc).__name__}: {exc})"
    else:
        reason = "torchvision has no download for it"
    missing = sorted(set(spec.files) - set(present))
    raise DataNotFoundError(
        f"data set {name!r} not found: missing {', '.join(str(root / m) for m in missing)} under the data root "
        f"{root} (set by ${DATA_ENV}, else data_root in config/config.yaml, else data/); {reason}. "
        f"To provide it: {spec.how_to_get.replace('<root>', str(root))}, or point ${DATA_ENV} at a folder "
        "that holds it (here: ../shared/data).")


def load(name: str, split: str) -> Dataset:
    """The data set `name` (a key of REGISTRY) and `split`, verified, from the array cache."""
    if name not in REGISTRY:
        raise UnknownDataError(f"unknown data set {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    if split not in spec.counts:
        raise UnknownDataError(f"data set {name!r} has no split {split!r}; splits: {', '.join(spec.counts)}")
    key = verify(name)
    cached = cache_dir() / f"{name}_{split}_{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            x, y = z["x"], z["y"]
    else:
        x, y = _decode(name, spec, split, key)
        x, y = np.ascontiguousarray(x, dtype=np.uint8), np.ascontiguousarray(y, dtype=np.int64)
        if len(x) != spec.counts[split] or len(y) != len(x):
            raise DataCorruptError(f"{name}/{split}: read {len(x)} images and {len(y)} labels, expected "
                                   f"{spec.counts[split]} of each: replace the files with the originals")
        if y.min() < 0 or y.max() >= spec.num_classes:
            raise DataCorruptError(f"{name}/{split}: labels outside 0..{spec.num_classes - 1}")
        _save_cache(cached, x, y)
    return Dataset(name, split, torch.from_numpy(x), torch.from_numpy(y), spec.mean, spec.std,
                   spec.num_classes)
