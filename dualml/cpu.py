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


#: ``export.reduce_range`` values: ``auto`` decides from this CPU (:func:`int8_reduce_range`)
REDUCE_RANGE_CHOICES = ("auto", "true", "false")
#: flags of x86 CPUs whose int8 dot products accumulate in int32 (no int16 saturation)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """(7-bit weights needed?, why) for an INT8 file that will run on this CPU.

    x86 without VNNI multiplies u8 x s8 with ``vpmaddubsw``, which sums pairs into a *saturating*
    int16: full 8-bit weights overflow it (measured 2.8% of digits flipped on an AVX2 EPYC), 7-bit
    weights cannot. VNNI (``vpdpbusd``) and ARM's dot products accumulate in int32, so there the
    eighth bit is free precision (measured: argmax equal to fp32 on 100% of samples, half the logit
    error of 7 bits, same speed). Unknown x86 flags (no /proc/cpuinfo) take the safe 7 bits."""
    import platform

    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        vnni = [f for f in VNNI_FLAGS if f in flags]
        if vnni:
            return False, f"8-bit weights: this x86 CPU has {'/'.join(vnni)} (int32 accumulation, no saturation)"
        known = "flags unknown" if not flags else "no VNNI"
        return True, f"7-bit weights (reduce_range): this x86 CPU has {known}, so int8 products sum in saturating int16"
    return False, f"8-bit weights: {machine} is not x86 (its int8 dot products accumulate in int32)"


def int8_file_warning(reduce_range: str | None, flags: set[str] | None = None,
                      machine: str | None = None) -> str | None:
    """A warning when an INT8 file made with 8-bit weights (``reduce_range`` metadata ``"false"``) is
    about to run on a CPU where they saturate; None when the file suits this CPU or says nothing."""
    if reduce_range != "false":
        return None
    needed, why = int8_reduce_range(flags, machine)
    if not needed:
        return None
    return (f"this INT8 model was quantized with full 8-bit weights (reduce_range=false) for a CPU with VNNI; "
            f"on this CPU ({why.split(': ', 1)[1]}) its int8 kernels can saturate and lose accuracy: "
            "re-export with export.reduce_range=auto on this machine")
