"""lab — cross-lingual safety attacks, refusal detection and safety localization."""
import os as _os

# Tests, benchmarks and CLI runs on small shared CPUs are 10-100x faster with one torch thread;
# users on real hardware override with LAB_NUM_THREADS or OMP_NUM_THREADS.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
