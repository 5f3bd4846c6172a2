"""``blocklayer-nbd``, a drop-in for qemu-nbd 7.2.

- :mod:`.args`: the command line, checked with qemu-nbd's messages;
- :mod:`.helptext`: ``--help`` and ``--version``;
- :mod:`.objects`: ``--object`` (secret, tls-creds-x509, authz-simple);
- :mod:`.listing`: ``-L``, listing another server's exports with the client machine;
- :mod:`.serve`: opening the image and serving it (listening, socket activation,
  ``--fork``, ``--pid-file``, ``-t``, ``-e``).
"""
from __future__ import annotations

from .main import main

__all__ = ["main"]
