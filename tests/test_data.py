import os
import numpy as np
import pytest
import torch

from common import data
from tests.conftest import needs_mnist


def test_data_root_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_root() == tmp_path.resolve()


def test_data_root_from_config_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("data_root: somewhere/else\n")
    monkeypatch.setattr(data, "REPO", tmp_path)
    assert data.data_root() == (tmp_path / "somewhere" / "else").resolve()
    (tmp_path / "config" / "config.yaml").write_text("scale: quick\n")
    assert data.data_root() == (tmp_path / "data").resolve()


def test_missing_dataset_error_names_it_the_paths_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist_m", "test")  # torchvision has no download for it: no network needed
    msg = str(err.value)
    assert "'mnist_m'" in msg and str(tmp_path / "empty" / "MNISTM" / "mnist_m_test.npz") in msg
    assert "REPLICATIONS_DATA" in msg and "To provide it" in msg


def test_checksum_mismatch_is_reported(monkeypatch, tmp_path):
    (tmp_path / "root" / "USPS").mkdir(parents=True)
    np.savez(tmp_path / "root" / "USPS" / "usps.npz", x_train=np.zeros((1, 16, 16, 1), np.uint8))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "root"))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="sha256"):
        data.load("usps", "train")


def test_unknown_dataset_and_split():
    with pytest.raises(KeyError, match="unknown data set"):
        data.load("imagenet", "train")
    with pytest.raises(KeyError, match="no split"):
        data.load("mnist", "validation")


@needs_mnist
def test_mnist_loads_as_uint8_tensors_and_normalises_per_batch():
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert len(test) == 10000 and test.y.dtype == torch.int64
    assert torch.bincount(test.y).tolist()[:3] == [980, 1135, 1032]  # the official test label counts
    xb = train.normalize(train.x[:512])
    assert xb.dtype == torch.float32 and abs(xb.mean().item()) < 0.2 and 0.8 < xb.std().item() < 1.2


@needs_mnist
def test_subset_keeps_metadata():
    sub = data.load("mnist", "test").subset(torch.arange(10))
    assert len(sub) == 10 and sub.num_classes == 10 and sub.mean == (0.1307,)


def test_a_flipped_byte_is_caught_with_a_warm_cache_and_the_same_size_and_mtime(monkeypatch, tmp_path):
    """Issue #28: the data are verified by content on every load, not by size and mtime."""
    import dataclasses

    path = tmp_path / "root" / "USPS" / "usps.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(range(256)) * 64)
    monkeypatch.setitem(data.REGISTRY, "usps", dataclasses.replace(
        data.REGISTRY["usps"], files={"USPS/usps.npz": data.sha256(path)}))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "root"))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    data.verify("usps")   # warm: hashed once
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(data.DataCorruptError, match="sha256"):
        data.verify("usps")
