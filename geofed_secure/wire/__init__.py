"""What parties say to each other: typed, frozen messages and their canonical wire encodings.

This package sits below every role that speaks it (``node``, ``server``, the secure-aggregation protocols, the
runtime drivers and the audit), so the arrows only point down:

- :mod:`.round`: the round messages between server and nodes (:class:`~.round.RoundBroadcast`,
  :class:`~.round.NodeUpdate`, :class:`~.round.AggregateRelease`, :class:`~.round.FailureNotice`) in
  canonical safetensors.

The secure-aggregation protocols' own messages live in their packages (``secagg/masking/messages.py``,
``secagg/ckks/messages.py``).
"""
