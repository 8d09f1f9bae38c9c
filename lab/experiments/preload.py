"""What a worker process of `--workers N` needs before its first task, imported once by the forkserver
(`lab.experiments.parallel`): every worker is forked from that server with these modules loaded and the
default detector's per-language resources compiled, instead of importing torch, transformers, peft and TRL
and compiling the detector again in each spawned process (~6 s of CPU per worker here). Nothing here runs a
torch op or starts a thread, so forking from it is safe. Importing this module is its whole job; an error
here is left for the worker to meet and report (the server would only print a traceback)."""
from __future__ import annotations

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (their lazy modules load here)
    from peft import LoraConfig, PeftModel  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401
    from datasets import Dataset  # noqa: F401

    import lab.evaluate  # noqa: F401
    import lab.experiments  # noqa: F401
    import lab.train  # noqa: F401
    from lab.data import LANGS
    from lab.detect import detect_batch

    # the default detector compiles its resources per language on first use: once here, for every language
    detect_batch(["I can't help with that."] * len(LANGS), ["?"] * len(LANGS), list(LANGS))
except Exception:  # noqa: BLE001
    pass
