"""FedDG's networks: the official 2-D U-Net (`networks/unet2d.py::Unet2D`) with instance norm, scaled to
digits, and its encoder as a classifier for the classification setting.

Shapes: B batch, C_in input channels, K output channels (masks) or classes, n the base width, H x W pixels.

Unet2D(c=3, n=16, norm='in', num_classes=2) has 5 levels (widths n, 2n, ..., 16n); `ConvD` is
[max-pool 2] conv3x3-norm, conv3x3-norm-ReLU, conv3x3-norm-ReLU, and `ConvU` is [conv3x3-norm-ReLU (not in
the first up block)], nearest x2 upsampling, conv1x1 (halving the width)-norm-ReLU, concatenation with the
skip, conv3x3-norm-ReLU; a 1x1 conv maps the last decoder map y1 (2n channels) to the K sigmoid outputs, and
y1 is the embedding the boundary loss pools. Instance norm is torch's default (no affine parameters, no
running statistics), so the model holds no buffers. BatchNorm is not offered: its running statistics would
average the clients' styles (so instance norm is not swapped for BN).
Our digits are 32 x 32, so `depth` (levels) defaults to 4 (32 -> 4 at the bottom) instead of 5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.models import register_model


def norm_layer(norm: str, channels: int) -> nn.Module:
    """`networks/unet2d.py::normalization`: 'instance' (the code's 'in', used) or 'group' ('gn',
    GroupNorm(1, C))."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be 'instance' or 'group' (BatchNorm is not offered, see the module "
                     f"docstring), got {norm!r}")


def conv_norm(cin: int, cout: int, norm: str, kernel: int = 3, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), norm_layer(norm, cout)]
    return layers + [nn.ReLU()] if relu else layers


class DownBlock(nn.Module):
    """`ConvD`: [max-pool 2], conv-norm, conv-norm-ReLU, conv-norm-ReLU (no ReLU after the first conv, as in
    the code)."""

    def __init__(self, cin: int, cout: int, norm: str, pool: bool):
        super().__init__()
        self.pool = pool
        self.body = nn.Sequential(*conv_norm(cin, cout, norm, relu=False), *conv_norm(cout, cout, norm),
                                  *conv_norm(cout, cout, norm))

    def forward(self, x):  # [B, cin, H, W] -> [B, cout, H', W'] (H' = H // 2 with pooling)
        return self.body(F.max_pool2d(x, 2) if self.pool else x)


class UpBlock(nn.Module):
    """`ConvU(planes)`: [conv3x3 2*planes -> planes], upsample, conv1x1 planes -> planes/2, concat the skip
    (planes/2 channels), conv3x3 planes -> planes. Upsampling goes to the skip's size (x2, or x2 + 1 after an
    odd size was pooled)."""

    def __init__(self, planes: int, norm: str, first: bool):
        super().__init__()
        self.pre = nn.Identity() if first else nn.Sequential(*conv_norm(2 * planes, planes, norm))
        self.reduce = nn.Sequential(*conv_norm(planes, planes // 2, norm, kernel=1))
        self.fuse = nn.Sequential(*conv_norm(planes, planes, norm))

    def forward(self, x, skip):  # x [B, planes (first) or 2 planes, h, w], skip [B, planes/2, H, W]
        up = F.interpolate(self.pre(x), size=skip.shape[-2:], mode="nearest")
        return self.fuse(torch.cat([skip, self.reduce(up)], 1))                    # [B, planes, H, W]


def encoder(in_channels: int, width: int, depth: int, norm: str) -> nn.ModuleList:
    """The `depth` down blocks, widths width * 2^i."""
    widths = [width * 2 ** i for i in range(depth)]
    return nn.ModuleList(DownBlock(cin, cout, norm, pool=i > 0)
                         for i, (cin, cout) in enumerate(zip([in_channels] + widths[:-1], widths)))


def kaiming_init(model: nn.Module) -> None:
    """`Unet2D.__init__`: convs kaiming_normal_(mode='fan_out', nonlinearity='relu'); biases torch's
    default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class FedDGUNet(nn.Module):
    """`Unet2D` with `depth` levels; returns logits [B, K, H, W] (apply the sigmoid outside), and with
    return_features=True also y1 [B, 2 width, H, W], the map the boundary loss pools."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, width: int = 16, depth: int = 4,
                 norm: str = "instance"):
        super().__init__()
        if depth < 2:
            raise ValueError(f"the U-Net needs depth >= 2 levels, got {depth}")
        self.down = encoder(in_channels, width, depth, norm)
        self.up = nn.ModuleList(UpBlock(width * 2 ** (i + 1), norm, first=i == depth - 2)
                                for i in reversed(range(depth - 1)))
        self.head = nn.Conv2d(2 * width, num_classes, 1)
        kaiming_init(self)

    def forward(self, x, return_features: bool = False):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        y = skips.pop()
        for block in self.up:
            y = block(y, skips.pop())                                   # the last gives y1 [B, 2 width, H, W]
        logits = self.head(y)                                                       # [B, K, H, W]
        return (logits, y) if return_features else logits


class FedDGEncoderNet(nn.Module):
    """Classification analogue: the U-Net's encoder (instance norm), then the last map flattened, a hidden
    layer of `hidden` units (ReLU: the embedding z the class-contrastive loss uses) and a linear head. Not
    global average pooling: after instance norm every channel has spatial mean 0 and variance 1, so its
    pooled ReLU says almost nothing about the digit (a pilot's loss barely moved in 8 rounds).
    Returns logits [B, K], and with return_features=True also z [B, hidden]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, depth: int = 3,
                 norm: str = "instance", side: int = 32, hidden: int = 128):
        super().__init__()
        self.down = encoder(in_channels, width, depth, norm)
        last = side // 2 ** (depth - 1)                                             # the last map's side
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(width * 2 ** (depth - 1) * last * last, hidden),
                                   nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        kaiming_init(self)

    def forward(self, x, return_features: bool = False):
        for block in self.down:
            x = block(x)
        z = self.embed(x)                                                           # [B, hidden]
        logits = self.head(z)                                                       # [B, K]
        return (logits, z) if return_features else logits


@register_model("feddg_unet", dense=True)
def feddg_unet(in_shape, num_classes, width=16, depth=4, norm="instance"):
    """Segmentation: `num_classes` is the number of sigmoid mask channels (1 for the digit strokes)."""
    return FedDGUNet(in_shape[0], num_classes, width, depth, norm)


@register_model("feddg_cnn")
def feddg_cnn(in_shape, num_classes, width=16, depth=3, norm="instance"):
    return FedDGEncoderNet(in_shape[0], num_classes, width, depth, norm, side=in_shape[-1])
