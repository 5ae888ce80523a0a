"""The small networks the papers share, built by name through `build_model`.

Shapes: B batch, C channels, H x W image, K classes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

DENSE_MODELS: set[str] = set()
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, dense: bool = False):
    """Register a model builder under `name`; `dense`: it maps images to per-pixel logits [B, K, H, W]
    (segmentation) rather than to logits [B, K]."""
    def wrap(fn):
        MODELS[name] = fn
        if dense:
            DENSE_MODELS.add(name)
        return fn
    return wrap


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model for inputs [C, H, W] and K classes."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)


class MLP(nn.Module):
    """Fully connected net; optional LayerNorm after each hidden layer (gradient dropping's ablation)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, layer_norm: bool = False,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        layers, width = [nn.Flatten()], in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(activation())
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # [B, C, H, W] -> [B, K]
        return self.net(x)


@register_model("mlp")
def mlp(in_shape, num_classes, hidden=(512, 512), layer_norm=False):
    c, h, w = in_shape
    return MLP(c * h * w, tuple(hidden), num_classes, layer_norm)


@register_model("linear")
def linear(in_shape, num_classes):
    """Multinomial logistic regression (a single weight matrix): the tiny model of the engine's tests."""
    c, h, w = in_shape
    return MLP(c * h * w, (), num_classes)


class McMahanCNN(nn.Module):
    """CNN of McMahan et al. (2017), as FedNTD's `fedavgnet.py`: two 5x5 convs (32, 64), pool, FC 512, FC K."""

    def __init__(self, in_channels: int, side: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * (side // 4) ** 2, 512), nn.ReLU())
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):  # [B, C, H, W] -> [B, K]
        return self.classifier(self.fc(self.features(x)))


@register_model("cnn")
def mcmahan_cnn(in_shape, num_classes):
    return McMahanCNN(in_shape[0], in_shape[1], num_classes)


class LeNet(nn.Module):
    """LeNet-5 style: conv5(k1) pool conv5(k2) pool FC120 FC84 FC K; kernels (k1, k2) = (6, 16) as LeNet-5,
    (16, 32) as pFedHN's `CNNTarget`."""

    def __init__(self, in_channels: int, side: int, num_classes: int, kernels: tuple[int, int] = (6, 16)):
        super().__init__()
        k1, k2 = kernels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, k1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(k1, k2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        s2 = ((side - 4) // 2 - 4) // 2
        flat = k2 * s2 * s2
        self.fc = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x):
        return self.classifier(self.fc(self.features(x)))


@register_model("lenet")
def lenet(in_shape, num_classes):
    return LeNet(in_shape[0], in_shape[1], num_classes)


class FedGenCNN(nn.Module):
    """FedGen's MNIST net (`utils/model_config.py`): two stride-2 3x3 convs with BN, FC 784->32 (no
    activation: the latent z), FC 32->K. `features` gives z, `classifier` is the last layer."""

    def __init__(self, in_channels: int, side: int, num_classes: int, latent: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
            nn.Linear(16 * (-(-side // 4)) ** 2, latent))
        self.classifier = nn.Linear(latent, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("fedgen_cnn")
def fedgen_cnn(in_shape, num_classes, latent=32):
    return FedGenCNN(in_shape[0], in_shape[1], num_classes, latent)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) as FedDF's `pcode/models/resnet.py::ResNet_cifar`: conv3x3(16)-BN-ReLU, three
    stages of n blocks with 16/32/64 channels (strides 1/2/2), global average pool, FC K.
    depth 8 -> n = 1 (~78k parameters), depth 20 -> n = 3."""

    def __init__(self, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("resnet8")
def resnet8(in_shape, num_classes):
    return ResNetCifar(8, in_shape[0], num_classes)


@register_model("resnet20")
def resnet20(in_shape, num_classes):
    return ResNetCifar(20, in_shape[0], num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a dense state dict (or of any dict of tensors) as sent over the wire."""
    return sum(t.numel() * t.element_size() for t in state.values())
