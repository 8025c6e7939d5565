"""What every /api/v2 route shares: the one blueprint, Tailscale's error shape for every refusal,
the tailnet name in the path, and reading a JSON body."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from trioscale.shared.domain.names import InvalidName
from trioscale.shared.store.base import Conflict, NotFound, StoreError, StoreUnavailable

from ..api import InvalidRequest, admin, parse_json_object
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


@blueprint.errorhandler(InvalidRequest)
async def _invalid(exc: InvalidRequest) -> Response:
    return error(400, str(exc))


@blueprint.errorhandler(Forbidden)
async def _forbidden(exc: Forbidden) -> Response:
    return error(403, str(exc))


@blueprint.errorhandler(InvalidName)
async def _invalid_name(exc: InvalidName) -> Response:
    return error(400, str(exc))


@blueprint.errorhandler(NotFound)
async def _not_found(exc: NotFound) -> Response:
    return error(404, str(exc) or "not found")


@blueprint.errorhandler(Conflict)
async def _conflict(exc: Conflict) -> Response:
    return error(409, str(exc) or "conflict")


@blueprint.errorhandler(StoreError)
async def _refused(exc: StoreError) -> Response:
    return error(400, str(exc) or "refused by the database")


@blueprint.errorhandler(StoreUnavailable)
async def _unavailable(exc: StoreUnavailable) -> Response:
    admin().log.warning("database unavailable: %s", exc)
    return error(503, "the database is unavailable")


@blueprint.errorhandler(HTTPException)
async def _http(exc: HTTPException) -> Response:
    resp = error(exc.code or 500, (exc.description or exc.name or "error").split("\n")[0])
    return resp
