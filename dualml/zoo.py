"""The model zoo, written once against the neutral layers: mlp, cnn, resnet18, transformer, forecaster.

Each model also says what input it takes (``input_spec``), which is what the parity suite,
benchmarks and the shape checks use. Attribute names follow torchvision / common hand-written
PyTorch code, so weights of such hand-written models import with ``dualml.import_native``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from . import layers as L
from .attention.forecaster import Forecaster
from .attention.positions import sinusoidal_positions
from .errors import ConfigError, not_allowed
from .module import Buffer, Module, ModuleList, Sequential


class MLP(Module):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        sizes = [in_features, *hidden]
        blocks = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            blocks += [L.Linear(a, b), L.ReLU()] + ([L.Dropout(dropout)] if dropout > 0 else [])
        self.flatten = L.Flatten()
        self.body = Sequential(*blocks)
        self.head = L.Linear(sizes[-1], num_classes)

    def forward(self, x):
        return self.head(self.body(self.flatten(x)))

    def input_spec(self, batch: int = 4) -> list[L.InputSpec]:
        return [L.InputSpec((batch, self.in_features))]


class CNNBody(Module):
    """The cnn's feature extractor (two Conv-BN-ReLU blocks, max-pool, global average): 8x8 images ->
    ``channels[1]`` features per sample. :class:`CNN` adds its head; DANN (``dualml.train.dann``) puts its
    label and domain heads on it. One class, so both name their weights alike (conv1, bn1, ...)."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        c1, c2 = channels
        self.out_features = c2
        self.conv1 = L.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(c1)
        self.conv2 = L.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(c2)
        self.relu = L.ReLU()
        self.pool = L.MaxPool2d(2)
        self.gap = L.AdaptiveAvgPool2d(1)
        self.flatten = L.Flatten()

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.flatten(self.gap(x))

    def forward(self, x):
        return self.features(x)


class CNN(CNNBody):
    """Small Conv-BN-ReLU net for 8x8 digits: two conv blocks, max-pool, global average, linear."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 10,
                 image_size: int = 8, dropout: float = 0.0) -> None:
        super().__init__(in_channels, channels)
        self.in_channels, self.image_size = in_channels, image_size
        self.dropout = L.Dropout(dropout)
        self.fc = L.Linear(channels[1], num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.features(x)))

    def input_spec(self, batch: int = 4) -> list[L.InputSpec]:
        return [L.InputSpec((batch, self.in_channels, self.image_size, self.image_size))]


class BasicBlock(Module):
    """ResNet basic block (torchvision naming: conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = L.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(planes)
        self.relu = L.ReLU()
        self.conv2 = L.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(planes)
        self.has_downsample = stride != 1 or inplanes != planes
        if self.has_downsample:
            self.downsample = Sequential(L.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                         L.BatchNorm2d(planes))

    def forward(self, x):
        identity = self.downsample(x) if self.has_downsample else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(Module):
    """Standard ImageNet-shaped ResNet-18 (7x7 stem, 4 stages of 2 basic blocks, 11.7M params).

    ``width`` is the first stage's channel count (64 is the standard model; the stages double it):
    a narrow one (8: 0.18M params) trains in seconds, for training-curve parity of the same topology."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: int = 64) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.conv1 = L.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = L.BatchNorm2d(width)
        self.relu = L.ReLU()
        self.maxpool = L.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", Sequential(BasicBlock(inplanes, planes, stride),
                                                      BasicBlock(planes, planes)))
            inplanes = planes
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.flatten = L.Flatten()
        self.fc = L.Linear(8 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def input_spec(self, batch: int = 2) -> list[L.InputSpec]:
        return [L.InputSpec((batch, self.in_channels, self.image_size, self.image_size))]


class Transformer(Module):
    """Encoder classifier: token embedding (or a linear projection of feature rows) + sinusoidal
    positions -> N encoder layers (padding-masked when ``pad_id`` is set) -> mean pool -> linear."""

    def __init__(self, vocab_size: int | None = 1000, in_features: int = 8, seq_len: int = 8,
                 d_model: int = 64, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 128,
                 num_classes: int = 10, dropout: float = 0.0, pad_id: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.in_features, self.seq_len, self.pad_id = vocab_size, in_features, seq_len, pad_id
        self.embed = L.Embedding(vocab_size, d_model) if vocab_size else L.Linear(in_features, d_model)
        self.pos = Buffer(sinusoidal_positions(seq_len, d_model))
        self.layers = ModuleList(*[L.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
                                   for _ in range(num_layers)])
        self.norm = L.LayerNorm(d_model)
        self.head = L.Linear(d_model, num_classes)

    def forward(self, x):
        F = self.F
        padding = (x == self.pad_id) if self.pad_id is not None else None
        h = F.add(self.embed(x), self.pos[: F.shape(x)[1]])
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.head(F.mean(self.norm(h), dim=1))

    def input_spec(self, batch: int = 4) -> list[L.InputSpec]:
        if self.vocab_size:
            low = 0 if self.pad_id is None else self.pad_id + 1
            return [L.InputSpec((batch, self.seq_len), "int64", low, self.vocab_size)]
        return [L.InputSpec((batch, self.seq_len, self.in_features))]


ZOO: dict[str, Callable[..., Module]] = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18, "transformer": Transformer,
                                     "forecaster": Forecaster}


def create_model(name: str, **params: Any) -> Module:
    """A zoo model from config: unknown names or parameters are errors that list what is allowed."""
    if name not in ZOO:
        raise ConfigError(not_allowed("model", name, ZOO))
    factory = ZOO[name]
    allowed = [p for p in inspect.signature(factory).parameters]
    for key in params:
        if key not in allowed:
            raise ConfigError(not_allowed(f"model.{key} (for model={name})", key, allowed).replace(
                f"={key} is not allowed", " is not a parameter"))
    try:
        return factory(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model={name}: {exc}") from exc
