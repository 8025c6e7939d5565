"""What every service's `serve()` is handed: configuration, the open store, a logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trioscale.config import Config
    from trioscale.shared.store.base import Store


@dataclass
class ServiceContext:
    config: "Config"
    store: "Store"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("trioscale"))
    # Filled by services as they start, so others in the same process can find them
    # (e.g. the embedded DERP relay's bound ports for the DERP map, its counters for tests).
    registry: dict[str, Any] = field(default_factory=dict)
