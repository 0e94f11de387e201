"""A Ctrl-C that Python swallowed, handed over at the next safe place.

    interrupt.received()     # the SIGINT handler (`cli`): it raises KeyboardInterrupt, and remembers
    interrupt.deliver()      # at an epoch's end and between cells: raise it once more if it was lost
    interrupt.pending()      # the command line: a command that returns after a Ctrl-C was interrupted
    interrupt.quiet(hook)    # sys.unraisablehook: the swallowed Ctrl-C prints no "Exception ignored"

Python raises a signal handler's exception wherever the main thread is. When that is a weakref
callback or a `__del__` (a SQLAlchemy connection being collected, say), the interpreter prints
"Exception ignored in ..." and goes on: the Ctrl-C is lost, and with the handler ignoring a second
one, the command would run to its end. So the handler remembers it; `deliver` raises
KeyboardInterrupt once at the next epoch's end (where a cell stops cleanly anyway), and the command
line reports a command that still returned as interrupted (exit 130). `quiet` wraps
`sys.unraisablehook` so that the swallowed KeyboardInterrupt prints no traceback: it is not lost,
only delivered later; every other unraisable exception goes to the hook as before.
"""
from __future__ import annotations

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
