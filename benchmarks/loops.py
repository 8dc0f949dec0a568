"""The event loop a benchmark server runs on, chosen as aiproxy's ``--loop`` chooses it (auto:
uvloop when installed), so that the floors and aiproxy are compared on the same loop."""

from __future__ import annotations

import asyncio

CHOICES = ("auto", "asyncio", "uvloop")


def new_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    if choice != "asyncio":
        try:
            import uvloop  # the same optional speed-up aiproxy uses when installed
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
