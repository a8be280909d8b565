"""Device choice: "auto" (CUDA if available, else CPU; Apple MPS only when asked by name)."""
from __future__ import annotations

import functools
import platform
import warnings

import torch


def resolve_device(device=None) -> torch.device:
    if device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available; use --device cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("Apple MPS was requested but is not available")
    return dev


def native_bf16(device) -> bool:
    """True on a CPU with AMX tiles (native bfloat16 matrix units: convolutions run ~2-3x
    faster in bf16 there; elsewhere bf16 on the CPU is emulated and gains little)."""
    dev = torch.device(device)
    return dev.type == "cpu" and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision, device) -> str:
    """ "auto" -> "bf16" where :func:`native_bf16`, else "fp32"; "fp32" and "bf16" as given
    (with a warning for bf16 on a CPU without AMX, where it is emulated and slow)."""
    if precision in (None, "auto"):
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16(device):
        warnings.warn(f"bf16 was asked for on a CPU without AMX ({cpu_name()}): it is emulated there "
                      "(Param-Net training steps took 10x as long as in fp32 on an AVX2 CPU); use fp32")
    return precision


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name and the vector instructions torch uses on it, for benchmark
    reports (timings depend on both: "AMD EPYC (AVX2)", "Intel(R) Xeon(R) ... (AVX512, AMX)");
    read once per process."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    isa = [torch.backends.cpu.get_cpu_capability()] + (["AMX"] if native_bf16("cpu") else [])
    return f"{name} ({', '.join(isa)})"


def available_devices():
    """[(label, torch device string)] for a device chooser: Auto, each CUDA device, CPU."""
    out = [("Auto", "auto")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"CUDA {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    out.append(("CPU", "cpu"))
    return out
