"""Training: the neutral loop (trainer), optimizers with one written meaning (optim), learning-rate schedules,
datasets and loaders (data). Above the core, below onnx/compress/evidence/cli; imports no framework."""
