"""GET /api/v1/health: the server answers and reaches its database."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from .api import admin

blueprint = Blueprint("health", __name__)


@blueprint.get("/api/v1/health")
async def health() -> Any:
    await admin().store.latest_seq()
    return {"databaseConnectivity": True}
