"""The sandbox binding registry: a self-contained stand-in for the carrier/CAICT system, over its own SQLite file.

Synthetic people only; it must never be pointed at, or seeded with, real subscriber data.
"""

from integrations.sandbox_registry.app import REGISTRY_KEY, MaskingAccessLogger, SandboxRegistry, create_app
from integrations.sandbox_registry.population import DEMO_PHONE, POPULATION_VERSION, REFERENCE_DATE

__all__ = [
    "DEMO_PHONE",
    "POPULATION_VERSION",
    "REFERENCE_DATE",
    "REGISTRY_KEY",
    "MaskingAccessLogger",
    "SandboxRegistry",
    "create_app",
]
