"""Process-wide run-time settings the ``just-asr`` commands apply before they train or decode.

:func:`tune_malloc` keeps glibc's ``malloc`` from handing memory back to the kernel between training
steps. PyTorch's CPU tensors come from ``malloc``: with glibc's defaults, large buffers are
``mmap``-ed and unmapped when freed, and the heap's free top is returned to the kernel once it
passes a threshold that glibc sets from the sizes it has seen, so the same few hundred megabytes are
page-faulted in again (and zeroed by the kernel) on every step. On the tiny preset's benchmark step
that was about 6-8k minor page faults and 10-15 ms of kernel time per ~100 ms step; with the
settings below, a few dozen (``BENCHMARKS.md``, "The allocator"). The process's peak memory does not
change; what changes is that memory freed at the end of a step stays with the process for the next.

``just-asr fit``, ``decode`` and ``transcribe`` call it at start-up; set ``JUST_ASR_MALLOC_TUNING=0``
to leave glibc's defaults (e.g. to compare, or on a machine shared with memory-hungry jobs). Library
users can call it themselves. On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: ``mallopt`` parameter numbers (glibc's ``malloc.h``)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Allocations of this size and larger are ``mmap``-ed (glibc's upper limit for the threshold on 64-bit
#: systems, where its dynamic threshold ends up too). Smaller ones come from the heap and are reused.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap is given back to the kernel only beyond this.
TRIM_THRESHOLD = 512 * 1024 * 1024
#: Extra heap obtained whenever the heap grows (address space; pages become resident when touched).
TOP_PAD = 64 * 1024 * 1024

ENV_VAR = "JUST_ASR_MALLOC_TUNING"

#: What the last :func:`tune_malloc` call did (``None`` until one ran): a short description for logs.
applied: str | None = None


def malloc_tuning_wanted(environ: dict[str, str] | os._Environ | None = None) -> bool:
    """False when ``JUST_ASR_MALLOC_TUNING`` is ``0``, ``false``, ``no`` or ``off`` (any case), else True.

    Raises:
        ValueError: any other value but ``1``, ``true``, ``yes``, ``on`` or an empty string.
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("", "1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ENV_VAR}={env.get(ENV_VAR)!r}: expected 1/0 (or true/false, yes/no, on/off)")


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def tune_malloc(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD, top_pad: int = TOP_PAD
) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD`` and ``M_TOP_PAD`` (bytes) for this process.

    All three are set together: setting any of them turns off glibc's dynamic mmap threshold, and
    the trim threshold alone would then leave every allocation from 128 KiB up ``mmap``-ed (many
    more page faults than the defaults). Returns True when applied, False when not (not glibc, or
    ``JUST_ASR_MALLOC_TUNING=0``). The settings stay for the life of the process and are inherited
    by forked children (data-loader workers).

    Raises:
        ValueError: a negative size, ``mmap_threshold`` over 32 MiB (glibc refuses it), a bad
            ``JUST_ASR_MALLOC_TUNING`` value, or glibc refusing a value.
    """
    global applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold), ("top_pad", top_pad)):
        if not 0 <= value < 2**31:
            raise ValueError(f"tune_malloc: {name} must be in [0, 2**31), got {value}")
    if mmap_threshold > MMAP_THRESHOLD:
        raise ValueError(f"tune_malloc: mmap_threshold must be at most {MMAP_THRESHOLD} (glibc's limit), got {mmap_threshold}")
    if not malloc_tuning_wanted():
        applied = f"glibc malloc defaults kept ({ENV_VAR}={os.environ.get(ENV_VAR)})"
        return False
    mallopt = _glibc()
    if mallopt is None:
        applied = "not glibc: malloc left alone"
        return False
    for param, value, name in ((_M_MMAP_THRESHOLD, mmap_threshold, "M_MMAP_THRESHOLD"),
                               (_M_TRIM_THRESHOLD, trim_threshold, "M_TRIM_THRESHOLD"),
                               (_M_TOP_PAD, top_pad, "M_TOP_PAD")):
        if mallopt(param, value) != 1:
            raise ValueError(f"tune_malloc: glibc refused mallopt({name}, {value})")
    applied = (f"glibc malloc: mmap threshold {mmap_threshold >> 20} MiB, trim threshold {trim_threshold >> 20} MiB, "
               f"top pad {top_pad >> 20} MiB ({ENV_VAR}=0 keeps the defaults)")
    return True
