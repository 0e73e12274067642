"""Whether the server is ready to speak: its models loaded and warmed up (``/ready``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Readiness:
    models: list[str] = field(default_factory=list)
    warmed_up: bool = False
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.warmed_up and self.error is None
