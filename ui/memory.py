"""Keeping the app's memory flat under load: per-session Gradio state released, the C heap bounded.

Measured with ``benchmarks/load.py`` and tracemalloc in the app process (benchmarks/RESULTS.md, "Load"):

- Gradio keeps a ``SessionState`` per browser session (a copy of every component's config and the
  last values shown, ~0.5 MB for this app) until 10,000 sessions exist, even after the page is
  closed (it only drops ``gr.State`` values, an hour later). ``release_session`` drops it, and the
  queue's per-session bookkeeping, when the page unloads.
- Most of the RSS growth was not live Python memory: Gradio runs callbacks, PNG encoding and
  streaming in many threads, and glibc gives each thread its own malloc arena (up to 8 per core)
  that keeps freed memory. ``limit_malloc_arenas`` caps them; ``trim_heap`` returns free pages.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["limit_malloc_arenas", "trim_heap", "release_session", "MALLOC_ARENAS"]

log = logging.getLogger(__name__)
MALLOC_ARENAS = 2  # glibc's default is 8 per core; 2 measured 70-100 MB lower RSS under load (2-core machine)
_M_ARENA_MAX = -8  # mallopt parameter from glibc's malloc.h


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only (not musl, macOS)


_LIBC = _libc()


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` (call before threads start); False where that is not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, int(n)))


def trim_heap() -> None:
    """Return free memory at the top and inside glibc's heaps to the system (``malloc_trim``); no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release_session(blocks, session_hash: str | None) -> None:
    """Forget what Gradio keeps for a closed browser session: its state and the queue's records of it."""
    if not session_hash:
        return
    holder = getattr(blocks, "state_holder", None)
    if holder is not None:
        with holder.lock:
            holder.session_data.pop(session_hash, None)
            holder.time_last_used.pop(session_hash, None)
    queue = getattr(blocks, "_queue", None)
    if queue is not None and not queue.pending_event_ids_session.get(session_hash):  # nothing of it still streams
        queue.pending_event_ids_session.pop(session_hash, None)
        queue.pending_messages_per_session.pop(session_hash, None)
