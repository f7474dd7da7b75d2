"""Model loading: tiny offline models, the built-in GGUF model, secure defaults, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from rayalign.config import ModelConfig
from rayalign.errors import UserError
from rayalign.modeling.models import (
    build_tiny_model,
    enable_activation_checkpointing,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_dtype,
    resolve_model_path,
)


def test_tiny_model_loads_and_generates(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert model.dtype == torch.float32  # CPU policy
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_llama3_tiny_tokenizer_adds_bos(tiny_llama3_model_dir):
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama3_model_dir)))
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token == "<|eot_id|>"


def test_fingerprint_follows_the_weights(tmp_path, tiny_model_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    same = model_fingerprint(ModelConfig(name_or_path=str(copy)))
    assert same == model_fingerprint(ModelConfig(name_or_path=str(copy)))
    build_tiny_model(copy, seed=1)  # different random weights, same path
    assert model_fingerprint(ModelConfig(name_or_path=str(copy))) != same


def test_dtype_policy():
    assert resolve_dtype(ModelConfig(), "cpu") == torch.float32
    assert resolve_dtype(ModelConfig(dtype="bfloat16"), "cpu") == torch.bfloat16


def test_native_bf16_is_read_from_the_cpu_flags():
    from rayalign.modeling.models import cpu_has_native_bf16

    zen4 = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512vl\n"
    skylake = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512vl\n"
    sapphire = "flags\t\t: avx512f amx_tile amx_bf16\n"
    assert cpu_has_native_bf16(zen4) and cpu_has_native_bf16(sapphire)
    assert not cpu_has_native_bf16(skylake)
    assert not cpu_has_native_bf16("")  # no flags line (not Linux x86): stay fp32


def test_eval_dtype_changes_what_the_replica_loads_and_the_cache_key(tiny_model_dir):
    from rayalign.config import EvalConfig
    from rayalign.eval.runner import serving_model_config

    model = ModelConfig(name_or_path=str(tiny_model_dir))
    assert serving_model_config(model, EvalConfig()) is model  # auto: the model's own policy
    served = serving_model_config(model, EvalConfig(dtype="bfloat16"))
    assert served.dtype == "bfloat16" and served.name_or_path == model.name_or_path
    assert model_fingerprint(served) != model_fingerprint(model)  # the demo's eval cache key


def test_unknown_hub_id_fails_fast_and_plainly():
    with pytest.raises(UserError, match="Hugging Face Hub cannot be reached"):
        load_model(ModelConfig(name_or_path="nobody/no-such-model"))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("name", ["/nope/model", "./outputs/run/model", "outputs/run/model", "~/x"])
def test_a_missing_model_folder_is_named_not_taken_for_a_hub_id(name):
    """Found by a new user: ``rayalign eval --model /nope/model`` deployed it to Serve and
    failed inside a replica with a 40-line traceback. A hub id is "org/name"."""
    with pytest.raises(UserError, match="no such model folder"):
        resolve_model_path(name)
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_loads():
    path = resolve_model_path("smollm2-135m-instruct")  # converts the GGUF on first use (~20 s)
    assert path.endswith("smollm2-135m-instruct")
    cfg = ModelConfig()
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    assert 130e6 < model.num_parameters() < 140e6
    assert "<|im_start|>assistant" in tokenizer.chat_template
    assert resolve_model_path("smollm2-135m-instruct") == path  # cached, same folder


def test_activation_checkpointing_uses_the_name_the_installed_transformers_has():
    """transformers 5.24's ``activation_checkpointing_enable`` (tests/test_packing.py turns
    its deprecation warning into an error), else the older ``gradient_checkpointing_enable``,
    non-reentrant either way."""

    class Older:  # a model from a transformers release with only the old name
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.kwargs = gradient_checkpointing_kwargs

    older = Older()
    enable_activation_checkpointing(older)
    assert older.kwargs == {"use_reentrant": False}


def test_lora_on_chosen_layers_adapts_only_those_and_names_a_missing_one(tiny_model_dir):
    from rayalign.config import LoraConfig
    from rayalign.modeling.models import apply_lora

    lora = LoraConfig(r=2, target_modules=["q_proj", "down_proj"], layers_to_transform=[1])
    model = apply_lora(load_model(ModelConfig(name_or_path=str(tiny_model_dir))), lora)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.1." in name for name in trained)
    assert len(trained) == 4  # A and B of q_proj and down_proj, in layer 1 only
    with pytest.raises(UserError, match=r"layer 2 does not exist; this model's decoder layers are 0\.\.1"):
        apply_lora(load_model(ModelConfig(name_or_path=str(tiny_model_dir))), lora.model_copy(update={"layers_to_transform": [0, 2]}))
