"""The qcow2 format (docs/interop/qcow2.txt), split by concern.

- :mod:`.state`    the state of an open image (declared once) and the metadata
  operations every component shares
- :mod:`.layout`   every on-disk structure, parsed and built: header (fields by name),
  extensions, snapshot table entry, bitmap directory entry, table entries; limits and
  QEMU's open-time checks
- :mod:`.cache`    the bounded L2 / refcount-block cache and its write-back order
- :mod:`.refcount` refcounts, cluster allocation, refcount table growth, rebuild
- :mod:`.mapping`  guest -> host runs: L1/L2, subclusters, compressed descriptors
- :mod:`.alloc`    allocating and compressed writes (copy-on-write, range locks)
- :mod:`.zeroes`   zero clusters and discard
- :mod:`.copyrange` copy offloading: data runs passed on, allocated as a write
- :mod:`.overlap`  where the active metadata is, for the overlap check of guest writes
- :mod:`.resize`   grow/shrink, preallocation, backing file, emptying
- :mod:`.create`   new images laid out byte for byte as qemu-img lays them out
- :mod:`.repair`   who references what; the refcount rebuild of dirty images
- :mod:`.driver`   the BlockDriver: the table of operations (handing each to its
  component), open/close, reopen, reads, block status, information
- :mod:`.check`, :mod:`.snapshot`, :mod:`.bitmap`, :mod:`.amend`: check and repair,
  internal snapshots, persistent bitmaps, option amendment
"""
