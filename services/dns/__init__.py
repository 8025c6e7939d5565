"""DNS server: authoritative for the tailnet's base domain and reverse zones, kept current from
the store's change log.

- ``zone.py``: the pure data (names → addresses, built from nodes, extra records, TXT values);
- ``txt.py``: the TXT values for ACME DNS-01, as the change log (or a read of the store) brings them;
- ``ratelimit.py``: per-source token buckets;
- ``resolver.py``: the sans-IO core, ``Resolver.handle(query, source=, now=, transport=)``;
- ``options.py``: what the server is told at start (`DnsOptions`, `DnsTuning`);
- ``service.py``: ``serve(options, store, *, task_status)``, the Trio UDP+TCP adapter.
"""
