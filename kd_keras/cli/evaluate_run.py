"""`kd-keras evaluate`, the work: both models over the sampled sentences, the tables.

The flags, the checks and the sampling are `kd_keras.cli.evaluate` (`check`);
the figures are `kd_keras.fidelity`'s.
"""

import numpy as np

from kd_keras.cli.embed_run import embed_sentences
from kd_keras.cli.evaluate import check
from kd_keras.fidelity import NEIGHBOURS, per_source, summarize
from kd_keras.storage import write_json_atomic
from kd_keras.transfer import is_heldout_source

__all__ = ["run"]

DISPLAY_CHARS = 60  # of each sentence in the disagreement lists


def _short(text):
    return text if len(text) <= DISPLAY_CHARS else text[: DISPLAY_CHARS - 3] + "..."


def _print_tables(results, summary):
    names = {p: p + (" (held out)" if is_heldout_source(p) else "") for p in results}
    width = max(len("mean"), *map(len, names.values()))
    print(f"{'file':<{width}}  sentences  pairs  Spearman  recall@10")
    for path, r in results.items():
        clipped = f" (k={r['k']})" if r["k"] != 10 else ""
        print(
            f"{names[path]:<{width}}  {r['sentences']:>9}  {r['pairs']:>5}  "
            f"{r['spearman']:>8.2f}  {r['recall_at_k']:>9.2f}{clipped}"
        )
    if len(results) > 1:
        m = summary["mean"]
        blank = " " * 18
        print(f"{'mean':<{width}}{blank}  {m['spearman']:>8.2f}  {m['recall_at_k']:>9.2f}")
    for path, r in results.items():
        print(f"\n{path}: the {len(r['disagreements'])} pairs the two disagree on most")
        print("teacher  student  sentences")
        for d in r["disagreements"]:
            print(
                f"{d['teacher']:>7.3f}  {d['student']:>7.3f}  "
                f"{_short(d['first_sentence'])} | {_short(d['second_sentence'])}"
            )


def run(args):
    """Runs `kd-keras evaluate` (after `check`); bad inputs raise (exit 2)."""
    if not hasattr(args, "sentence_sets"):  # called directly, not through the dispatcher
        check(args)
    sets = args.sentence_sets
    every = [s for sentences in sets.values() for s in sentences]
    embeddings = [
        np.asarray(
            embed_sentences(spec, every, batch_size=args.batch_size, progress=not args.no_progress)
        )
        for spec in (args.teacher, args.student)
    ]
    results = per_source(*embeddings, sets, pairs=args.pairs, seed=args.seed)
    summary = summarize(results)
    _print_tables(results, summary)
    if args.json:
        settings = {"limit": args.limit, "pairs": args.pairs, "k": NEIGHBOURS, "seed": args.seed}
        write_json_atomic(
            args.json,
            {
                "teacher": args.teacher,
                "student": args.student,
                "settings": settings,
                "files": results,
                **summary,
            },
        )
    return 0
