"""FastAPI dependencies: the running bridge and its services, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fhir_bridge.runtime import Bridge


async def get_bridge(request: Request) -> Bridge:
    """The bridge this app serves (set by `create_app`).

    `async` though it awaits nothing: FastAPI runs a plain `def` dependency in a worker
    thread, a hop (and a wait for the GIL under load) every route would pay for nothing.
    """
    bridge: Bridge = request.app.state.bridge
    return bridge


BridgeDep = Annotated[Bridge, Depends(get_bridge)]
