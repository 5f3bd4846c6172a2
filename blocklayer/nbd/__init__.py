"""NBD: the wire layouts, one sans-I/O protocol core for both sides, and the server.

- :mod:`.wire` — every on-wire structure, declared once (constants, parse and build).
- :mod:`.events` — what the protocol machine takes and gives (dataclasses).
- :mod:`.protocol` — the sans-I/O :class:`~.protocol.Connection` (client or server) and its
  state table.
- :mod:`.session` — the server core: answers options and requests from one node.
- :mod:`.server` — the asyncio adapter serving sessions on TCP and unix sockets.
"""
