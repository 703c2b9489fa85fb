"""Deprecated alias, kept only while ``geofed_secure/runtime/simulator.py`` still imports ``ModalityData`` from here.

The demo federation's loading moved to :mod:`geofed_secure.demo` (above ``data`` and ``encoders``); the container
:class:`ModalityData` lives in :mod:`geofed_secure.data.modality`. Import it from :mod:`geofed_secure.data`; delete
this file once nothing imports it.
"""

from geofed_secure.data.modality import ModalityData

__all__ = ["ModalityData"]
