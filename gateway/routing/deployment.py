"""A deployment: one model at one provider."""

from __future__ import annotations

from dataclasses import dataclass

from providers import Provider


@dataclass(frozen=True, slots=True)
class Deployment:
    provider_name: str
    model: str  # the model's name at the provider
    provider: Provider
