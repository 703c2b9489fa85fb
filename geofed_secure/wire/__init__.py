"""What parties say to each other: typed, frozen messages and their canonical wire encodings.

This package sits below every role that speaks it (``node``, ``server``, the secure-aggregation protocols, the
runtime drivers and the audit), so the arrows only point down:

- :mod:`.codec`: what every wire family shares: id and digest checks, canonical JSON, the
  ``MAGIC | version | header length | header | body`` framing with its strict decoder, and the declarative
  field kinds (``SCHEMA = {field: kind}``) from which a message is checked, encoded and decoded.
- :mod:`.round`: the round messages between server and nodes (:class:`~.round.RoundBroadcast`,
  :class:`~.round.NodeUpdate`, :class:`~.round.AggregateRelease`, :class:`~.round.FailureNotice`) in
  canonical safetensors (their ids and digests checked by :mod:`.codec`).

The secure-aggregation protocols' own messages live in their packages (``secagg/masking/messages.py``,
``secagg/ckks/messages.py``), each a ``SCHEMA`` per message over :mod:`.codec`.
"""
