"""The whole ensemble as one ONNX graph: every member's export, one shared input, the combiner.

Each member is exported by the existing exporter of its own backend (``dualml.onnx.export.export_model``,
verified there against its eager model), so nothing about a member's graph is re-invented here. The
files are then merged: names prefixed per member (``m0/``, ``m1/``...), the one input ``input`` fed to
each member (through a Reshape when a member takes another sample shape, e.g. the cnn's [1, 8, 8]
beside the mlp's [64]), a Softmax per member (the exports output logits; a Flatten instead for gradient
boosting's regression members), and the combiner written as
ONNX nodes that compute what :class:`dualml.ensemble.combine.Combiner` computes in numpy.

One opset: torch's dynamo export is opset 18, paddle2onnx's at most 16; the lower ones are raised with
``onnx.version_converter`` to the highest (upgrading is what the converter supports well; lowering an
opset-18 graph to 16 would need torch's TorchScript exporter), and the IR version is the highest too.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..onnx import ort
from .combine import Combiner


def _same_opset(models: list[Any]) -> tuple[list[Any], int]:
    from onnx import version_converter

    def opset(m: Any) -> int:
        return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))

    target = max(opset(m) for m in models)
    return [m if opset(m) == target else version_converter.convert_version(m, target) for m in models], target


def merge(member_files: Sequence[str | Path], member_shapes: Sequence[tuple[int, ...]], input_shape: tuple[int, ...],
          combiner: Combiner, num_classes: int) -> Any:
    """The merged ``onnx.ModelProto`` (not yet finalized: ``dualml.onnx.export.finalize`` adds metadata,
    runs the checker and writes it)."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    models, target = _same_opset([onnx.load(str(f)) for f in member_files])
    nodes: list[Any] = []
    inits: list[Any] = []
    probs: list[str] = []
    domains: dict[str, int] = {}
    for i, (m, shape) in enumerate(zip(models, member_shapes, strict=True)):
        m = compose.add_prefix(m, f"m{i}/")
        g = m.graph
        own_in = next(v.name for v in g.input if v.name not in {t.name for t in g.initializer})
        if tuple(shape) == tuple(input_shape):
            nodes.append(helper.make_node("Identity", [ort.INPUT_NAME], [own_in], name=f"m{i}/feed"))
        else:
            inits.append(numpy_helper.from_array(np.array([-1, *shape], np.int64), f"m{i}/feed_shape"))
            nodes.append(helper.make_node("Reshape", [ort.INPUT_NAME, f"m{i}/feed_shape"], [own_in], name=f"m{i}/feed"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        if combiner.kind == "sum":  # regression outputs are combined as they are, one row per sample
            nodes.append(helper.make_node("Flatten", [g.output[0].name], [f"m{i}/probs"], axis=1, name=f"m{i}/flat"))
        else:
            nodes.append(helper.make_node("Softmax", [g.output[0].name], [f"m{i}/probs"], axis=-1,
                                          name=f"m{i}/softmax"))
        probs.append(f"m{i}/probs")
        for o in m.opset_import:
            if o.domain not in ("", "ai.onnx"):
                domains[o.domain] = max(domains.get(o.domain, 0), o.version)
    c_nodes, c_inits = combiner_nodes(combiner, probs, num_classes)
    graph = helper.make_graph(
        nodes + c_nodes, "dualml_ensemble",
        [helper.make_tensor_value_info(ort.INPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, *input_shape])],
        [helper.make_tensor_value_info(ort.OUTPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, num_classes])],
        inits + c_inits)
    opsets = [helper.make_opsetid("", target), *(helper.make_opsetid(d, v) for d, v in domains.items())]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = max(m.ir_version for m in models)
    return model


def combiner_nodes(combiner: Combiner, probs: list[str], k: int) -> tuple[list[Any], list[Any]]:
    """Nodes turning the members' probability tensors ``probs`` into ``output``, as ``combiner`` does.

    Votes (hard, samme): ArgMax -> OneHot (ties to the lowest class, like ``np.argmax``) -> x weight
    -> Sum. Weighted means (soft, weighted, logloss, adaptive): x weight -> Sum. Stacking: Concat
    (member-major, as ``combine.features``) -> MatMul -> Add -> Softmax. Gradient boosting (sum): x weight
    -> Sum -> Add offset, on the flattened raw outputs."""
    from onnx import helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    if combiner.kind == "stacking":
        assert combiner.stack is not None
        inits += [numpy_helper.from_array(combiner.stack.W.astype(np.float32), "stack/W"),
                  numpy_helper.from_array(combiner.stack.b.astype(np.float32), "stack/b")]
        nodes += [helper.make_node("Concat", probs, ["stack/x"], axis=1, name="stack/concat"),
                  helper.make_node("MatMul", ["stack/x", "stack/W"], ["stack/z"], name="stack/matmul"),
                  helper.make_node("Add", ["stack/z", "stack/b"], ["stack/logits"], name="stack/add"),
                  helper.make_node("Softmax", ["stack/logits"], [ort.OUTPUT_NAME], axis=-1, name="stack/softmax")]
        return nodes, inits
    m = len(probs)
    weights = combiner.weights if combiner.weights is not None else np.full(m, 1.0 / m)
    vote = combiner.kind in ("hard", "samme")
    if vote:
        inits += [numpy_helper.from_array(np.array([k], np.int64), "vote/depth"),
                  numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "vote/values")]
    terms = []
    for i, (p, w) in enumerate(zip(probs, weights, strict=True)):
        src = p
        if vote:
            nodes += [helper.make_node("ArgMax", [p], [f"m{i}/argmax"], axis=1, keepdims=0, name=f"m{i}/argmax"),
                      helper.make_node("OneHot", [f"m{i}/argmax", "vote/depth", "vote/values"], [f"m{i}/vote"],
                                       axis=-1, name=f"m{i}/onehot")]
            src = f"m{i}/vote"
        inits.append(numpy_helper.from_array(np.array(w, np.float32), f"m{i}/weight"))
        nodes.append(helper.make_node("Mul", [src, f"m{i}/weight"], [f"m{i}/weighted"], name=f"m{i}/mul"))
        terms.append(f"m{i}/weighted")
    if combiner.kind == "sum":
        inits.append(numpy_helper.from_array(np.array(combiner.offset, np.float32), "combine/offset"))
        nodes += [helper.make_node("Sum", terms, ["combine/total"], name="combine/sum"),
                  helper.make_node("Add", ["combine/total", "combine/offset"], [ort.OUTPUT_NAME], name="combine/add")]
        return nodes, inits
    nodes.append(helper.make_node("Sum", terms, [ort.OUTPUT_NAME], name="combine/sum"))
    return nodes, inits
