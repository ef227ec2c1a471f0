"""Process lifecycle: how an exporter learns that its process forked, is exiting, or is a multiprocessing worker
that is ending. Each hook holds the exporter weakly, so registering them never keeps an exporter alive.

- fork: `os.register_at_fork(after_in_child=...)` runs in the child before anything else of the child's.
- exit: an atexit hook, plus `interpreter_exiting()` for when that hook runs late. atexit is LIFO: an exporter
  created after its TracerProvider gets its hook run first; created before it, the provider's hook (flush and
  shutdown) runs first, and the exporter must notice the exit by itself.
- multiprocessing workers end with os._exit(): no atexit hook runs there, but multiprocessing's own finalizers
  do. A process started by multiprocessing clears the finalizers it inherited, then runs the callbacks of
  `util.register_after_fork`; the exporter registers its worker finalizer from there. A terminated worker runs
  neither: the journal of open runs covers it.

Called at construction (any thread) and from the hooks themselves; no state of its own.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from multiprocessing import util as multiprocessing_util
from typing import Any


def interpreter_exiting() -> bool:
    """True once the interpreter is past its last application thread: atexit hooks are running (whatever their
    order) or about to. The main thread is marked stopped before non-daemon threads are joined, so those must be
    gone too. Cheap while the main thread lives (one call)."""
    main = threading.main_thread()
    if main.is_alive():
        return False
    current = threading.current_thread()
    return not any(t is not main and t is not current and not t.daemon and t.is_alive() for t in threading.enumerate())


def register(
    owner: Any,
    *,
    after_fork_in_child: Callable[[Any], None],
    at_exit: Callable[[Any], None],
    at_worker_exit: Callable[[Any], None],
) -> None:
    """Call `after_fork_in_child(owner)` in a forked child, `at_exit(owner)` at interpreter exit and
    `at_worker_exit(owner)` when a multiprocessing worker ends normally -- for as long as `owner` lives."""
    ref = weakref.ref(owner)

    def call(hook: Callable[[Any], None]) -> Callable[[], None]:
        def run() -> None:
            target = ref()
            if target is not None:
                hook(target)

        return run

    def in_a_worker(_owner: Any) -> None:
        multiprocessing_util.Finalize(None, call(at_worker_exit), exitpriority=10)

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=call(after_fork_in_child))
    multiprocessing_util.register_after_fork(owner, in_a_worker)
    atexit.register(call(at_exit))
