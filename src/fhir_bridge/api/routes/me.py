"""Who the caller is, as the API sees them: the web UI's sign-in check and its `coordinator`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fhir_bridge.api.auth import ROLES, Authenticator, Principal
from fhir_bridge.api.deps import BridgeDep

router = APIRouter(tags=["session"])


class MeOut(BaseModel):
    """The caller's identity, roles and queues."""

    subject: str = Field(description="the id to send as `coordinator` in task changes")
    roles: list[str]
    queues: list[str] | None = Field(description="the queues the caller may work; null = all")
    auth_enabled: bool = Field(description="false in the demo: everyone acts as `subject`")


@router.get("/me", response_model=MeOut, summary="The caller's identity, roles and queues")
def me(request: Request, bridge: BridgeDep) -> MeOut:
    """The credentials' subject and roles; with auth off, the configured demo user with every
    role (what the API then grants anyone)."""
    auth: Authenticator = request.app.state.auth
    if not auth.enabled:
        return MeOut(
            subject=bridge.settings.api.demo_user,
            roles=list(ROLES),
            queues=None,
            auth_enabled=False,
        )
    principal: Principal = request.state.principal
    queues = sorted(principal.queues) if principal.queues is not None else None
    return MeOut(
        subject=principal.subject,
        roles=sorted(principal.roles),
        queues=queues,
        auth_enabled=True,
    )
