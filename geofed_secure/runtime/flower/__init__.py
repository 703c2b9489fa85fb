"""The Flower driver (flwr 1.41): the project's round over Flower's Message API (issue 14, first slice).

- :mod:`.app`: :class:`~.app.FlowerLink` (the round's transport over a Flower ``Grid``), node discovery,
  :func:`~.app.run_federation` (the ServerApp's work), :func:`~.app.make_client_app`, :func:`~.app.make_server_app`;
- :mod:`.site`: :class:`~.site.Site`, one site's node kept in its own state directory between messages;
- :mod:`.local`: an in-process ``Grid`` that runs the real apps with Flower's serialisation (tests, one machine).

This package is the only place that imports ``flwr``.
"""
