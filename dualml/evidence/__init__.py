"""Evidence for choosing and sizing: the side-by-side benchmark (bench), the decision matrix over its report
(decide), the memory estimate (estimate, activations) and the training-curve check (curves). Above compress,
onnx and train, below cli."""
