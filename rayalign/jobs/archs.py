"""Model dimensions without downloading weights: what ``rayalign plan`` sizes memory from.

Hub ids resolve through a small table of published architectures; local paths through
their ``config.json``. Parameter names follow the Llama/Mistral/Qwen layout that
``transformers`` uses, so ``model.trainable_modules`` regexes and LoRA
``target_modules`` select exactly the parameters they would select in the real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rayalign.errors import UserError

#: Scored tokens whose vocabulary logits exist at once when rayalign computes response
#: log-probs with a plain output head (``rayalign.logprobs``); ``plan`` sizes memory with it.
HEAD_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class ModelDims:
    """A decoder-only transformer with SwiGLU MLPs (Llama, Mistral, Qwen2, SmolLM)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    source: str = ""

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the key (or value) projection: KV heads x head width (GQA)."""
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Linear in one decoder layer, by module name."""
        h, kv, i = self.hidden_size, self.kv_dim, self.intermediate_size
        return {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (h, kv),
            "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (h, i),
            "mlp.up_proj": (h, i),
            "mlp.down_proj": (i, h),
        }

    def named_parameters(self) -> list[tuple[str, int]]:
        """Every parameter name with its element count, as ``model.named_parameters()`` lists them."""
        h, kv = self.hidden_size, self.kv_dim
        params: list[tuple[str, int]] = [("model.embed_tokens.weight", self.vocab_size * h)]
        for layer in range(self.num_layers):
            prefix = f"model.layers.{layer}."
            for module, (fan_in, fan_out) in self.linear_shapes().items():
                params.append((f"{prefix}{module}.weight", fan_in * fan_out))
            if self.qkv_bias:
                params += [
                    (f"{prefix}self_attn.q_proj.bias", h),
                    (f"{prefix}self_attn.k_proj.bias", kv),
                    (f"{prefix}self_attn.v_proj.bias", kv),
                ]
            params += [
                (f"{prefix}input_layernorm.weight", h),
                (f"{prefix}post_attention_layernorm.weight", h),
            ]
        params.append(("model.norm.weight", h))
        if not self.tie_embeddings:
            params.append(("lm_head.weight", self.vocab_size * h))
        return params

    def num_parameters(self) -> int:
        """All parameters (embeddings, layers, final norm, untied head)."""
        return sum(count for _, count in self.named_parameters())


def _mistral(vocab: int = 32000) -> ModelDims:
    return ModelDims(4096, 32, 32, 8, 14336, vocab)


def _llama2(vocab: int = 32000) -> ModelDims:
    return ModelDims(4096, 32, 32, 32, 11008, vocab)


def _llama3() -> ModelDims:
    return ModelDims(4096, 32, 32, 8, 14336, 128256)


#: Published configs (config.json of each hub repo), lower-cased ids.
KNOWN_ARCHITECTURES: dict[str, ModelDims] = {
    "mistralai/mistral-7b-v0.1": _mistral(),
    "mistralai/mistral-7b-instruct-v0.1": _mistral(),
    "mistralai/mistral-7b-instruct-v0.2": _mistral(),
    "mistralai/mistral-7b-instruct-v0.3": _mistral(32768),
    "huggingfaceh4/mistral-7b-sft-beta": _mistral(),
    "huggingfaceh4/zephyr-7b-beta": _mistral(),
    "meta-llama/llama-2-7b-hf": _llama2(),
    "meta-llama/llama-2-7b-chat-hf": _llama2(),
    "pku-alignment/alpaca-7b-reproduced": _llama2(32001),
    "meta-llama/meta-llama-3-8b": _llama3(),
    "meta-llama/meta-llama-3-8b-instruct": _llama3(),
    "meta-llama/llama-3.1-8b": _llama3(),
    "meta-llama/llama-3.1-8b-instruct": _llama3(),
    "qwen/qwen2.5-0.5b-instruct": ModelDims(896, 24, 14, 2, 4864, 151936, True, True),
    "qwen/qwen2.5-1.5b-instruct": ModelDims(1536, 28, 12, 2, 8960, 151936, True, True),
    "qwen/qwen2.5-3b-instruct": ModelDims(2048, 36, 16, 2, 11008, 151936, True, True),
    "qwen/qwen2.5-7b-instruct": ModelDims(3584, 28, 28, 4, 18944, 152064, False, True),
    "huggingfacetb/smollm2-135m": ModelDims(576, 30, 9, 3, 1536, 49152, True),
    "huggingfacetb/smollm2-135m-instruct": ModelDims(576, 30, 9, 3, 1536, 49152, True),
    "huggingfacetb/smollm2-360m-instruct": ModelDims(960, 32, 15, 5, 2560, 49152, True),
    "huggingfacetb/smollm2-1.7b-instruct": ModelDims(2048, 24, 32, 32, 8192, 49152, True),
    # rayalign.modeling.models.build_tiny_model's defaults (vocab = its ~512-token local tokenizer)
    "tiny-random-llama": ModelDims(64, 2, 4, 2, 128, 512),
}

#: rayalign's built-in model names -> the hub architecture they are.
BUILTIN_ALIASES = {"smollm2-135m-instruct": "huggingfacetb/smollm2-135m-instruct"}


def dims_from_config_json(config: dict, source: str = "config.json") -> ModelDims:
    """Read the fields every Llama-family ``config.json`` has; missing ones are a clear error."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return ModelDims(
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", False))
            or config.get("model_type") == "qwen2",
            source=source,
        )
    except KeyError as exc:
        raise UserError(f"{source}: missing field {exc.args[0]!r}; cannot size the model") from exc


def resolve_dims(name_or_path: str) -> ModelDims:
    """Dimensions of a built-in name, a known hub id, or a local folder with config.json."""
    local = Path(name_or_path).expanduser()
    if (local / "config.json").is_file():
        config_file = local / "config.json"
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_file}: cannot read model config ({exc})") from exc
        return dims_from_config_json(config, source=str(config_file))
    key = BUILTIN_ALIASES.get(name_or_path.lower(), name_or_path.lower())
    if key in KNOWN_ARCHITECTURES:
        dims = KNOWN_ARCHITECTURES[key]
        return ModelDims(**{**dims.__dict__, "source": f"built-in table ({key})"})
    if local.exists() or name_or_path.startswith((".", "/", "~")):
        raise UserError(f"model {name_or_path!r}: no config.json there; cannot size the model")
    raise UserError(
        f"model {name_or_path!r}: dimensions unknown without downloading it; pass a local "
        f"folder with config.json, or a hub id from rayalign.jobs.archs.KNOWN_ARCHITECTURES "
        f"({len(KNOWN_ARCHITECTURES)} known, e.g. mistralai/Mistral-7B-v0.1)"
    )
