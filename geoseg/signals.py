"""SIGTERM, as batch schedulers and ``kill`` send it, handled like Ctrl-C.

Python turns SIGINT into ``KeyboardInterrupt``, so ``atomic_output`` and the engines'
``finally`` blocks remove their temporary files; SIGTERM would end the process on the
spot and leave them. Within ``sigterm_interrupts`` both raise ``KeyboardInterrupt``, for
the same clean-up and the same one-line exit (``geoseg: interrupted``, exit code 1).

The exception is raised in Python code of geoseg or its libraries, never inside the
locks of ``threading`` and ``concurrent.futures`` (an exception there breaks the lock, and
the engine's reader thread with it): a signal that arrives there is raised a moment
later, once the main thread is out of them (or, when it stays there, blocked waiting).
"""

from __future__ import annotations

import concurrent.futures._base
import concurrent.futures.thread
import contextlib
import queue
import signal
import threading
from collections.abc import Iterator

#: Modules whose code must not be interrupted by an exception (their locks would break).
_UNSAFE_FILES = frozenset(
    module.__file__
    for module in (threading, queue, concurrent.futures._base, concurrent.futures.thread)
)
_RETRY_S = 0.02
_RETRIES = 10


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise ``KeyboardInterrupt`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"raised": False, "deferred": 0}

    def interrupt(signum, frame) -> None:
        if state["raised"] or (signum == signal.SIGALRM and not state["deferred"]):
            return  # a second signal must not cut the clean-up of the first one short
        in_lock = frame is not None and frame.f_code.co_filename in _UNSAFE_FILES
        # Found there time after time, the main thread is blocked waiting (a cluster's
        # results, a thread's end), where the exception is safe, as for Ctrl-C.
        if in_lock and state["deferred"] < _RETRIES:
            state["deferred"] += 1
            signal.setitimer(signal.ITIMER_REAL, _RETRY_S)  # again, out of the lock
            return
        state["raised"] = True
        raise KeyboardInterrupt

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    previous = {signum: signal.signal(signum, interrupt) for signum in handled}
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
