"""A Ctrl-C that Python swallowed, handed over at the next safe place.

    interrupt.received()     # the SIGINT handler (`cli`): it raises KeyboardInterrupt, and remembers
    interrupt.deliver()      # at an epoch's end and between cells: raise it once more if it was lost
    interrupt.pending()      # the command line: a command that returns after a Ctrl-C was interrupted
    interrupt.quiet(hook)    # sys.unraisablehook: the swallowed Ctrl-C prints no "Exception ignored"
    with interrupt.deferred():   # a Ctrl-C that lands inside is raised when the block ends
        ...

Python raises a signal handler's exception wherever the main thread is. When that is a weakref
callback or a `__del__` (a SQLAlchemy connection being collected, say), the interpreter prints
"Exception ignored in ..." and goes on: the Ctrl-C is lost, and with the handler ignoring a second
one, the command would run to its end. So the handler remembers it; `deliver` raises
KeyboardInterrupt once at the next epoch's end (where a cell stops cleanly anyway), and the command
line reports a command that still returned as interrupted (exit 130). `quiet` wraps
`sys.unraisablehook` so that the swallowed KeyboardInterrupt prints no traceback: it is not lost,
only delivered later; every other unraisable exception goes to the hook as before.

`deferred` holds a Ctrl-C back from code that a KeyboardInterrupt raised half-way would leave
broken: Optuna's journal lock (`JournalFileSymlinkLock`) releases on any exception, so a Ctrl-C
that lands in its `release` after the rename unlinks twice and turns into a FileNotFoundError (the
trial fails with it, and the command says "error"), and one that lands while `acquire` waits
renames away the lock another process holds. With the signal sent to a whole process group (a
terminal's Ctrl-C) every search worker meets it, so one of them inside a journal append is likely.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_state = {"received": False, "delivered": False}


def received() -> None:
    """Called by the SIGINT handler, before it raises KeyboardInterrupt."""
    _state["received"] = True


def pending() -> bool:
    """Whether this process received a Ctrl-C."""
    return _state["received"]


def deliver() -> None:
    """Raise KeyboardInterrupt once, when a Ctrl-C was received: a no-op otherwise (a dictionary
    lookup). Once the handler's own exception got through, the process is closing down, and no
    epoch ends again to call this."""
    if _state["received"] and not _state["delivered"]:
        _state["delivered"] = True
        raise KeyboardInterrupt


def quiet(hook):
    """`sys.unraisablehook` that drops a KeyboardInterrupt this process received as a Ctrl-C (it is
    remembered, and `deliver`/`pending` hand it over) and passes anything else to `hook`."""

    def unraisable(info) -> None:
        if _state["received"] and info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            return
        hook(info)

    return unraisable


def reset() -> None:
    """Forget a Ctrl-C (a test that runs commands in its own process)."""
    _state.update(received=False, delivered=False)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a SIGINT that arrives inside the block until the block ends, then hand it to the
    handler that was in place (which raises KeyboardInterrupt). Only the main thread runs Python
    signal handlers: elsewhere, or when SIGINT is ignored or at its default, a no-op. Nests."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if held:
            handler(signal.SIGINT, None)
