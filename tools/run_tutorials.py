"""Execute the tutorial notebooks with their own settings and save them with their outputs.

Run from the repository root: ``python tools/run_tutorials.py [NAME.ipynb ...]`` (default: all
of ``tutorials/``). The docs render the saved outputs without executing; the tests execute the
notebooks with a few epochs and do not save them. Tutorial 02 reads the Kang data from
``tutorials/data/``. Prints each notebook's wall time.
"""

import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

TUTORIALS = Path("tutorials")
names = sys.argv[1:] or sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(var, "1")
for name in names:
    path = TUTORIALS / name
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(TUTORIALS)}}
    ).execute()
    nbformat.write(nb, path)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
