"""geofed-secure: privacy-hardened federated learning over unpaired multimodal data."""

from geofed_secure.errors import GeofedError

__all__ = ["GeofedError", "__version__"]
__version__ = "0.1.0"
