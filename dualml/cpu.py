"""What the CPU offers and which kernel limits are in force: fp32 results depend on both (AVX2 vs
AVX512 kernels sum in other orders), so every report that holds fp32 figures names them."""
from __future__ import annotations

import os
from pathlib import Path

#: environment variables that restrict the frameworks' CPU kernels (see .ci/run's AVX2 leg)
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FLAGS_use_mkldnn")
_WIDEST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_flags() -> set[str]:
    """The flags line of /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe_cpu() -> dict[str, str]:
    """The vector extensions that change kernel choice, and the kernel limits set in this process."""
    flags = cpu_flags()
    limits = " ".join(f"{k}={os.environ[k]}" for k in KERNEL_LIMITS if k in os.environ)
    return {"cpu_flags": " ".join(f for f in _WIDEST if f in flags) or "?", "kernel_limits": limits or "none"}
