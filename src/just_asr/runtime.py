"""Process-wide run-time settings: glibc's ``malloc`` thresholds (opt-in).

:func:`tune_malloc` keeps glibc's ``malloc`` from handing memory back to the kernel between training
steps. PyTorch's CPU tensors come from ``malloc``: with glibc's defaults, large buffers are
``mmap``-ed and unmapped when freed, and the heap's free top is returned to the kernel once it
passes a threshold that glibc raises to the largest ``mmap``-ed block freed so far. A loop whose
tensor shapes never change can settle below that point and page-fault the same memory in again (and
have the kernel zero it) on every step: the fixed-shape tiny step of ``benchmarks/train_step.py``
did, 1.9-6.5k minor page faults per ~100 ms step, and ran 1.05x (full RNN-T) and 1.18x (pruned)
faster with the settings below (medians of three rounds; ``base`` 1.23x).
Training on real batches, whose shapes vary, does not stay there: two steps on a larger batch first
took that loop to no faults at all, and the demo's ``fit`` ran as fast without the setting as with
it (``BENCHMARKS.md``, "The allocator"). So it is off by default; it makes the allocator's steady
state independent of the batches seen so far (fixed-length crops, a constant batch shape).

What it costs: memory freed after a peak (a long batch, a validation pass) stays with the process
instead of going back to the system. Free memory at the top of the heap is returned only beyond
the trim threshold, and free space inside the heap (or in a thread's arena) is kept as with glibc's
defaults. Each process tunes itself: forked data-loader workers inherit the setting, so the memory
that can stay behind is per process (ranks x (1 + workers)).

``JUST_ASR_MALLOC_TUNING=1`` makes ``just-asr fit``, ``decode`` and ``transcribe`` call it at
start-up (:func:`tune_malloc_for_command`, which prints a line when it then leaves malloc alone); a
direct call of :func:`tune_malloc` applies it unless ``JUST_ASR_MALLOC_TUNING=0``. It leaves
``malloc`` alone (the reason in :data:`applied`) when the environment already tunes it (the
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``MALLOC_MMAP_MAX_`` variables, ``GLIBC_TUNABLES`` with
``glibc.malloc`` entries) or preloads another allocator (``LD_PRELOAD`` with jemalloc, tcmalloc or
mimalloc), and on C libraries other than glibc. Processes started without a ``just-asr`` command
(``ddp_spawn`` ranks, data-loader workers started with ``spawn``/``forkserver``, your own scripts)
are not tuned unless they call :func:`tune_malloc` themselves.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import warnings
from collections.abc import Mapping

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
#: glibc's own environment settings of the same parameters: when any is set, the user's choice stands
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
#: substrings of ``LD_PRELOAD`` entries that replace malloc
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")

#: What the last :func:`tune_malloc` call did (``None`` until one ran), for logs and benchmarks.
applied: str | None = None


def malloc_tuning_switch(environ: Mapping[str, str] | None = None) -> bool | None:
    """``JUST_ASR_MALLOC_TUNING``: True for ``1``, ``true``, ``yes``, ``on``; False for ``0``, ``false``,
    ``no``, ``off`` (any case, spaces ignored); None when unset or empty.

    Raises:
        ValueError: any other value.
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    if value == "":
        return None
    raise ValueError(f"{ENV_VAR}={env.get(ENV_VAR)!r}: expected 1/0 (or true/false, yes/no, on/off)")


def malloc_set_by_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Why the environment's own malloc choice should stand (a short reason), or None."""
    env = os.environ if environ is None else environ
    named = [name for name in GLIBC_MALLOC_ENV if name in env]
    if named:
        return f"{', '.join(named)} set in the environment"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc tunables"
    preload = env.get("LD_PRELOAD", "").lower()
    for name in OTHER_ALLOCATORS:
        if name in preload:
            return f"LD_PRELOAD loads another allocator ({name})"
    return None


def _glibc():
    """glibc's ``mallopt`` as a ctypes function, or None (not Linux with glibc)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
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
    more page faults than the defaults). The mmap threshold goes first; it is the only one glibc can
    refuse (above its limit, which is lower on 32-bit systems or with huge-page heaps), and a refusal
    changes nothing, so this then warns and returns False. Returns True when applied; False, with the
    reason in :data:`applied`, when not (``JUST_ASR_MALLOC_TUNING=0``, the environment's own malloc
    settings, not glibc, or refused). The settings stay for the life of the process and are inherited
    by forked children (data-loader workers).

    Raises:
        ValueError: a size outside ``[0, 2**31)``, ``mmap_threshold`` over 32 MiB (glibc's limit on
            64-bit), or a bad ``JUST_ASR_MALLOC_TUNING`` value.
    """
    global applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold), ("top_pad", top_pad)):
        if not 0 <= value < 2**31:
            raise ValueError(f"tune_malloc: {name} must be in [0, 2**31), got {value}")
    if mmap_threshold > MMAP_THRESHOLD:
        raise ValueError(f"tune_malloc: mmap_threshold must be at most {MMAP_THRESHOLD} (glibc's limit), got {mmap_threshold}")
    if malloc_tuning_switch() is False:
        applied = f"malloc left alone ({ENV_VAR}={os.environ.get(ENV_VAR)})"
        return False
    reason = malloc_set_by_environment()
    if reason is not None:
        applied = f"malloc left alone ({reason})"
        return False
    mallopt = _glibc()
    if mallopt is None:
        applied = "malloc left alone (not glibc)"
        return False
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
        applied = f"malloc left alone (glibc refused M_MMAP_THRESHOLD={mmap_threshold})"
        warnings.warn(f"just_asr.runtime.tune_malloc: {applied}; glibc's defaults stay", RuntimeWarning, stacklevel=2)
        return False
    mallopt(_M_TRIM_THRESHOLD, trim_threshold)  # glibc accepts any value for these two
    mallopt(_M_TOP_PAD, top_pad)
    applied = (f"glibc malloc tuned: mmap threshold {mmap_threshold >> 20} MiB, trim threshold "
               f"{trim_threshold >> 20} MiB, top pad {top_pad >> 20} MiB")
    return True


def tune_malloc_for_command(command: str) -> bool:
    """At the start of ``just-asr COMMAND``: :func:`tune_malloc` when ``JUST_ASR_MALLOC_TUNING`` is
    on, nothing when it is off or unset. False (after printing a one-line error naming the command)
    when the variable has a value it does not understand: the command should then exit with status 2.
    True otherwise, tuned or not."""
    try:
        if malloc_tuning_switch() and not tune_malloc():
            print(f"just-asr {command}: {ENV_VAR}=1 but {applied}", file=sys.stderr)
    except ValueError as exc:
        print(f"just-asr {command}: error: {exc}", file=sys.stderr)
        return False
    return True
