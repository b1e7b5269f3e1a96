"""The kit a municipality uses to receive deliveries from Gezondverzekerd.nl.

- ``municipality_kit.verify``: Standard Webhooks signature, timestamp and
  replay checks.
- ``municipality_kit.decrypt``: opening the HPKE-encrypted package with the
  municipality's private keys.
- ``municipality_kit.receiver``: a reference receiver on aiohttp.
- ``python -m municipality_kit``: ``keygen``, ``verify``, ``decrypt`` and
  ``serve`` on the command line.

The payload, the headers and the retry schedule are described in
``docs/municipality-integration.md``.
"""
