"""The command-line tools: blocklayer-img, blocklayer-io, blocklayer-nbd, blocklayer-storage-daemon."""

import os as _os

# The tools use numpy for whole-table arithmetic, never for linear algebra: OpenBLAS's
# worker threads would only cost start-up time and spin on the second core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
