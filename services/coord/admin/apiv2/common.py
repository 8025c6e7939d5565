"""What every /api/v2 route shares: the one blueprint, Tailscale's error shape for every refusal,
the tailnet name in the path, and reading a JSON body."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from trioscale.shared.store.base import NotFound

from ..api import admin, install_refusals, parse_json_object
from .auth import Forbidden, error

__all__ = ["blueprint", "body", "check_tailnet", "PREFIX"]

PREFIX = "/api/v2"

blueprint = Blueprint("apiv2", __name__)


def check_tailnet(tailnet: str) -> None:
    """`-` is the caller's tailnet (the only one here); its DNS name is taken too."""
    opts = admin().options
    base = getattr(getattr(opts, "dns", None), "base_domain", "") or ""
    if tailnet != "-" and (not base or tailnet.strip(".").lower() != base.strip(".").lower()):
        raise NotFound(f"tailnet {tailnet!r} not found (use - for this tailnet)")


async def body() -> dict[str, Any]:
    return parse_json_object(await request.get_data(as_text=False))


install_refusals(blueprint, error, extra=((Forbidden, 403, "forbidden"),))


@blueprint.errorhandler(HTTPException)
async def _http(exc: HTTPException) -> Response:
    resp = error(exc.code or 500, (exc.description or exc.name or "error").split("\n")[0])
    return resp
