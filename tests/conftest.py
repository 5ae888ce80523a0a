"""Shared fixtures: the data root (../shared/data unless $REPLICATIONS_DATA says otherwise)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
if not os.environ.get("REPLICATIONS_DATA") and SHARED_DATA.exists():
    os.environ["REPLICATIONS_DATA"] = str(SHARED_DATA)


def has_data(*names: str) -> bool:
    from common import data

    root = data.data_root()
    return all(all((root / rel).exists() for rel in data.REGISTRY[n].files) for n in names)


needs_mnist = pytest.mark.skipif(not has_data("mnist"), reason="MNIST files not under the data root")
needs_cifar = pytest.mark.skipif(not has_data("cifar10", "cifar100"), reason="CIFAR files not under the data root")
