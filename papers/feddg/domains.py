"""The digit domains that stand in for FedDG's hospitals: one appearance per client, every image with its
stroke mask (segmentation) and its class (classification).

Shapes: N images, all 3 x 32 x 32 (MNIST-M's size): x uint8 [N, 3, 32, 32], mask bool [N, 1, 32, 32], y [N].

One rule for every mask: a pixel is stroke where the grey digit has any ink (grey > 0). MNIST-M (Ganin et
al. 2016) shows exactly these pixels of its MNIST digit, inverted over a BSDS500 patch (255 - patch), so its
mask is exact; the other domains use the same rule so that the label means the same thing everywhere.

- mnist: MNIST train images 0..29999, grey copied to 3 channels, zero-padded 2 px (28 -> 32, as MNIST-M).
- usps: USPS train then test (9,298); the 16 x 16 digit resized (bilinear) to 20 x 20, MNIST's digit box, then
  zero-padded 6 px to 32, grey copied to 3 channels; the mask is taken on the resized uint8 image.
- mnist_m: MNIST-M test (9,001, the store holds no train split). Image i is MNIST test image i (the store's
  labels equal MNIST's test labels 0..9000): its mask is MNIST test image i > 0, zero-padded 2 px. This
  alignment was checked: un-blending every MNIST-M image with that mask (255 - value inside) lowers its total
  variation, for all 9,001 images (mean 28.6 -> 18.8), the lowest of the masks tried (other pad offsets: 33
  to 36; MNIST > 1, > 10, > 50: 18.9, 21.0, 26.7; bilinear / nearest / area resizes 28 -> 32: 32.7 to 35.4).
- styled_mnist: MNIST train images 30000..59999 (disjoint from `mnist`), restyled by a low-frequency
  appearance change only: x = alpha ink + (1 - alpha) background, alpha = grey / 255, the background a linear
  colour ramp in a random direction between two warm colours, the ink a blue; all colours jittered per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common import data

DOMAINS = ("mnist", "usps", "mnist_m", "styled_mnist")
SIDE = 32
MNIST_HALF = 30_000                      # mnist uses MNIST train [0, 30000), styled_mnist [30000, 60000)
USPS_BOX = 20                            # MNIST's digit box (LeCun et al.: size-normalised to 20 x 20)
STYLE = {"ramp_from": (0.95, 0.85, 0.55), "ramp_to": (0.55, 0.30, 0.20), "ink": (0.15, 0.25, 0.70),
         "jitter": 0.1}


@dataclass(frozen=True)
class DigitDomain:
    """One domain's images uint8 [N, 3, H, W], stroke masks bool [N, 1, H, W] and classes int64 [N]."""

    name: str
    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "DigitDomain":
        return DigitDomain(self.name, self.x[index], self.mask[index], self.y[index])

    def to(self, device: torch.device | str) -> "DigitDomain":
        return DigitDomain(self.name, self.x.to(device), self.mask.to(device), self.y.to(device))


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (the scale the Fourier transform and the bank use)."""
    return x.float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] -> uint8, rounded."""
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def pad_to_side(grey: torch.Tensor) -> torch.Tensor:
    """Zero-pad square images [N, 1, s, s] to [N, 1, SIDE, SIDE], centred."""
    before = (SIDE - grey.shape[-1]) // 2
    after = SIDE - grey.shape[-1] - before
    return F.pad(grey, (before, after, before, after))


def mnist_pool(first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST train images [first, last) padded to 32: grey uint8 [N, 1, 32, 32] and classes [N]."""
    mnist = data.load("mnist", "train")
    return pad_to_side(mnist.x[first:last]), mnist.y[first:last]


def grey_pool(name: str, grey: torch.Tensor, y: torch.Tensor) -> DigitDomain:
    """A pool of grey digits uint8 [N, 1, 32, 32] (coloured after the draw), mask = any ink."""
    return DigitDomain(name, grey, grey > 0, y)


def mnist() -> DigitDomain:
    return grey_pool("mnist", *mnist_pool(0, MNIST_HALF))


def styled_mnist() -> DigitDomain:
    return grey_pool("styled_mnist", *mnist_pool(MNIST_HALF, 2 * MNIST_HALF))


def usps() -> DigitDomain:
    train, test = data.load("usps", "train"), data.load("usps", "test")
    grey = torch.cat([train.x, test.x]).float()                                            # [N, 1, 16, 16]
    box = F.interpolate(grey, size=(USPS_BOX, USPS_BOX), mode="bilinear", align_corners=False)
    grey = pad_to_side(box.round().clamp(0, 255).to(torch.uint8))                          # [N, 1, 32, 32]
    return grey_pool("usps", grey, torch.cat([train.y, test.y]))


def mnist_m() -> DigitDomain:
    images = data.load("mnist_m", "test")
    source = data.load("mnist", "test").x[:len(images)]                                   # aligned by index
    return DigitDomain("mnist_m", images.x, pad_to_side(source) > 0, images.y)


POOLS = {"mnist": mnist, "usps": usps, "mnist_m": mnist_m, "styled_mnist": styled_mnist}


def styled(grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Restyle grey digits uint8 [N, 1, S, S]: alpha-blend a jittered ink colour over a jittered two-colour
    linear ramp in a random direction per image. Returns uint8 [N, 3, S, S]."""
    n, side = len(grey), grey.shape[-1]

    def colour(base):                                                                      # [N, 3, 1, 1]
        jitter = (torch.rand(n, 3, generator=generator) * 2 - 1) * STYLE["jitter"]
        return (torch.tensor(base) + jitter).clamp(0, 1).view(n, 3, 1, 1)

    start, end, ink = colour(STYLE["ramp_from"]), colour(STYLE["ramp_to"]), colour(STYLE["ink"])
    theta = torch.rand(n, generator=generator) * 2 * torch.pi
    cos, sin = theta.cos().view(n, 1, 1, 1), theta.sin().view(n, 1, 1, 1)
    v, u = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    ramp = (cos * u + sin * v) / (cos.abs() + sin.abs())                     # [N, 1, S, S], in [-1, 1]
    background = start + (end - start) * (ramp + 1) / 2                                   # [N, 3, S, S]
    alpha = unit_float(grey)
    return to_uint8(alpha * ink + (1 - alpha) * background)


def coloured(drawn: DigitDomain, generator: torch.Generator) -> DigitDomain:
    """The drawn images as 3 channels: styled_mnist restyled, grey domains copied to 3 equal channels."""
    if drawn.name == "styled_mnist":
        x = styled(drawn.x, generator)
    else:
        x = drawn.x.expand(-1, 3, -1, -1).contiguous()
    return DigitDomain(drawn.name, x, drawn.mask, drawn.y)


def build_domain(name: str, n_train: int, n_test: int, seed: int) -> tuple[DigitDomain, DigitDomain]:
    """Domain `name` as disjoint (train, test) sets of n_train and n_test images, drawn without replacement
    from the domain's pool by a generator seeded with (seed, domain); styled_mnist's styles come from the same
    generator, after the draw."""
    if name not in DOMAINS:
        raise ValueError(f"unknown digit domain {name!r}; known: {', '.join(DOMAINS)}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train} and {n_test}")
    pool = POOLS[name]()
    if n_train + n_test > len(pool):
        raise ValueError(f"{name}: {n_train} + {n_test} images asked, the pool holds {len(pool)}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + DOMAINS.index(name))
    index = torch.randperm(len(pool), generator=generator)[:n_train + n_test]
    drawn = coloured(pool.subset(index), generator)
    return drawn.subset(torch.arange(n_train)), drawn.subset(torch.arange(n_train, n_train + n_test))
