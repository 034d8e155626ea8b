"""The attention composites' parity cases (picked up by ``dualml.parity.default_cases``) and a tiny
encoder (``AttentionEncoder``) that uses them end to end, for the ONNX check and as an example."""
from __future__ import annotations

from .. import layers as L
from ..layers import InputSpec
from ..module import Module
from .forecaster import Forecaster
from .fusion import FUSIONS, fusion
from .positions import positional_encoding
from .variants import attention


class Padded(Module):
    """An attention layer on a batch whose keys are padded after per-sample ``lengths`` (an int
    input), so the padding mask is structured and no query's window is ever fully padded."""

    def __init__(self, attn: Module, cross: bool = False) -> None:
        super().__init__()
        self.attn, self.cross = attn, cross

    def forward(self, x, lengths, other=None):
        F = self.F
        kv = other if self.cross else x
        pad = F.unsqueeze(F.arange(F.shape(kv)[1]), 0) >= F.unsqueeze(lengths, 1)
        return self.attn(x, kv, kv, key_padding_mask=pad)


class Causal(Module):
    """An attention layer under a boolean causal ``attn_mask`` (True above the diagonal)."""

    def __init__(self, attn: Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x):
        F = self.F
        i = F.arange(F.shape(x)[1])
        return self.attn(x, attn_mask=F.unsqueeze(i, 0) > F.unsqueeze(i, 1))


class AttentionEncoder(Module):
    """Features [batch, L, in_features] -> Linear -> + positions -> attention + residual -> LayerNorm
    -> mean over L -> Linear. ``position`` is any encoding name, ``variant`` any attention variant."""

    def __init__(self, in_features: int = 4, seq_len: int = 6, d_model: int = 8, num_heads: int = 2,
                 variant: str = "full", position: str = "rotary", num_outputs: int = 3, **attn: object) -> None:
        super().__init__()
        self.in_features, self.seq_len = in_features, seq_len
        self.embed = L.Linear(in_features, d_model)
        inside = position in ("relative", "rotary")
        self.additive = not inside
        if self.additive:
            self.pos = positional_encoding(position, d_model, max_len=seq_len)
        self.attn = attention(variant, d_model, num_heads, position=position if inside else None,
                              max_len=seq_len, **attn)
        self.norm = L.LayerNorm(d_model)
        self.head = L.Linear(d_model, num_outputs)

    def forward(self, x):
        F = self.F
        h = self.embed(x)
        if self.additive:
            h = self.pos(h)
        h = self.norm(F.add(h, self.attn(h)))
        return self.head(F.mean(h, dim=1))

    def input_spec(self, batch: int = 2) -> list[InputSpec]:
        return [InputSpec((batch, self.seq_len, self.in_features))]


def attention_cases() -> list[tuple[str, Module, list[InputSpec]]]:
    """(label, model, inputs) for every encoding, attention variant and fusion block, tiny shapes."""
    x, y = InputSpec((2, 5, 8)), InputSpec((2, 7, 6))
    lengths = InputSpec((2,), "int64", 4, 7)   # keys 0..3 always valid: a window of 2 always sees one
    out = [
        ("attention:full-self", attention("full", 8, 2), [x]),
        ("attention:full-cross-kdim", attention("full", 8, 4, kdim=6, vdim=6, bias=False), [x, y, y]),
        ("attention:full-causal", Causal(attention("full", 8, 2)), [x]),
        ("attention:full-float-mask", attention("full", 8, 2), [x, x, x, InputSpec((5, 5), low=-2, high=2)]),
        ("attention:full-key-padding", Padded(attention("full", 8, 2)), [InputSpec((2, 6, 8)), lengths]),
        ("attention:local", attention("local", 8, 2, window=1), [x]),
        ("attention:local-key-padding", Padded(attention("local", 8, 2, window=2)), [InputSpec((2, 6, 8)), lengths]),
        ("attention:local-cross", attention("local", 8, 2, window=2, kdim=6, vdim=6), [x, y, y]),
        ("attention:linear-self", attention("linear", 8, 2), [x]),
        ("attention:linear-cross-padding", Padded(attention("linear", 8, 2, kdim=6, vdim=6), cross=True),
         [x, lengths, InputSpec((2, 6, 6))]),
        ("attention:relative", attention("full", 8, 2, position="relative", max_relative_position=2), [x]),
        ("attention:relative-causal", Causal(attention("full", 8, 2, position="relative",
                                                             max_relative_position=3)), [x]),
        ("attention:rotary", attention("full", 8, 2, position="rotary", max_len=8), [x]),
        ("attention:rotary-linear", attention("linear", 8, 2, position="rotary", max_len=8), [x]),
        ("attention:local-relative", attention("local", 8, 2, window=1, position="relative",
                                               max_relative_position=2), [x]),
        ("position:sinusoidal", positional_encoding("sinusoidal", 8, max_len=6), [x]),
        ("position:learnable", positional_encoding("learnable", 8, max_len=6), [x]),
        ("model:attention-encoder", AttentionEncoder(), AttentionEncoder().input_spec(2)),
        ("model:forecaster-rotary-cross_attn", forecaster := Forecaster(
            nodes=4, input_len=6, output_len=3, embed_dim=8, num_heads=2, temporal_depth_1=1, spatial_depth_1=2,
            temporal_depth_2=2, spatial_depth_2=1, fusion_type="cross_attn", positional_encoding_type="rotary"),
         forecaster.input_spec(2)),
    ]
    a, b = InputSpec((2, 5, 8)), InputSpec((2, 5, 6))
    for name in FUSIONS:
        if name == "cross_attn":
            out.append((f"fusion:{name}", fusion(name, 8, 6, fusion_heads=2), [a, InputSpec((2, 3, 6))]))
        else:
            out.append((f"fusion:{name}", fusion(name, 8, 6), [a, b]))
    out.append(("fusion:gated_residual-tanh", fusion("gated_residual", 8, gate="tanh"), [a, a]))
    return out
