"""SIGTERM, as batch schedulers and ``kill`` send it, handled like Ctrl-C.

Python turns SIGINT into ``KeyboardInterrupt``, so ``atomic_output`` and the engines'
``finally`` blocks remove their temporary files; SIGTERM would end the process on the
spot and leave them. Raising ``KeyboardInterrupt`` for SIGTERM gives both the same
clean-up and the same one-line exit (``geoseg: interrupted``, exit code 1).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        # A second SIGTERM must not cut the clean-up of the first one short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
