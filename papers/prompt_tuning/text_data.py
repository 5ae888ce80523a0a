"""Text classification tasks from the store (<data root>/text, shared/data/MANIFEST.md "text"), read from
their original files, split, and tokenised once into cached tensors.

The paper trains on the SuperGLUE train splits and, as SuperGLUE test labels are private, reports the dev
(validation) sets, selecting checkpoints by early stopping on validation (Section 3). We do
the same: where a task has no labelled test split, its official dev/validation split is our test split, and a
validation split (VAL_FRACTION of train, drawn with the run's seed) is carved from train for model selection.
MR and SUBJ come as one unsplit pool: a test split (TEST_FRACTION) is carved with the fixed seed TEST_SEED, so
every run tests on the same sentences, then validation is carved from the rest with the run's seed.

    task   classes  train (before carving)        validation        test
    sst2   2        GLUE train.tsv 67,349         carved            GLUE dev.tsv 872 (GLUE test is unlabelled)
    mr     2        rt-polarity 10,662 - test     carved            carved, 1,066 (fixed seed)
    subj   2        SUBJ 10,000 - test            carved            carved, 1,000 (fixed seed)
    trec   6        train_5500.label 5,452        carved            TREC_10.label 500 (coarse labels)
    rte    2        SuperGLUE train 2,490         carved            SuperGLUE val 277
    cb     3        SuperGLUE train 250           carved            SuperGLUE val 56
    boolq  2        FewGLUE 32-shot train 32      FewGLUE dev32 32  SuperGLUE val 3,270

BoolQ's full train split (9,427) is not in the store, so BoolQ here is a 32-shot task (FewGLUE, disjoint from
the SuperGLUE val questions). Label names are the strings the official code's text-to-text targets use
(prompt_tuning/data/super_glue.py, glue.py; T5's "True"/"False" for BoolQ); they also seed the class-label
prompt initialisation. Sentence pairs (RTE, CB: premise, hypothesis; BoolQ: question, passage) are kept as
pairs and encoded with the tokenizer's own pair format.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.data import (DataCorruptError, DataNotFoundError, UnknownDataError, cache_dir,
                         data_root, sha256)

VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
TEST_SEED = 0

Inputs = list[str] | list[tuple[str, str]]


@dataclass(frozen=True)
class TextSplit:
    """Inputs (texts or text pairs) and int64 labels [N]."""

    inputs: Inputs
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TextTask:
    name: str
    label_names: tuple[str, ...]
    splits: dict[str, TextSplit]  # train, validation, test
    test_source: str


@dataclass(frozen=True)
class TokenizedSplit:
    """input_ids and attention_mask int64 [N, L], right-padded to the source's longest (<= max_length), and
    labels [N], on any device; lengths [N] (real tokens per row) is a NumPy array on the host, so cutting a
    batch reads nothing back from the device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "TokenizedSplit":
        return TokenizedSplit(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                              self.lengths)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows `index` (a CPU tensor of any shape [...]) trimmed to the longest example among them:
        input_ids and mask [..., t], labels [...]."""
        t = int(self.lengths[index.numpy()].max())
        rows = index.to(self.labels.device)
        return self.input_ids[rows, :t], self.attention_mask[rows, :t], self.labels[rows]

    def by_length(self, rows: torch.Tensor) -> torch.Tensor:
        """The permutation of `rows` [n] (CPU) that sorts them by length, shortest first (stable)."""
        return torch.from_numpy(np.argsort(self.lengths[rows.numpy()], kind="stable"))


# --------------------------------------------------------------------------------------------------- readers
def _lines(path: Path) -> list[str]:
    """One example per line; MR, SUBJ and TREC are latin-1 files (MANIFEST.md). Lines end at line feeds only:
    latin-1 byte 0x85 decodes to U+0085, which str.splitlines() would also take for a line break."""
    return [line.strip() for line in path.read_bytes().decode("latin-1").split("\n") if line.strip()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def _read_glue_tsv(path: Path, label_names) -> tuple[Inputs, list[int]]:
    rows = [line.split("\t") for line in path.read_text().split("\n")[1:] if line.strip()]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


def _read_two_files(first: str, second: str):
    """Label 0 for the lines of `first`, 1 for those of `second` (MR: neg, pos; SUBJ: plot, quote)."""
    def read(root: Path, label_names):
        a, b = _lines(root / first), _lines(root / second)
        return a + b, [0] * len(a) + [1] * len(b)
    return read


def _read_trec(path: Path, label_names) -> tuple[Inputs, list[int]]:
    """'DESC:manner How did serfdom develop ... ?' -> the question and its coarse class."""
    coarse = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    pairs = [line.split(" ", 1) for line in _lines(path)]
    return [q for _, q in pairs], [coarse.index(tag.split(":")[0]) for tag, _ in pairs]


def _read_superglue(first: str, second: str):
    """SuperGLUE jsonl: the pair (first, second) and the label's index in label_names (bools as text)."""
    def read(path: Path, label_names):
        rows = _jsonl(path)
        return [(r[first], r[second]) for r in rows], [label_names.index(str(r["label"])) for r in rows]
    return read


# sha256 of every file read, from shared/data/MANIFEST.md (paths relative to <data root>/text)
SHA256 = {
    "GLUE/SST-2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "GLUE/SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "rt-polaritydata/rt-polarity.neg": "4ace77d558c3714723843f1d65b60c01e3417b208180f0728808d76ad0eeeaca",
    "rt-polaritydata/rt-polarity.pos": "2da124ec187a9d5a29c9f04e91c540e02baed5af8868f550a26bd6fd4dbf8bf0",
    "SUBJ/plot.tok.gt9.5000": "5ddc9b44dc60d64d651347fcd7bdd489b0c70661e3f768215c16eea36f51204a",
    "SUBJ/quote.tok.gt9.5000": "73a2dcf8dc3cbcc7f068a70ef9f021c86b2a8e4dac81566b7fd015b3e938f2c5",
    "TREC/train_5500.label": "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
    "TREC/TREC_10.label": "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
    "SuperGLUE/RTE/train.jsonl": "fdfb03443abe3ec0424b7fc5d1a8863361719bc061338b7a63e56b94d615f201",
    "SuperGLUE/RTE/val.jsonl": "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1",
    "SuperGLUE/CB/train.jsonl": "32017480d3a10508646e3efd64502c639f13d4d15077f278d2fd0992c33a3126",
    "SuperGLUE/CB/val.jsonl": "c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec",
    "FewGLUE_32dev/BoolQ/train.jsonl": "317245ba0842129234a368274701dfc196139aa627eff44aefc827c6888935e1",
    "FewGLUE_32dev/BoolQ/dev32.jsonl": "0af324b658a72fdd7767aa3c27c1dfafbc03e8e987a148b29e42a72d84b9f9e3",
    "SuperGLUE/BoolQ/val.jsonl": "0c86a5045886e5795fe9052003873f7d94b88ed3028a33007c51d99e44fd66d9",
}


@dataclass(frozen=True)
class _Source:
    """A labelled set of examples: its files (relative to <data root>/text), count and reader."""

    files: tuple[str, ...]
    count: int
    read: Callable


@dataclass(frozen=True)
class TaskSpec:
    label_names: tuple[str, ...]
    sources: dict[str, _Source]
    train: str
    test: str | None  # None: carved from the train source with TEST_SEED
    validation: str | None  # None: carved from the train source with the run's seed
    test_source: str


def _one(rel: str, count: int, read) -> _Source:
    return _Source((rel,), count, lambda root, names: read(root / rel, names))


def _two(first: str, second: str, count: int) -> _Source:
    return _Source((first, second), count, _read_two_files(first, second))


_SUPERGLUE_TEST = "SuperGLUE validation, as the paper reports (test labels are private)"
_CARVED_TEST = f"{TEST_FRACTION:.0%} of the pool, seed {TEST_SEED} (no official split)"
_NLI = _read_superglue("premise", "hypothesis")
_QA = _read_superglue("question", "passage")
TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(("negative", "positive"),
                     {"train": _one("GLUE/SST-2/train.tsv", 67349, _read_glue_tsv),
                      "dev": _one("GLUE/SST-2/dev.tsv", 872, _read_glue_tsv)},
                     "train", "dev", None, "GLUE dev (GLUE test labels are private)"),
    "mr": TaskSpec(("negative", "positive"),
                   {"all": _two("rt-polaritydata/rt-polarity.neg", "rt-polaritydata/rt-polarity.pos", 10662)},
                   "all", None, None, _CARVED_TEST),
    "subj": TaskSpec(("objective", "subjective"),
                     {"all": _two("SUBJ/plot.tok.gt9.5000", "SUBJ/quote.tok.gt9.5000", 10000)},
                     "all", None, None, _CARVED_TEST),
    "trec": TaskSpec(("abbreviation", "description", "entity", "human", "location", "number"),
                     {"train": _one("TREC/train_5500.label", 5452, _read_trec),
                      "test": _one("TREC/TREC_10.label", 500, _read_trec)},
                     "train", "test", None, "the official TREC-10 test set"),
    "rte": TaskSpec(("entailment", "not_entailment"),
                    {"train": _one("SuperGLUE/RTE/train.jsonl", 2490, _NLI),
                     "val": _one("SuperGLUE/RTE/val.jsonl", 277, _NLI)},
                    "train", "val", None, _SUPERGLUE_TEST),
    "cb": TaskSpec(("entailment", "contradiction", "neutral"),
                   {"train": _one("SuperGLUE/CB/train.jsonl", 250, _NLI),
                    "val": _one("SuperGLUE/CB/val.jsonl", 56, _NLI)},
                   "train", "val", None, _SUPERGLUE_TEST),
    "boolq": TaskSpec(("False", "True"),
                      {"train": _one("FewGLUE_32dev/BoolQ/train.jsonl", 32, _QA),
                       "dev32": _one("FewGLUE_32dev/BoolQ/dev32.jsonl", 32, _QA),
                       "val": _one("SuperGLUE/BoolQ/val.jsonl", 3270, _QA)},
                      "train", "val", "dev32",
                      "SuperGLUE validation; train is FewGLUE's 32-shot set (full train not stored)"),
}


def _spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UnknownDataError(f"unknown text task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


# -------------------------------------------------------------------------------------------- read and split
def _verify(name: str, spec: TaskSpec) -> str:
    """Check every file of task `name` is under <data root>/text with its MANIFEST sha256; returns a key
    over the hashes."""
    root = data_root() / "text"
    files = {rel: SHA256[rel] for source in spec.sources.values() for rel in source.files}
    missing = [rel for rel in files if not (root / rel).exists()]
    if missing:
        raise DataNotFoundError(
            f"text task {name!r}: missing {', '.join(str(root / m) for m in missing)} under the data root "
            f"{data_root()} (set by $REPLICATIONS_DATA, else data_root in config/config.yaml): copy "
            "shared/data/text/ there (original files, see shared/data/MANIFEST.md)")
    for rel, sha in files.items():
        if sha256(root / rel) != sha:
            raise DataCorruptError(f"{root / rel} does not match its sha256 in shared/data/MANIFEST.md: "
                                   "replace it with the original (check with python ../shared/data/check.py)")
    return hashlib.sha1("".join(sorted(files.values())).encode()).hexdigest()[:12]


def verify_task(name: str) -> None:
    """Task `name`'s files are under the data root with their MANIFEST sha256 (one clear error otherwise)."""
    _verify(name, _spec(name))


def read_sources(name: str) -> dict[str, TextSplit]:
    """Every labelled source of task `name` as read from its files, verified (sha256, count, label range)."""
    spec = _spec(name)
    _verify(name, spec)
    root = data_root() / "text"
    out = {}
    for source_name, source in spec.sources.items():
        inputs, labels = source.read(root, list(spec.label_names))
        labels = np.asarray(labels, dtype=np.int64)
        if len(inputs) != source.count or len(labels) != source.count:
            raise DataCorruptError(
                f"{name}/{source_name}: read {len(inputs)} examples, expected {source.count}")
        if labels.min() < 0 or labels.max() >= len(spec.label_names):
            raise DataCorruptError(f"{name}/{source_name}: labels outside 0..{len(spec.label_names) - 1}")
        out[source_name] = TextSplit(inputs, labels)
    return out


def _carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random `fraction` of range(n) and the rest, both in their original order."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def split_indices(name: str, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """split -> (source, row indices into it) for train, validation and test."""
    spec = _spec(name)
    n_train = spec.sources[spec.train].count
    pool = np.arange(n_train)
    if spec.test is None:
        rest, test = _carve(n_train, TEST_FRACTION, TEST_SEED)
        pool, splits = rest, {"test": (spec.train, test)}
    else:
        splits = {"test": (spec.test, np.arange(spec.sources[spec.test].count))}
    if spec.validation is None:
        keep, val = _carve(len(pool), VAL_FRACTION, seed)
        splits |= {"train": (spec.train, pool[keep]), "validation": (spec.train, pool[val])}
    else:
        splits |= {"train": (spec.train, pool),
                   "validation": (spec.validation, np.arange(spec.sources[spec.validation].count))}
    return {k: splits[k] for k in ("train", "validation", "test")}


def _take(split: TextSplit, index: np.ndarray) -> TextSplit:
    return TextSplit([split.inputs[i] for i in index], split.labels[index])


def load_task(name: str, seed: int = 0) -> TextTask:
    """Task `name` (a key of TASKS) as train / validation / test TextSplits; `seed` draws validation."""
    spec = _spec(name)
    sources = read_sources(name)
    splits = {k: _take(sources[src], idx) for k, (src, idx) in split_indices(name, seed).items()}
    return TextTask(name, spec.label_names, splits, spec.test_source)


# ----------------------------------------------------------------------------------------- tokenise (cached)
def tokenizer_key(tokenizer) -> str:
    """A fingerprint of a tokenizer: its class, vocabulary and lower-casing."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    lower = getattr(tokenizer, "do_lower_case", None)
    return hashlib.sha1(f"{type(tokenizer).__name__}{lower}{vocab}".encode()).hexdigest()[:12]


def _tokenize(split: TextSplit, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    pairs = isinstance(split.inputs[0], tuple)
    args = ([a for a, _ in split.inputs], [b for _, b in split.inputs]) if pairs else (list(split.inputs),)
    enc = tokenizer(*args, truncation=True, max_length=max_length, padding="longest", padding_side="right",
                    return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.from_numpy(split.labels)}


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def tokenized_sources(name: str, tokenizer, max_length: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every source of task `name` tokenised (truncated to `max_length`), from the cache when there."""
    spec = _spec(name)
    folder = cache_dir() / "text"
    folder.mkdir(parents=True, exist_ok=True)
    key = f"{_verify(name, spec)}_{tokenizer_key(tokenizer)}_L{max_length}"
    paths = {source: folder / f"{name}_{source}_{key}.pt" for source in spec.sources}
    if all(p.exists() for p in paths.values()):
        return {source: torch.load(p, weights_only=True) for source, p in paths.items()}
    out = {}
    for source, split in read_sources(name).items():
        out[source] = _tokenize(split, tokenizer, max_length)
        _save(paths[source], out[source])
    return out


def tokenize_task(name: str, tokenizer, max_length: int, seed: int = 0) -> dict[str, TokenizedSplit]:
    """Task `name` tokenised once (cached under <cache root>/text/), split as `split_indices(name, seed)`."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    sources = tokenized_sources(name, tokenizer, max_length)
    out = {}
    for split, (source, index) in split_indices(name, seed).items():
        index = torch.from_numpy(index)
        tensors = sources[source]
        mask = tensors["attention_mask"][index]
        out[split] = TokenizedSplit(tensors["input_ids"][index], mask, tensors["labels"][index],
                                    mask.sum(1).numpy())
    return out
