"""Deployment through ONNX: the neutral export and verification (export), ONNX Runtime sessions (ort), INT8
through ONNX Runtime (int8) and the standard-library server (serve). Above train (samples come from its
datasets), below compress/evidence/cli; imports no framework."""
