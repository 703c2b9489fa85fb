"""geofed-secure: privacy-hardened federated learning over unpaired multimodal data."""

from importlib.metadata import PackageNotFoundError, version

from geofed_secure.errors import GeofedError

__all__ = ["GeofedError", "__version__"]

try:
    __version__: str = version("geofed-secure")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`: no metadata to read
    __version__ = "0+unknown"
