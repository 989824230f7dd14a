"""A causal LM and its tokenizer written as local checkpoint folders, offline.

`save_causal_lm` writes a KerasHub causal LM as a KerasHub preset or a Hugging
Face checkpoint folder, which `kd_keras.models.causal_lm.load_causal_lm`
reads back; `save_gpt2_tokenizer` writes GPT-2's `vocab.json` and
`merges.txt`. Both write atomically (`kd_keras.storage.atomic_directory`).
"""

import json

from kd_keras.models.causal_lm import END_OF_TEXT
from kd_keras.storage import atomic_directory, write_json_atomic

__all__ = ["save_causal_lm", "save_gpt2_tokenizer"]


def save_gpt2_tokenizer(vocabulary, merges, directory):
    """Writes `vocab.json` and `merges.txt` (GPT-2's format) as the folder `directory`.

    Atomically (`kd_keras.storage.atomic_directory`); an existing folder is
    replaced whole. `kd_keras.models.causal_lm.load_gpt2_tokenizer` reads it.
    """

    def write(tmp):
        (tmp / "vocab.json").write_text(
            json.dumps(vocabulary, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (tmp / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
        )

    return atomic_directory(directory, write, replace=True)


def save_causal_lm(model, directory, format="keras", tokenizer=None):
    """Writes a KerasHub causal LM as a local checkpoint directory.

    Args:
        model: a `keras_hub.models.CausalLM`.
        directory: str or path; written beside and renamed into place
            (`kd_keras.storage.atomic_directory`), replacing an existing one.
        format: `"keras"` (a KerasHub preset: `config.json`,
            `model.weights.h5`, tokenizer assets) or `"transformers"` (a
            Hugging Face directory: `config.json`, `model.safetensors`,
            tokenizer files; for the architectures KerasHub exports: GPT-2,
            Qwen, Llama 3, Gemma, Mistral).
        tokenizer: the model's tokenizer, saved with it; required when the
            model has no preprocessor (a model trained with `fit` on token
            ids has none: a KerasHub task with a preprocessor would
            preprocess the ids again). The weights are shared, not copied.

    Returns:
        The directory, as a `pathlib.Path`.
    """
    if tokenizer is not None:
        preprocessor = type(model).preprocessor_cls(tokenizer)
        model = type(model)(backbone=model.backbone, preprocessor=preprocessor)
    if getattr(model, "preprocessor", None) is None:
        raise ValueError(
            "The model has no preprocessor, so its tokenizer would not be saved; pass `tokenizer=`."
        )
    if format not in ("keras", "transformers"):
        raise ValueError(f"`format` must be 'keras' or 'transformers'; received {format!r}.")

    def write(tmp):
        if format == "keras":
            model.save_to_preset(str(tmp))
        else:
            model.export_to_transformers(str(tmp))
            _complete_transformers_config(model, tmp)

    return atomic_directory(directory, write, replace=True)


# Hugging Face class names of the causal LMs, by `model_type`.
_HF_ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma": "GemmaForCausalLM",
}


def _complete_transformers_config(model, directory):
    """Fills in what KerasHub 0.32's export leaves out of `config.json`.

    Its GPT-2 export writes no `architectures` (which its own loader needs)
    and GPT-2's 50256 as the special token ids; its Qwen export writes no
    `use_sliding_window` / `sliding_window` (which its loader reads); and its
    GPT-2 loader assumes `intermediate_dim == 4 * hidden_dim`.
    """
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if "architectures" not in config and model_type in _HF_ARCHITECTURES:
        config["architectures"] = [_HF_ARCHITECTURES[model_type]]
    if model_type == "qwen2":
        backbone = model.backbone
        config.setdefault("use_sliding_window", bool(backbone.use_sliding_window_attention))
        config.setdefault("sliding_window", int(backbone.sliding_window_size))
        if not (directory / "tokenizer.json").exists():
            _write_tokenizer_json(model.preprocessor.tokenizer, directory / "tokenizer.json")
    if model_type == "gpt2":
        backbone = model.backbone
        if backbone.intermediate_dim != 4 * backbone.hidden_dim:
            raise ValueError(
                "A GPT-2 Hugging Face checkpoint needs `intermediate_dim == 4 * hidden_dim` "
                f"(KerasHub's loader assumes it); this model has {backbone.intermediate_dim} "
                f"and {backbone.hidden_dim}. Save it with format='keras'."
            )
        tokenizer = model.preprocessor.tokenizer
        eos = int(tokenizer.token_to_id(END_OF_TEXT))
        config["bos_token_id"] = config["eos_token_id"] = eos
    write_json_atomic(path, config)


def _write_tokenizer_json(tokenizer, path):
    """A minimal Hugging Face `tokenizer.json` (BPE model and special tokens)."""
    vocabulary = dict(tokenizer.vocabulary)
    specials = list(getattr(tokenizer, "unsplittable_tokens", None) or [])
    record = {
        "version": "1.0",
        "added_tokens": [
            {"id": int(vocabulary[t]), "content": t, "special": True}
            for t in specials
            if t in vocabulary
        ],
        "model": {"type": "BPE", "vocab": vocabulary, "merges": list(tokenizer.merges)},
    }
    write_json_atomic(path, record, indent=None)
