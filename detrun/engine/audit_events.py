"""The process's one audit hook: the few audit events detrun watches, routed to the sources that watch them.

`sys.addaudithook` cannot be undone, and CPython calls every hook at every audit event, `id()`
included, which torch calls several times a training step. So detrun adds one hook, once, that
returns after one dict lookup for each event no source watches; a source registers its handler
for the events it wants, and its handler decides whether a session is active.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

AuditHandler = Callable[[str, tuple[Any, ...]], None]

_handlers: dict[str, tuple[AuditHandler, ...]] = {}  # replaced, never changed in place: hooks run on any thread
_hook_added = False


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    handlers = _handlers.get(event)
    if handlers is None:
        return
    for handler in handlers:
        handler(event, args)


def watch_audit_events(events: Iterable[str], handler: AuditHandler) -> None:
    """Call `handler(event, args)` at each of `events` from now on (idempotent; the handler must never raise)."""
    global _hook_added
    for event in events:
        current = _handlers.get(event, ())
        if handler not in current:
            _handlers[event] = (*current, handler)
    if not _hook_added:
        sys.addaudithook(_dispatch)
        _hook_added = True
