"""Configuration reloaded without a restart: generations of the gateway, swapped atomically (switch.py)."""

from gateway.reload.generation import Generation, Reload
from gateway.reload.switch import ReloadableApp

__all__ = ["Generation", "Reload", "ReloadableApp"]
