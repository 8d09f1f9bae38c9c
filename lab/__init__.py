"""lab — cross-lingual safety attacks, refusal detection and safety localization."""
import os as _os

# Tests, benchmarks and CLI runs on small shared CPUs are 10-100x faster with one torch thread;
# users on real hardware override with LAB_NUM_THREADS or OMP_NUM_THREADS.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS starts one thread per core for the detector's n-gram matmul (lab.detect.learned) and
# gains nothing at its shape: `tiered` ran 10,228 responses/s wall at 2 cores' CPU time vs 10,440/s on one
# thread (benchmarks/detector.py, 2026-12-03). One thread unless the user asks for more.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", _os.environ.get("OMP_NUM_THREADS", "1"))

__version__ = "0.1.0"
REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
