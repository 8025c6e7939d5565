"""DNS server: authoritative for the tailnet's base domain and reverse zones, kept current from
the store's change log.

- ``zone.py``: the pure data (names → addresses, built from nodes, extra records, TXT values);
- ``txt.py``: the shared TXT table for ACME DNS-01 (``ctx.registry["dns_txt"]``);
- ``ratelimit.py``: per-source token buckets;
- ``resolver.py``: the sans-IO core, ``Resolver.handle(query, source=, now=, transport=)``;
- ``service.py``: ``serve(ctx, *, task_status)``, the Trio UDP+TCP adapter.
"""
