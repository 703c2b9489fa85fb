"""Backbone loading, local adapters, GeoLoRA/GeoDoRA on top of peft."""
