"""The attack catalogue. Each attack takes a :class:`~geofed_secure.audit.views.View` (or values extracted from one)
and returns an :class:`~geofed_secure.audit.metrics.AttackResult`."""
