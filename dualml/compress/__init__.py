"""Compression passes behind one interface, driven by ``configs/compress/*.yaml`` on either backend.

Neutral passes (structured/unstructured/N:M pruning, low-rank factorization, Conv+BN folding) act
on the neutral model and its canonical weights, so both backends get the identical result; the
framework tools (PaddleSlim, torch.nn.utils.prune / torch.ao) do the selection or quantization
where the issue asks for them, behind adapter methods.
"""
