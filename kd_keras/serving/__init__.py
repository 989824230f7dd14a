"""Serving: the student alone, as files a server or a user can load.

- `text_model`: raw-text SavedModels (`export_student`, `export_teacher`,
  `export_text_model`, `load_text_export`): `tf.string` in, tokenized in-graph.
- `model_kinds`: what an exported model is (encoder, pair model, classifier).
- `student_files`: a `.keras` student with its tokenizer sidecar
  (`save_student`, `load_student`).
- `google_checkpoint`: a BERT teacher as a Google BERT checkpoint folder.
- `causal_lm_checkpoint`: a causal LM as a KerasHub preset or Hugging Face
  folder, and a GPT-2 tokenizer's files.
"""

from kd_keras.serving.causal_lm_checkpoint import save_causal_lm, save_gpt2_tokenizer
from kd_keras.serving.google_checkpoint import (
    save_google_checkpoint,
    save_teacher_as_google_checkpoint,
)
from kd_keras.serving.model_kinds import MODEL_KINDS, infer_model_kind
from kd_keras.serving.student_files import (
    load_preprocessor,
    load_student,
    preprocessor_sidecar_path,
    save_preprocessor,
    save_student,
)
from kd_keras.serving.text_model import (
    EXPORT_FORMAT,
    METADATA_PATH,
    ExportResult,
    export_student,
    export_teacher,
    export_text_model,
    load_text_export,
    verify_text_export,
)

__all__ = [
    "EXPORT_FORMAT",
    "METADATA_PATH",
    "MODEL_KINDS",
    "ExportResult",
    "export_student",
    "export_teacher",
    "export_text_model",
    "infer_model_kind",
    "load_preprocessor",
    "load_student",
    "load_text_export",
    "preprocessor_sidecar_path",
    "save_causal_lm",
    "save_google_checkpoint",
    "save_gpt2_tokenizer",
    "save_preprocessor",
    "save_student",
    "save_teacher_as_google_checkpoint",
    "verify_text_export",
]
