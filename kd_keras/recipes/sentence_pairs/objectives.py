"""Sentence-pair distillation: a siamese student trained on a teacher's embeddings.

The teacher is run once over every sentence of the transfer set (cached); each
training pair then carries the teacher's outputs, made from its two sentences'
embeddings:

- `embeddings` `[B, 2, D]`: both sentences' teacher embeddings;
- `score` `[B, 1]`: the cosine of the two;
- `logits` `[B, 2]`: the two-class (not similar, similar) form of the cosine,
  `scale * [threshold - cos, cos - threshold]`
  (`kd_keras.models.heads.similarity_logits`).

The student's pair model (`kd_keras.models.heads.build_pair_model` with all
three outputs) returns the same from its own embeddings, through the same
`cosine_similarity` and `similarity_logits`, so every objective is a plain
`kd_keras.losses` loss on one of them, mixed with the gold score through
`alpha`:

| objective | distillation loss on | default loss |
|---|---|---|
| `embedding` | `embeddings` | `LogitMSE` (MSE of the embeddings) |
| `score` | `score` | `LogitMSE` (MSE of the cosines) |
| `soft_label` | `logits` | `SoftTargetMSE(temperature)` (BERT-to-DSSM) or a KL |
| `relational` | `embeddings` | `BatchSimilarityLoss` (embedding MSE + in-batch cosines) |
| `contrastive` | `embeddings` | `TeacherContrastiveLoss` (in-batch InfoNCE on the teacher's) |

The gold term is `GoldScoreMSE` between the student's cosine and the gold
score divided by `max_score`; unlabeled pairs carry NaN and are left out.
For 0/1-labeled pairs (similar or not) `BinaryPairLoss` is the hard loss on
the student's cosine instead.
"""

import keras
import tensorflow as tf

from kd_keras import losses as kd_losses
from kd_keras.losses import _scale_for_distribution
from kd_keras.models.heads import build_pair_model, cosine_similarity, similarity_logits
from kd_keras.recipes.config import ConfigError

__all__ = [
    "OBJECTIVES",
    "BatchSimilarityLoss",
    "BinaryPairLoss",
    "TeacherContrastiveLoss",
    "GoldScoreMSE",
    "check_objective",
    "objective_loss",
    "pair_training_model",
    "teacher_pair_outputs",
]

OBJECTIVES = {
    "embedding": "embeddings",
    "score": "score",
    "soft_label": "logits",
    "relational": "embeddings",
    "contrastive": "embeddings",
}


class _LabeledPairLoss(keras.losses.Loss):
    """A per-pair loss averaged over the labeled pairs only (NaN labels weigh 0).

    Subclasses give `per_pair(label, score)`, with NaN labels replaced by 0.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
        labeled = tf.math.is_finite(y_true)
        weights = tf.cast(labeled, tf.float32)
        if sample_weight is not None:
            weights = weights * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        label = tf.where(labeled, y_true, tf.zeros_like(y_true))
        total = tf.reduce_sum(weights * self.per_pair(label, y_pred))
        return _scale_for_distribution(tf.math.divide_no_nan(total, tf.reduce_sum(weights)))


@keras.saving.register_keras_serializable(package="kd_keras")
class GoldScoreMSE(_LabeledPairLoss):
    """MSE between predicted and gold scores over the labeled pairs only.

    Formula:

    ```
    sum_i w_i * (y_i / max_score - s_i)^2 / sum_i w_i,   w_i = 0 where y_i is NaN
    ```

    Args:
        max_score: float. Gold scores are divided by it (5 for STS-B), so
            that they compare with a cosine.
        name: str.
    """

    def __init__(self, max_score=5.0, name="gold_score_mse"):
        super().__init__(name=name, reduction="none", dtype="float32")
        self.max_score = float(max_score)

    def per_pair(self, label, score):
        return tf.square(label / self.max_score - score)

    def get_config(self):
        return {"max_score": self.max_score, "name": self.name}


@keras.saving.register_keras_serializable(package="kd_keras")
class BinaryPairLoss(_LabeledPairLoss):
    """Hard loss of 0/1-labeled pairs on the cosine, over the labeled pairs only.

    A similar pair (`y = 1`) is pulled towards cosine 1; a dissimilar one
    (`y = 0`) is pushed towards 0, but only while its cosine is above
    `threshold`. Formula:

    ```
    l_i = y_i * (1 - s_i)^2 / 4 + (1 - y_i) * s_i^2 * [s_i > threshold]
    sum_i w_i * l_i / sum_i w_i,   w_i = 0 where y_i is NaN
    ```

    Args:
        threshold: float. Dissimilar pairs whose cosine is at or below it
            cost nothing.
        name: str.
    """

    def __init__(self, threshold=0.0, name="binary_pair_loss"):
        super().__init__(name=name, reduction="none", dtype="float32")
        self.threshold = float(threshold)

    def per_pair(self, label, score):
        gate = tf.cast(score > self.threshold, tf.float32)
        return label * tf.square(1.0 - score) / 4.0 + (1.0 - label) * tf.square(score) * gate

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name}


@keras.saving.register_keras_serializable(package="kd_keras")
class BatchSimilarityLoss(keras.losses.Loss):
    """Embedding MSE plus the MSE of the cosine matrix over every sentence of the batch.

    Relational distillation (Park et al. 2019, with cosines): besides matching
    each sentence's embedding, the student matches the teacher's cosine
    between every two sentences of the batch, not only the pairs' own:
    `2B (2B - 1)` similarities a step instead of `B`. Formula, with
    `T, S` the teacher's and the student's `[N, D]` embeddings of the
    batch's `N = 2B` sentences and `C(X)` the cosine matrix of `X`'s rows:

    ```
    mean_{n, d} (S_nd - T_nd)^2 + weight * mean_{i != j} (C(S)_ij - C(T)_ij)^2
    ```

    Args:
        weight: float >= 0. Weight of the cosine-matrix term (0 leaves the
            plain embedding MSE).
        name: str.

    Inputs: `y_true`, `y_pred` `[B, 2, D]` (the pair model's `embeddings`).
    """

    def __init__(self, weight=1.0, name="batch_similarity"):
        super().__init__(name=name, reduction="none", dtype="float32")
        if not float(weight) >= 0.0:
            raise ValueError(f"`weight` must be a number >= 0; received {weight!r}.")
        self.weight = float(weight)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("BatchSimilarityLoss takes no sample weights.")
        depth = tf.shape(y_pred)[-1]
        teacher = tf.reshape(tf.cast(y_true, tf.float32), [-1, depth])
        student = tf.reshape(tf.cast(y_pred, tf.float32), [-1, depth])
        embedding = tf.reduce_mean(tf.square(student - teacher))

        def cosines(x):
            x = tf.math.l2_normalize(x, axis=-1)
            return tf.matmul(x, x, transpose_b=True)

        n = tf.shape(student)[0]
        off_diagonal = 1.0 - tf.eye(n, dtype=tf.float32)
        squared = tf.square(cosines(student) - cosines(teacher)) * off_diagonal
        pairs = tf.cast(n * (n - 1), tf.float32)
        relational = tf.math.divide_no_nan(tf.reduce_sum(squared), pairs)
        return _scale_for_distribution(embedding + self.weight * relational)

    def get_config(self):
        return {"weight": self.weight, "name": self.name}


@keras.saving.register_keras_serializable(package="kd_keras")
class TeacherContrastiveLoss(keras.losses.Loss):
    """In-batch contrastive loss of the student's embeddings against the teacher's.

    Each of the batch's `N = 2B` sentences must pick its own teacher
    embedding among all the teacher embeddings of the batch (InfoNCE, as
    tokenlearn's contrastive variant): what counts is the direction of the
    student's embedding relative to the others, not its exact coordinates.
    Formula, with `S, T` the student's and the teacher's unit-length `[N, D]`
    embeddings and `c_ij = scale * S_i . T_j`:

    ```
    mean_i [ -c_ii + log sum_j m_ij exp(c_ij) ]
    ```

    `m_ij = 0` for `j != i` when sentence `j` is the same as `i` (teacher
    cosine above 0.9999: a sentence in two pairs of the batch is not its own
    negative), else 1.

    Args:
        scale: float > 0. Inverse temperature of the softmax (20: 1 / 0.05).
        name: str.

    Inputs: `y_true`, `y_pred` `[B, 2, D]` (the pair model's `embeddings`).
    """

    def __init__(self, scale=20.0, name="teacher_contrastive"):
        super().__init__(name=name, reduction="none", dtype="float32")
        if not float(scale) > 0.0:
            raise ValueError(f"`scale` must be a number > 0; received {scale!r}.")
        self.scale = float(scale)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("TeacherContrastiveLoss takes no sample weights.")
        depth = tf.shape(y_pred)[-1]
        teacher = tf.math.l2_normalize(tf.reshape(tf.cast(y_true, tf.float32), [-1, depth]), -1)
        student = tf.math.l2_normalize(tf.reshape(tf.cast(y_pred, tf.float32), [-1, depth]), -1)
        logits = self.scale * tf.matmul(student, teacher, transpose_b=True)
        n = tf.shape(logits)[0]
        same = tf.matmul(teacher, teacher, transpose_b=True) > 0.9999
        duplicate = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
        logits = tf.where(duplicate, tf.cast(-1e9, logits.dtype), logits)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(n), logits)
        return _scale_for_distribution(tf.reduce_mean(losses))

    def get_config(self):
        return {"scale": self.scale, "name": self.name}


def pair_training_model(encoder, scale=10.0, threshold=0.0, name="pair_student"):
    """The student's pair model for training: one shared tower, the three outputs.

    `build_pair_model(encoder, ("embeddings", "score", "logits"))`: inputs
    `{"sentence_a": ..., "sentence_b": ...}`, outputs `embeddings` `[B, 2, D]`,
    `score` `[B, 1]` and `logits` `[B, 2]`.
    """
    return build_pair_model(encoder, tuple(OBJECTIVES.values()), scale, threshold, name=name)


def teacher_pair_outputs(embeddings_a, embeddings_b, scale=10.0, threshold=0.0):
    """The teacher's pair outputs from the embeddings of the pairs' two sentences.

    TensorFlow ops, so that it runs inside a `tf.data` pipeline as well as on
    NumPy arrays.

    Args:
        embeddings_a, embeddings_b: float `[P, D]`, the teacher's embeddings
            of the pairs' first and second sentences.
        scale, threshold: float. Of the two-class logits (as the student's).

    Returns:
        dict of float32 tensors: `embeddings` `[P, 2, D]` (L2-normalized, as
        the student's are), `score` `[P, 1]`, `logits` `[P, 2]`.
    """
    ea, eb = tf.cast(embeddings_a, tf.float32), tf.cast(embeddings_b, tf.float32)
    cosine = cosine_similarity(ea, eb)
    # Unit length, as the student's: a teacher whose embeddings are not
    # normalized (m3e's mean pooling) is imitated in direction.
    ea, eb = tf.math.l2_normalize(ea, axis=-1), tf.math.l2_normalize(eb, axis=-1)
    return {
        "embeddings": tf.stack([ea, eb], axis=1),
        "score": tf.reshape(cosine, [-1, 1]),
        "logits": similarity_logits(cosine, scale, threshold),
    }


def objective_loss(objective, distillation_loss=None, temperature=None):
    """`(distill_output, loss object)` for an objective name.

    Args:
        objective: `"embedding"`, `"score"`, `"soft_label"`, `"relational"` or
            `"contrastive"`.
        distillation_loss: `None` for the objective's default, or a
            `kd_keras.losses` name (e.g. `"forward_kl"` for `soft_label`).
        temperature: float or `None`, for the temperature losses (an error
            with `logit_mse`).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}.")
    if objective == "relational":
        if distillation_loss is not None or temperature is not None:
            raise ValueError("The 'relational' objective has its own loss and no temperature.")
        return OBJECTIVES[objective], BatchSimilarityLoss()
    if objective == "contrastive":
        if distillation_loss is not None or temperature is not None:
            raise ValueError("The 'contrastive' objective has its own loss and no temperature.")
        return OBJECTIVES[objective], TeacherContrastiveLoss()
    if distillation_loss is None:
        distillation_loss = "soft_target_mse" if objective == "soft_label" else "logit_mse"
    if objective != "soft_label" and distillation_loss != "logit_mse":
        raise ValueError(f"The {objective!r} objective compares values with `logit_mse` only.")
    # `kd_losses.get` owns the temperature rules: one given to a loss without
    # a temperature is an error, never dropped.
    return OBJECTIVES[objective], kd_losses.get(distillation_loss, temperature=temperature)


def check_objective(config):
    """Checks the objective settings of a `DistillConfig` (`objective_loss`'s rules).

    Run first thing by the recipe (`DistillConfig.validate` checks the rest
    without TensorFlow), so that a wrong pairing stops the run before the
    teacher pass.

    Raises:
        ConfigError: `--objective NAME: ...`, in one line.
    """
    try:
        objective_loss(config.objective, config.distillation_loss, config.temperature)
    except ValueError as e:
        raise ConfigError(f"--objective {config.objective}: {e}") from None
