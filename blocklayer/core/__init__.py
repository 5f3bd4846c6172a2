"""The graph and the one request path: driver interface, nodes, open, create, chains, reopen, permissions, locking, accounting."""
