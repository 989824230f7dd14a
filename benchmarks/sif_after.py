"""SIF weights after training (tokenlearn's order) against SIF weights at initialization.

The static student of `kd-keras distill --student static` starts from a token
table whose rows are already scaled by SIF weights (`kd_keras.models.static`).
tokenlearn trains the table unweighted and applies the weights afterwards.
This script takes a static student trained without weights (`--student
sif_after:plain_static`, this module on `PYTHONPATH`), scales its token
table by `a / (a + p(token))` for each `--a`, with `p` counted over the run's
transfer sentences (its labels folders), and measures each copy on STS-B dev
and, against the teacher, on the held-out transfer-en sentences (fidelity),
as the distill report does.

    PYTHONPATH=benchmarks kd-keras distill --student sif_after:plain_static \\
        --output-dir runs/static-plain
    python benchmarks/sif_after.py --run runs/static-plain --a 1e-3 1e-4 \\
        --json benchmarks/results/sif_after.json
"""

import argparse
import json
import pathlib
import sys

import numpy as np


def plain_static(vocabulary_size, output_dim, token_embeddings, embedding_dim):
    """The built-in static student without SIF weights in its initial table."""
    from kd_keras.models.static import build_static_encoder

    return build_static_encoder(
        vocabulary_size, embedding_dim, output_dim, token_embeddings, normalize=False
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder of a plain_static student")
    parser.add_argument("--a", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import keras

    import kd_keras  # noqa: F401  (registers the custom objects)
    from kd_keras.data import read_pairs
    from kd_keras.evaluation import embed_text_export, spearman
    from kd_keras.fidelity import per_source, summarize
    from kd_keras.labels import read_labels
    from kd_keras.models.heads import cosine_similarity
    from kd_keras.models.static import sif_weights, token_counts
    from kd_keras.recipes.sentence_pairs.agreement import fidelity_sets
    from kd_keras.recipes.sentence_pairs.config import DistillConfig
    from kd_keras.serving import load_student

    run = pathlib.Path(args.run)
    metrics = json.loads((run / "metrics.json").read_text())
    settings = {
        k: v for k, v in metrics["config"].items() if k in DistillConfig.__dataclass_fields__
    }
    c = DistillConfig(**{**settings, "preset": "none"}).resolved()
    student, preprocessor = load_student(run / "student.keras")
    sentences = [
        s
        for folder in metrics["data"]["label_folders"]
        for batch, _ in read_labels(folder)
        for s in batch
    ]
    print(f"sif_after: counting tokens over {len(sentences)} transfer sentences", file=sys.stderr)
    counts = token_counts(preprocessor, sentences)
    dev_a, dev_b, dev_gold = read_pairs(c.dev)[:3]  # STS-B dev, as the run's
    sets = {name: s["sentences"] for name, s in fidelity_sets(c).items()}
    heldout = [s for group in sets.values() for s in group]
    teacher_dir = metrics["models"]["teacher"]["export"]
    teacher = np.asarray(embed_text_export(teacher_dir, heldout))

    def embed(model, texts):
        out = []
        for i in range(0, len(texts), 256):
            packed = preprocessor(texts[i : i + 256])
            out.append(keras.ops.convert_to_numpy(model(packed["token_ids"], training=False)))
        return np.concatenate(out)

    (table,) = [
        layer.embeddings for layer in student._flatten_layers() if layer.name == "token_embedding"
    ]
    original = keras.ops.convert_to_numpy(table)
    results = {}
    for a in [None, *args.a]:
        weights = np.ones(len(original), np.float32) if a is None else sif_weights(counts, a)
        table.assign(original * weights[:, None])
        score = cosine_similarity(embed(student, list(dev_a)), embed(student, list(dev_b)))
        dev = 100 * spearman(keras.ops.convert_to_numpy(score).reshape(-1), dev_gold)
        agreement = summarize(per_source(teacher, embed(student, heldout), sets))
        name = "none" if a is None else f"a={a:g}"
        results[name] = {"dev_spearman": dev, "fidelity": agreement}
        print(f"{name}: dev {dev:.2f}, fidelity {json.dumps(agreement)}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
