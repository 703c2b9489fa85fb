"""The Flower driver (flwr 1.41): the project's round over Flower's Message API (issue 14, first slice).

- :mod:`.app`: :class:`~.app.FlowerLink` (the round's transport over a Flower ``Grid``), node discovery,
  :func:`~.app.run_federation` (the ServerApp's work), :func:`~.app.make_client_app`, :func:`~.app.make_server_app`;
- :mod:`.site`: :class:`~.site.Site`, one site's node kept in its own state directory between messages;
- :mod:`.local`: an in-process ``Grid`` that runs the real apps with Flower's serialisation (tests, one machine);
- :mod:`.apps`: the deployable ``server_app`` / ``client_app``, configured by Flower's run and node configuration;
- :mod:`.sitedata`: a site's data source (the demo's, or a folder of encoded modalities);
- :mod:`.certs`, :mod:`.launch`, :mod:`.deploy`: ``geofed deploy`` (TLS certificates, a loopback deployment as
  separate processes, the command line).

This package is the only place that imports ``flwr``.
"""
