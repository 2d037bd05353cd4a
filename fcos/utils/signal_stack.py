"""Keep the calling thread's alternate signal stack (``sigaltstack``) through code that replaces it.

OpenVINO's CPU plugin (2024-2026 releases) gives the thread that creates a plugin instance a new
alternate signal stack and, when the instance is destroyed, unmaps that stack and puts back the one
it replaced, but only if its own stack is still the current one. Two instances destroyed in the
order they were created (two compiled models garbage-collected in creation order, NNCF's temporary
``ov.Core`` objects) leave the thread's alternate stack pointing at memory that was unmapped. The
next signal handled on the alternate stack (Python installs its handlers with ``SA_ONSTACK``, e.g.
the SIGCHLD handler of Paddle's DataLoader, and faulthandler's SIGSEGV handler) cannot be delivered
and the kernel kills the process with SIGSEGV, with no traceback.

:func:`preserve_signal_stack` around the calls that may create such instances puts the thread's own
stack back afterwards, so no plugin's stack stays current and their destructors only unmap their
own, unused stacks. On systems without ``sigaltstack`` (not Linux/glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

_SS_DISABLE = 2  # <bits/ss_flags.h> on Linux


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> on Linux."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


_LIBC = _libc()


def current_signal_stack() -> Optional[tuple[int, int, int]]:
    """The calling thread's alternate signal stack as (address, size, flags); None where unsupported."""
    if _LIBC is None:
        return None
    stack = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(stack)) != 0:
        return None
    return int(stack.ss_sp or 0), int(stack.ss_size), int(stack.ss_flags)


def _set_signal_stack(address: int, size: int, flags: int) -> None:
    stack = _StackT(ctypes.c_void_p(address or None), flags & _SS_DISABLE, size)
    if _LIBC is not None and _LIBC.sigaltstack(ctypes.byref(stack), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sigaltstack could not restore the alternate signal stack: errno {err}")


@contextmanager
def preserve_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before."""
    before = current_signal_stack()
    try:
        yield
    finally:
        if before is not None and current_signal_stack() != before:
            _set_signal_stack(*before)
