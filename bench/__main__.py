import os
import sys

# Neither rtdyld nor the peers call BLAS, but OpenBLAS starts a thread per core
# when numpy loads, whose wake-ups take CPU from the timed links on a small
# machine (and `rtdyld run` holds it to one thread, as set here).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .runner import main  # (after the variable, which numpy reads when it loads)

sys.exit(main())
