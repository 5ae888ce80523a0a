"""The one device setting of a run: `auto | cpu | cuda | cuda:N`.

    python -m papers.feddf run ... --device cuda          # or --config device=cuda in the workflow
    dev = device.resolve("auto")                          # CUDA when present, else the CPU
    record.device = device.prepare(dev)                   # determinism on; what ran, for the run record

Data sets, models and every tensor of the hot loop live on that device; the random draws that choose batches,
clients and partitions stay on CPU generators, so a seed draws the same batches on any device (and CPU and GPU
runs differ only by float rounding). On CUDA, `prepare` turns on torch's deterministic algorithms (warn-only:
an op with no deterministic kernel warns instead of failing) and cuBLAS's fixed workspace, so the same seed on
the same GPU gives the same numbers.
"""
from __future__ import annotations

import os
import re

import torch

from common.experiments import ConfigError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve(spec: str) -> torch.device:
    """The device a setting names; one clear error when it names a GPU this machine does not have."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", spec):
        raise ConfigError(f"device must be {CHOICES}, got {spec!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but torch finds no CUDA GPU here (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}): use device=auto or device=cpu")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          "GPU(s): use cuda:0 .. cuda:N-1 or device=auto")
    return torch.device("cuda", index)


def prepare(device: torch.device) -> dict:
    """Determinism settings for `device` (before any CUDA work), and the description the run record keeps."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU: a verdict must not hang on TF32
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(device)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), deterministic_algorithms=True,
                    cublas_workspace_config=os.environ["CUBLAS_WORKSPACE_CONFIG"], tf32=False)
    else:
        info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    return info
