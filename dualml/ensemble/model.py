"""``Ensemble``: members + a fitted combiner; predicts in process and exports one ONNX file."""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..onnx import ort
from ..onnx.export import compare, export_model, finalize
from ..version import __version__
from .combine import Combiner, confidence, fit_combiner, log_loss
from .members import Member, check_compatible
from .onnx_graph import merge


@dataclass
class Ensemble:
    """Members (each on its own backend) and the combiner that joins their probabilities."""

    members: list[Member]
    combiner: Combiner

    @classmethod
    def fit(cls, members: Sequence[Member], x_val: np.ndarray, y_val: np.ndarray, combiner: str = "soft",
            weights: Any = None, eta: float = 1.0, seed: int = 0) -> Ensemble:
        """Check the members fit together, then fit ``combiner`` on the validation split."""
        members = list(members)
        check_compatible(members)
        probs = np.stack([m.probabilities(x_val) for m in members])
        return cls(members, fit_combiner(combiner, probs, y_val, weights=weights, eta=eta, seed=seed))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.members[0].input_shape

    @property
    def regression(self) -> bool:
        """Gradient boosting's members output values (combined raw), the others class scores."""
        return self.combiner.kind == "sum"

    def member_probs(self, x: np.ndarray) -> np.ndarray:
        """[members, samples, classes]: each member's probabilities, computed on its own backend (a
        regression ensemble: each member's flattened raw outputs)."""
        return np.stack([m.outputs(x) if self.regression else m.probabilities(x) for m in self.members])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.combiner.combine(self.member_probs(x))

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Class, ``confidence`` (its combined probability), ``agreement`` (share of members whose
        argmax is that class) and ``probs`` per sample."""
        p = self.member_probs(x)
        combined = self.combiner.combine(p)
        return {**confidence(p, combined), "probs": combined}

    def score(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        out = self.predict(x)
        right = out["class"] == y
        unanimous = out["agreement"] == 1.0
        return {"acc": float(right.mean()), "log_loss": log_loss(out["probs"], y),
                "mean_confidence": float(out["confidence"].mean()), "mean_agreement": float(out["agreement"].mean()),
                "unanimous_share": float(unanimous.mean()),
                "acc_unanimous": float(right[unanimous].mean()) if unanimous.any() else float("nan"),
                "acc_split_vote": float(right[~unanimous].mean()) if (~unanimous).any() else float("nan")}

    def export(self, out: str | Path, sample: np.ndarray, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """One ONNX file with every member and the combiner. Each member is exported (and verified) by
        its own backend's exporter; the merged file is then run in ONNX Runtime on ``sample`` against
        :meth:`predict_proba`: ``max_abs`` is the largest probability difference."""
        sample = np.ascontiguousarray(sample.reshape((len(sample), *self.input_shape)).astype(np.float32))
        out = Path(out)
        zero = np.zeros((1, *self.input_shape), np.float32)
        k = self.member_probs(zero).shape[2]
        with tempfile.TemporaryDirectory(prefix="dualml-ensemble-") as tmp:
            files, exports = [], []
            for i, m in enumerate(self.members):
                f = Path(tmp) / f"m{i}.onnx"
                r = export_model(m.model, m.backend, m.weights, f, sample.reshape((len(sample), *m.input_shape)),
                                 metadata={"model": m.model_name})
                files.append(f)
                exports.append({"member": i, "backend": m.backend, "exporter": r["exporter"], "opset": r["opset"],
                                "vs_eager_max_abs": r["verification"]["max_abs"]})
            model = merge(files, [m.input_shape for m in self.members], self.input_shape, self.combiner, k)
            raw = Path(tmp) / "ensemble.onnx"
            import onnx

            onnx.save(model, str(raw))
            meta = {"dualml_version": __version__, "backend": "ensemble", "kind": "dualml-ensemble",
                    "combiner": self.combiner.kind, "output_kind": "values" if self.regression else "probabilities",
                    "members": ",".join(m.label for m in self.members),
                    "input": ort.INPUT_NAME, "output": ort.OUTPUT_NAME, **(metadata or {})}
            graph = finalize(raw, out, meta)
        got = ort.run(ort.session(out), sample)
        # probabilities: 1e-5 absolute (the bound). Regression values are in target units (mph ~60),
        # where float32's own spacing is ~4e-6: 1e-5 + 1e-6 relative leaves room for a few roundings
        check = compare(got, self.predict_proba(sample), atol=1e-5, rtol=1e-6 if self.regression else 0.0)
        return {"file": str(out), **graph, "members": exports, "verification": check}
