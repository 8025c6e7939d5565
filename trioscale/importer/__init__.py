"""Bringing a tailnet over from another control server into trioscale's store.

`headscale_db` reads a Headscale database (SQLite file or PostgreSQL) as plain rows and refuses a
layout it does not know; `headscale_records` turns those rows into trioscale's records (pure);
`apply` writes them into a Store, matching what is already there so a second run changes nothing,
and says what it brought and what it skipped.
"""
