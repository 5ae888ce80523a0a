"""Leave-one-domain-out on the digit domains: one client per source domain, the unseen domain only tests
(`train_ELCFS.py --unseen_site`), and the amplitude bank the source clients share.

Shapes: N training images of all source clients together (client k's are the k-th block), K source clients,
T test images, 32 x 32 pixels.

Every domain draws the same (train, test) images from its pool for a seed, whichever domain is left out, so the
methods and the settings of a seed meet the same images. Images stay uint8 on the run's device; the network and
the Fourier transform see them as floats in [0, 1] (`normalize` with mean 0 and std 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.data import Dataset
from common.fl.engine import Federation
from papers.feddg.domains import DigitDomain, build_domain, unit_float
from papers.feddg.fourier import AmplitudeBank
from papers.feddg.losses import boundary_and_background

UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}   # x / 255: the scale of the bank and the transform
DIGIT_CLASSES = 10


def as_dataset(domain: DigitDomain, split: str, num_classes: int) -> Dataset:
    """A domain's images and digit classes as the engine's `Dataset`; num_classes is what the network outputs
    (1 mask channel for segmentation, 10 classes for classification)."""
    return Dataset(domain.name, split, domain.x, domain.y, UNIT["mean"], UNIT["std"], num_classes)


def concat(domains: list[DigitDomain], name: str) -> DigitDomain:
    return DigitDomain(name, *(torch.cat([getattr(d, f) for d in domains]) for f in ("x", "mask", "y")))


@dataclass
class DomainFederation(Federation):
    """The engine's federation plus what FedDG needs: the masks of the training and test images, the
    boundary / background rings of the training masks, the source domains' own test images ("seen") and the
    bank of the source clients' amplitude spectra."""

    masks: torch.Tensor | None = None          # bool [N, 1, H, W], the training images' stroke masks
    boundary: torch.Tensor | None = None       # bool [N, 1, H, W], mask - erode(mask)
    background: torch.Tensor | None = None     # bool [N, 1, H, W], dilate(mask, 5) - mask
    test_masks: torch.Tensor | None = None     # bool [T, 1, H, W], the unseen domain's
    seen: Dataset | None = None                # the source domains' test images
    seen_masks: torch.Tensor | None = None
    bank: AmplitudeBank | None = None
    client_domains: tuple[str, ...] = ()

    @classmethod
    def build(cls, cfg, seed: int, device: torch.device | str = "cpu") -> "DomainFederation":
        """Draw every domain (CPU, seeded), stack the source domains' training images by client, build the
        bank from a random `bank_fraction` of each client's images (the code's 1/8), then move everything to
        `device` once. Central: one client holding every source domain."""
        drawn = {d: build_domain(d, cfg.n_train, cfg.n_test, seed) for d in cfg.domains}
        sources = cfg.source_domains
        train = concat([drawn[d][0] for d in sources], "sources")
        seen = concat([drawn[d][1] for d in sources], "sources")
        unseen = drawn[cfg.unseen][1]
        sizes = [len(drawn[d][0]) for d in sources]
        starts = torch.tensor([0] + sizes, device="cpu").cumsum(0).tolist()
        parts = [torch.arange(a, b, device="cpu") for a, b in zip(starts[:-1], starts[1:])]   # CPU index sets
        if cfg.method == "central":
            parts = [torch.cat(parts)]
        bank = AmplitudeBank.build([unit_float(drawn[d][0].x) for d in sources], cfg.bank_fraction,
                                   torch.Generator().manual_seed(seed))
        boundary, background = boundary_and_background(train.mask)
        C = 1 if cfg.task == "segmentation" else DIGIT_CLASSES
        test = as_dataset(unseen, "test", C).to(device)
        return cls(cfg, seed, as_dataset(train, "train", C).to(device), test, parts, None, None, None,
                   masks=train.mask.to(device), boundary=boundary.to(device), background=background.to(device),
                   test_masks=unseen.mask.to(device), seen=as_dataset(seen, "test", C).to(device),
                   seen_masks=seen.mask.to(device),
                   bank=AmplitudeBank(bank.amplitudes.to(device), bank.sizes.to(device)),
                   client_domains=("+".join(sources),) if cfg.method == "central" else sources)
