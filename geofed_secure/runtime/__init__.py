"""Drivers and wire-level pieces: typed messages, the transcript, the in-process simulator."""
