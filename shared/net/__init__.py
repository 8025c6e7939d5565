"""Listening sockets under a resource budget: connection caps per listener and per source address
(`limits.py`), and an accept loop that survives descriptor exhaustion (`listen.py`)."""
