"""Host helpers: the C library calls os lacks, malloc tuning, the writer thread."""
