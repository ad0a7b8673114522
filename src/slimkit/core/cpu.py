"""Which int8 dot product this CPU's kernels use, and the int8 settings that stay exact on it.

Why it matters: every int8 backend slimkit drives (torch eager through fbgemm, PT2E
through oneDNN, ONNX Runtime through MLAS) multiplies uint8 activations by int8 weights.
With VNNI (``vpdpbusd``: AVX512-VNNI, AVX-VNNI) or AMX the four products of a group are
summed straight into int32: exact. Without it (plain AVX2 / AVX-512, e.g. AMD Zen 2, Intel
Skylake-SP) the kernels use ``vpmaddubsw``, which adds *adjacent pairs* of products into
int16 with saturation: ``255 * 127 * 2 = 64770 > 32767``, so large activations meeting large
weights are clipped (the error this costs is measured in docs/quantization.md). Weight codes in ``[-63, 63]`` keep every pair below the limit
(``2 * 255 * 63 = 32130``), at the price of one bit of weight precision.

This module is the one place that decides. :func:`int8_isa` reads the CPU flags
(``/proc/cpuinfo``, else torch's own helpers), honours the variables that force the
kernels to a lower ISA (``FBGEMM_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA`` /
``DNNL_MAX_CPU_ISA``: when they remove VNNI from a kernel, the settings must follow the
kernel, not the silicon) and an explicit override, ``SLIMKIT_INT8_ISA=vnni|avx2|auto``
(tests use it to exercise both choices on any machine). ONNX Runtime's MLAS has no such
switch: it always runs the silicon's kernels.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
import warnings
from typing import Any

OVERRIDE_ENV = "SLIMKIT_INT8_ISA"
# the variables that change which int8 kernels fbgemm / oneDNN run (checked empirically on
# a VNNI CPU: FBGEMM_ENABLE_INSTRUCTIONS=AVX2 or AVX512 makes fbgemm saturate; ATEN_CPU_CAPABILITY
# does not reach fbgemm's int8 GEMM and is therefore not read here)
FORCING_ENVS = ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_SHOWN_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_tile",
                "asimddp", "i8mm")
FULL_QMAX = 127  # int8 weight codes where the dot product accumulates in int32
SAFE_QMAX = 63  # 7-bit weight codes: 2 * 255 * 63 = 32130 < 32767, no int16 pair saturation


class Int8IsaWarning(UserWarning):
    """An int8 artifact was built for a CPU whose int8 dot product this one lacks."""


@dataclasses.dataclass(frozen=True)
class Int8Isa:
    """The int8 capability the kernels will use here, and why it was chosen.

    ``has_vnni``: u8 x s8 products accumulate in int32 (VNNI / AMX on x86, SDOT on ARM), so
    full 8-bit weight codes are exact; else 7-bit weight codes (``weight_qmax`` 63) and ONNX
    Runtime's ``session.x64quantprecision`` are used. ``source`` says what decided it
    (``cpu``, an override or a forcing variable).
    """

    name: str
    has_vnni: bool
    flags: tuple[str, ...]
    source: str
    cpu_model: str
    versions: tuple[tuple[str, str], ...]

    @property
    def weight_qmax(self) -> int:
        """Largest weight code magnitude the int8 backends should use on this CPU."""
        return FULL_QMAX if self.has_vnni else SAFE_QMAX

    @property
    def ort_precision_option(self) -> bool:
        """Whether ORT sessions need ``session.x64quantprecision=1`` (no VNNI on x86-64)."""
        return not self.has_vnni and _is_x86()

    def to_dict(self) -> dict[str, Any]:
        """JSON form for records, manifests and benchmark results."""
        return {"name": self.name, "has_vnni": self.has_vnni, "weight_qmax": self.weight_qmax, "source": self.source,
                "flags": list(self.flags), "cpu_model": self.cpu_model, "versions": dict(self.versions)}

    def line(self) -> str:
        """One line for reports: ``int8 ISA: avx512_vnni (exact 8-bit weights; cpu) on AMD EPYC ...``."""
        how = "8-bit weights" if self.has_vnni else "7-bit weights, ORT x64quantprecision"
        return f"int8 ISA: {self.name} ({how}; {self.source}) on {self.cpu_model}; flags: {' '.join(self.flags) or '-'}"


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[frozenset[str], str]:
    """The CPU's flags and model name from ``/proc/cpuinfo`` (empty on other systems)."""
    flags: set[str] = set()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "cpu model") and not model:
                    model = value.strip()
    except OSError:
        pass
    return frozenset(flags), model or platform.processor() or platform.machine()


def _torch_flags() -> set[str]:
    """Fallback when ``/proc/cpuinfo`` is unreadable: torch's private CPU helpers, where present."""
    import torch

    out: set[str] = set()
    for flag, fn in (("avx2", "_is_avx2_supported"), ("avx512f", "_is_avx512_supported"),
                     ("avx512_vnni", "_is_vnni_supported"), ("amx_int8", "_is_amx_tile_supported")):
        probe = getattr(torch.cpu, fn, None)
        try:
            if probe is not None and probe():
                out.add(flag)
        except Exception:  # noqa: BLE001 - a private helper changing shape must not break detection
            pass
    return out


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    out = []
    for pkg in ("torch", "onnxruntime", "torchao"):
        try:
            out.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            pass
    return tuple(out)


def _forced_without_vnni(env: dict[str, str]) -> str | None:
    """The forcing variable that takes VNNI away from a kernel, or None."""
    fb = env.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip().upper()
    if fb and "E1" not in fb:  # fbgemm: AVX2, AVX512, AVX512_256 lack VNNI; AVX512_E1(_256) has it
        return f"FBGEMM_ENABLE_INSTRUCTIONS={fb}"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        v = env.get(var, "").strip().upper()
        # oneDNN ISAs from AVX512_CORE_VNNI / AVX2_VNNI up (BF16, FP16, AMX, AVX10, ALL) have VNNI
        if v and v != "ALL" and not any(k in v for k in ("VNNI", "BF16", "FP16", "AMX", "AVX10")):
            return f"{var}={v}"
    return None


def int8_isa(env: dict[str, str] | None = None, flags: set[str] | frozenset[str] | None = None) -> Int8Isa:
    """Detect the int8 capability the kernels will use (``env``/``flags`` default to this process's).

    Order: ``SLIMKIT_INT8_ISA`` (``vnni`` / ``avx2``; ``auto`` or unset = detect), then a
    forcing variable that lowers a kernel below VNNI, then the CPU flags.
    """
    env = dict(os.environ) if env is None else env
    info_flags, model = _cpuinfo()
    if flags is None:
        flags = info_flags or frozenset(_torch_flags())
    shown = tuple(f for f in _SHOWN_FLAGS if f in flags)
    versions = _versions()
    override = env.get(OVERRIDE_ENV, "auto").strip().lower() or "auto"
    if override not in ("auto", "vnni", "avx2"):
        from .errors import ConfigError

        raise ConfigError(f"{OVERRIDE_ENV} must be one of auto, vnni, avx2; got {override!r}", key=OVERRIDE_ENV)
    if override != "auto":
        return Int8Isa(override, override == "vnni", shown, f"{OVERRIDE_ENV}={override}", model, versions)
    if _is_x86() or not flags.isdisjoint(VNNI_FLAGS + ("avx2",)):
        vnni = next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags), None)
        forced = _forced_without_vnni(env)
        if forced is not None:
            return Int8Isa("avx512" if "avx512f" in flags and "AVX512" in forced else "avx2", False, shown,
                           forced, model, versions)
        if vnni is not None:
            return Int8Isa(vnni, True, shown, "cpu", model, versions)
        return Int8Isa("avx512" if "avx512f" in flags else "avx2", False, shown, "cpu", model, versions)
    # ARM: SDOT (asimddp) accumulates in int32; without it qnnpack widens to int16 products first (exact)
    return Int8Isa("arm_dotprod" if "asimddp" in flags else platform.machine() or "other", True, shown, "cpu",
                   model, versions)


def weight_qmax() -> int:
    """The weight code magnitude int8 quantizers should use now (127, or 63 without VNNI)."""
    return int8_isa().weight_qmax


def weight_choice(weight_bits: str | int = "auto") -> tuple[int, dict[str, Any]]:
    """``(qmax, record entry)`` for a method's ``weight_bits`` (``"auto"``, 8 or 7): the weight code
    range to use and the CPU facts behind it, as the method's record keeps them."""
    isa = int8_isa()
    qmax = isa.weight_qmax if weight_bits == "auto" else (FULL_QMAX if weight_bits == 8 else SAFE_QMAX)
    return qmax, {**isa.to_dict(), "weight_qmax": qmax, "weight_bits": weight_bits}


def warn_if_poorer(built: dict[str, Any] | None, what: str) -> None:
    """Warn (:class:`Int8IsaWarning`) when ``what`` was built with 8-bit weight codes for a VNNI CPU
    and this one has no VNNI: its int8 kernels will saturate on large products."""
    if not built or int(built.get("weight_qmax", SAFE_QMAX)) <= SAFE_QMAX:
        return
    here = int8_isa()
    if here.has_vnni:
        return
    warnings.warn(
        f"{what} was quantized with 8-bit weight codes for an int8 dot-product CPU ({built.get('name')}); this one "
        f"runs int8 as {here.name} without VNNI, whose kernels add pairs of products into int16 and saturate: "
        "expect several times the int8 error (about 0.2 STS-B point on MiniLM). Re-run the quantize step here "
        "(it picks 7-bit weight codes) for exact kernels.",
        Int8IsaWarning, stacklevel=3)
