"""The store's operations, written once for both stores: one module per kind of record.

Each operation is a generator that yields requests (shared/store/ops/query.py) and receives their
results:

    row = yield One("SELECT ... WHERE id = ?", user_id)     # -> a row mapping or None
    rows = yield All("SELECT ...")                           # -> list of row mappings
    yield Exec("UPDATE ...")                                 # -> None
    yield Emit("user.created", {"id": 1})                    # -> the change's seq

and returns its result. SQL uses `?` placeholders and values in their Python form (bytes, str, int,
bool, datetime, tuple of str, dict); each store's driver converts the placeholders and values for
its database, runs the generator inside one transaction (for writes) and turns Emit into a
change-log row. The rules of the data (what must exist, what must be unique, what a change records)
live here, so both stores keep them alike; a broken rule is raised from inside as NotFound,
Conflict, TooLarge or StoreFull and rolls the transaction back.

An operation never does I/O itself, so it runs the same in SQLite's worker thread and on asyncpg's
connection, and a store may run it again from the start to retry.
"""
