"""The four zoo models written by hand in plain PyTorch, as a user would without dualml.

They exist as the reference side of ``dualml.import_native`` / ``export_native`` tests and of the
overhead benchmark: attribute names, structure and constructor defaults mirror ``dualml/zoo.py``
exactly, so their ``state_dict`` keys equal those of ``dualml.build(zoo_model, 'torch')``. Nothing
here imports dualml: a difference between these and the built models is a dualml difference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        sizes = [in_features, *hidden]
        blocks: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        self.flatten = nn.Flatten()
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.flatten(x)))


class CNN(nn.Module):
    """Small Conv-BN-ReLU net for 8x8 digits: two conv blocks, max-pool, global average, linear."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 10,
                 image_size: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(self.dropout(self.flatten(self.gap(x))))


class BasicBlock(nn.Module):
    """ResNet basic block, torchvision naming (conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """Standard ImageNet-shaped ResNet-18 (7x7 stem, 4 stages of 2 basic blocks, 11.7M params)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride),
                                                         BasicBlock(planes, planes)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos table of "Attention is all you need", [max_len, d_model], float32.

    Computed in float64 then rounded, like zoo.py, so the buffer is bit-identical to dualml's.
    """
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table.float()


class Transformer(nn.Module):
    """Encoder classifier: token embedding (or a linear projection of feature rows) + sinusoidal
    positions -> N ``nn.TransformerEncoderLayer`` (padding-masked when ``pad_id`` is set) -> mean
    pool -> linear."""

    def __init__(self, vocab_size: int | None = 1000, in_features: int = 8, seq_len: int = 8,
                 d_model: int = 64, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 128,
                 num_classes: int = 10, dropout: float = 0.0, pad_id: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.in_features, self.seq_len, self.pad_id = vocab_size, in_features, seq_len, pad_id
        self.embed = nn.Embedding(vocab_size, d_model) if vocab_size else nn.Linear(in_features, d_model)
        self.register_buffer("pos", sinusoidal_positions(seq_len, d_model), persistent=True)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                                                batch_first=True) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = (x == self.pad_id) if self.pad_id is not None else None
        h = self.embed(x) + self.pos[: x.shape[1]]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.head(self.norm(h).mean(dim=1))


HANDWRITTEN: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18, "transformer": Transformer}
