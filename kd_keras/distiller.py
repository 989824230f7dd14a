"""`Distiller`: a `keras.Model` that trains a student against a frozen teacher."""

import keras
import tensorflow as tf

from kd_keras import distribute
from kd_keras import losses as kd_losses

__all__ = ["Distiller"]

TEACHER_KEY = "teacher"
STUDENT_KEY = "student"


class _FunctionLoss(keras.losses.Loss):
    """A plain `fn(y_true, y_pred) -> per-sample values` as a Keras loss."""

    def __init__(self, fn, name=None):
        super().__init__(name=name or getattr(fn, "__name__", None))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)

    def get_config(self):
        return {"fn": keras.saving.serialize_keras_object(self.fn), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["fn"]), name=config["name"])


def _as_loss(loss):
    if loss is None or isinstance(loss, keras.losses.Loss):
        return loss
    loss = keras.losses.get(loss)
    return loss if isinstance(loss, keras.losses.Loss) else _FunctionLoss(loss)


# keras.distillation's argument names that have no place in ours, each with
# what to pass instead (`student_loss_weight` maps cleanly: compile takes it).
_KERAS_ARGUMENTS = {
    "distillation_losses": (
        "kd_keras.Distiller takes one distillation loss as compile(distillation_loss=...) (a "
        "keras.distillation LogitsDistillation or FeatureDistillation is accepted there), not "
        "`distillation_losses=`."
    ),
    "distillation_loss_weights": (
        "kd_keras.Distiller has one distillation loss and no `distillation_loss_weights`: weight "
        "the teacher term with compile(alpha=...)."
    ),
    "student_loss_weight": (
        "kd_keras.Distiller takes its loss weights in compile(): `student_loss_weight=w` there, "
        "or `alpha=1 - w` (alpha weights the teacher term)."
    ),
}


def _describe(loss):
    return getattr(loss, "__name__", None) or type(loss).__name__


def _single_keras_loss(loss, owner):
    """The one loss of a keras.distillation loss object; an error for one per output."""
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            f"{owner} with one loss per output is not supported: pass one loss and pick the "
            "output it compares with Distiller(distill_output=...)."
        )
    return loss


def _from_logits_distillation(loss, temperature):
    """`LogitsDistillation` -> `ForwardKL` at its temperature (x T^2).

    Only its KL losses map: the `"kl_divergence"` default and a
    `keras.losses.KLDivergence` instance. With the instance Keras computes the
    softmax KL x T^2 on clipped probabilities, ours in log space. With the
    default string Keras 3.15 applies `keras.losses.kl_divergence` to the scaled
    logits themselves (its softmax branch needs the instance); we compute the
    softmax KL that its docstring describes.
    """
    owner = "keras.distillation.LogitsDistillation"
    if temperature is not None and temperature != loss.temperature:
        raise ValueError(
            f"temperature={temperature!r} and {owner}(temperature={loss.temperature!r}) "
            "disagree: give the temperature once."
        )
    inner = _single_keras_loss(loss.loss, owner)
    if inner is keras.losses.kl_divergence or isinstance(inner, keras.losses.KLDivergence):
        reduction = "sum" if getattr(inner, "reduction", None) == "sum" else "mean"
        return kd_losses.ForwardKL(temperature=loss.temperature, reduction=reduction)
    raise ValueError(
        f"{owner}(loss={_describe(inner)}) has no kd_keras equivalent: pass "
        "distillation_loss='forward_kl' (softmax KL x T^2) with temperature=..., "
        "'logit_mse' (MSE of the raw logits) or a kd_keras.losses object."
    )


def _from_feature_distillation(loss, temperature):
    """`FeatureDistillation` of the final outputs -> its Keras loss on the outputs."""
    owner = "keras.distillation.FeatureDistillation"
    if loss.teacher_layer_name is not None or loss.student_layer_name is not None:
        raise ValueError(
            f"{owner}(teacher_layer_name={loss.teacher_layer_name!r}, student_layer_name="
            f"{loss.student_layer_name!r}) is not supported: kd_keras.Distiller distills model "
            "outputs, so add those layers' outputs to the two models' outputs (a dict) and pass "
            "Distiller(distill_output=KEY) with distillation_loss=<the loss>."
        )
    if temperature is not None:
        raise ValueError(f"{owner} has no temperature; leave `temperature` unset.")
    return _as_loss(_single_keras_loss(loss.loss, owner))


def _from_keras_distillation(loss, temperature):
    """Our equivalent of a `keras.distillation` loss object (or of a list of one).

    Returns `(loss, temperature)`: anything else comes back unchanged.
    """
    kd = keras.distillation
    if isinstance(loss, (list, tuple)):
        if len(loss) != 1:
            raise ValueError(
                f"kd_keras.Distiller takes one distillation loss; received a list of {len(loss)} "
                "(add several terms up in one keras.losses.Loss)."
            )
        loss = loss[0]
    if isinstance(loss, kd.LogitsDistillation):
        return _from_logits_distillation(loss, temperature), None
    if isinstance(loss, kd.FeatureDistillation):
        return _from_feature_distillation(loss, temperature), None
    if isinstance(loss, kd.DistillationLoss):
        raise ValueError(
            f"{type(loss).__name__} (a keras.distillation.DistillationLoss) has no kd_keras "
            "equivalent: pass a keras.losses.Loss or a kd_keras.losses object, called as "
            "loss(teacher_outputs, student_outputs)."
        )
    return loss, temperature


def _multi_worker(strategy):
    """Whether Keras reduces step logs across workers (`MultiWorkerMirroredStrategy`, 2+)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    tasks = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(tasks.get("chief", [])) + len(tasks.get("worker", [])) > 1


def _select(outputs, key):
    if key is None:
        return outputs
    try:
        return outputs[key]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"Model outputs have no entry {key!r}; outputs: {outputs!r}") from e


@keras.saving.register_keras_serializable(package="kd_keras")
class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher` and, optionally, labels.

    Formula:

    ```
    loss = alpha * distillation_loss(teacher(x_teacher), student(x_student))
         + (1 - alpha) * student_loss(y, student(x_student))
         + student regularization losses
    ```

    `alpha` weights the soft (teacher) term. Whether the soft term carries a
    `T^2` factor is the distillation loss's setting
    (`scale_by_temperature_squared`, on by default for the temperature losses
    of `kd_keras.losses`). With `y` absent (unlabeled transfer data) the hard
    term is 0, so use `alpha=1` there.

    The teacher is frozen: `trainable=False`, always run with
    `training=False`, outside the gradient tape. `call`, `predict` and the
    compiled metrics are the student's.

    Under `tf.distribute` (`kd_keras.distribute`), create and compile it
    under `strategy.scope()` and pass `fit` batches of the global batch size:
    each replica's loss is its mean divided by the replica count, so the
    summed gradients are the global batch's.

    Inputs `x` of a batch may be:

    - anything the student takes; the teacher gets the same;
    - a dict with `"teacher"` and `"student"` entries, when the two take
      different inputs (WordPiece ids for a BERT teacher, other ids for an
      LSTM student);
    - a dict with a `teacher_outputs_key` entry (default `"teacher_outputs"`)
      holding precomputed teacher outputs: the teacher is then not called at
      all. The student gets `x["student"]`, or else the dict without the
      teacher entries.

    Coming from `keras.distillation.Distiller` (Keras 3.15), theirs -> ours:

    - `Distiller(teacher, student, distillation_losses=...)` ->
      `Distiller(teacher, student)`, then `compile(distillation_loss=...)`.
    - `LogitsDistillation(temperature=T)` (default T 3) ->
      `distillation_loss="forward_kl", temperature=T` (default T 1); the
      object itself is accepted and becomes this.
    - `FeatureDistillation(loss=L)` without layer names ->
      `distillation_loss=L`; the object itself is accepted and becomes this.
    - `FeatureDistillation(teacher_layer_name=..., student_layer_name=...)` ->
      none: add those layers' outputs to the models' outputs (a dict) and
      pick them with `distill_output=`.
    - several distillation losses, `distillation_loss_weights=` -> one loss
      (a list of one is accepted), no weights.
    - `student_loss_weight=w` (default 0.5) -> `compile(alpha=1 - w)`, or
      `compile(student_loss_weight=w)` (default alpha 0.5, the same).
    - `compile(loss=...)`, always required -> `compile(student_loss=...)`,
      `None` allowed when `alpha == 1`.

    A `LogitsDistillation` maps only with its KL loss (the `"kl_divergence"`
    default or a `keras.losses.KLDivergence()`), to the softmax KL x T^2 that
    Keras computes with the `KLDivergence()` instance (on probabilities
    clipped to [1e-7, 1]; ours in log space). With the default string Keras
    applies `keras.losses.kl_divergence` to the scaled logits themselves, not
    to their softmax. What ours adds: sample weights in both terms (Keras
    ignores them) and masks (`label_mask`, Keras masks); KL in log space;
    reverse and skewed KL (`kd_keras.losses`); different teacher and student
    inputs (Keras feeds both the same `x` and checks their input shapes);
    cached teacher outputs in the batch, and `teacher=None`; the teacher run
    outside the gradient tape.

    Args:
        teacher: `keras.Model` (or any callable) producing the soft targets,
            or `None` when every batch carries cached teacher outputs (a
            batch without them is then an error).
        student: `keras.Model` to train.
        teacher_outputs_key: str. Key of cached teacher outputs in `x`.
        distill_output: `None`, str or int. Which entry of the student's (and
            the teacher's) outputs the distillation loss compares, when the
            models return a dict or list; `None` compares the whole output.
        label_output: `None`, str or int. Which entry of the student's outputs
            the student loss and the metrics see; `None` for all of it.

    Example:

    ```python
    teacher = keras.Sequential([keras.layers.Dense(3)])
    student = keras.Sequential([keras.layers.Dense(3)])
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer="adam",
        student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss="forward_kl",
        alpha=0.5,
        temperature=2.0,
        metrics=["accuracy"],
    )
    distiller.fit(np.ones((8, 4)), np.zeros((8,)), epochs=1, verbose=0)
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        teacher_outputs_key="teacher_outputs",
        distill_output=None,
        label_output=None,
        name="distiller",
        **kwargs,
    ):
        for key in _KERAS_ARGUMENTS:
            if key in kwargs:
                raise ValueError(_KERAS_ARGUMENTS[key])
        super().__init__(name=name, **kwargs)
        if teacher is student:
            raise ValueError("`teacher` and `student` must be different models.")
        if not callable(student) or not (teacher is None or callable(teacher)):
            raise TypeError(
                "`teacher` and `student` must be Keras models or callables (`teacher=None` "
                "when the teacher's outputs come cached with every batch)."
            )
        # === Layers ===
        self.teacher = teacher
        self.student = student
        if isinstance(teacher, keras.layers.Layer):
            teacher.trainable = False
        # Built when its models are (functional models always are), so that
        # callbacks such as BackupAndRestore can restore before the first step.
        if getattr(student, "built", False) and getattr(teacher, "built", True):
            self.built = True
        # === Config ===
        self.teacher_outputs_key = teacher_outputs_key
        self.distill_output = distill_output
        self.label_output = label_output
        # === Trackers ===
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_loss = None
        self.distillation_loss = None
        self.alpha = None
        self.label_mask = False

    # === Compile ===

    def compile(
        self,
        optimizer="adam",
        student_loss=None,
        distillation_loss="forward_kl",
        alpha=None,
        temperature=None,
        metrics=None,
        label_mask=False,
        student_loss_weight=None,
        **kwargs,
    ):
        """Configures the distillation.

        Args:
            optimizer: optimizer name or instance.
            student_loss: loss of the student against the labels `y` (a name,
                function or `keras.losses.Loss`: keras.distillation's
                `compile(loss=...)`); may be `None` only when `alpha == 1`.
            distillation_loss: a loss object or one of `"soft_target_mse"`,
                `"logit_mse"`, `"forward_kl"`, `"reverse_kl"`,
                `"skewed_forward_kl"`, `"skewed_reverse_kl"`; called as
                `loss(teacher_outputs, student_outputs, sample_weight)`. Also a
                `keras.distillation.LogitsDistillation` (its KL loss becomes
                `ForwardKL` at its temperature, x T^2) or a
                `keras.distillation.FeatureDistillation` of the final outputs
                (its Keras loss, applied to the outputs), alone or as a list
                of one.
            alpha: float in [0, 1], the weight of the distillation loss
                (default 0.5).
            temperature: float or `None`. When given, sets the distillation
                loss's temperature (on a copy of a loss object).
            metrics: metrics of the student's outputs against `y`.
            label_mask: bool. Also leave out of the distillation loss the
                positions whose label `y` equals the loss's `ignore_index`
                (-100): prompt tokens and padding in causal LM data.
            student_loss_weight: float in [0, 1] or `None`. keras.distillation's
                weight of the hard term: `student_loss_weight=w` means
                `alpha = 1 - w`. Give it or `alpha`, not both.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...).
        """
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                "kd_keras.Distiller.compile takes `student_loss=` (the hard loss on the labels "
                "y: keras.distillation's `loss=`) and `distillation_loss=` (teacher against "
                "student), not `loss=`."
            )
        for key in ("distillation_losses", "distillation_loss_weights"):
            if key in kwargs:
                raise ValueError(_KERAS_ARGUMENTS[key])
        alpha = self._alpha(alpha, student_loss_weight)
        if student_loss is None and alpha != 1.0:
            raise ValueError(
                "`student_loss` (the hard loss on the labels y) is required unless `alpha == 1`."
            )
        self.student_loss = _as_loss(student_loss)
        self.distillation_loss = self._distillation_loss(distillation_loss, temperature)
        self.alpha = float(alpha)
        self.label_mask = bool(label_mask)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        self._kd_compile_config = {
            "optimizer": self.optimizer,
            "student_loss": self.student_loss,
            "distillation_loss": self.distillation_loss,
            "alpha": self.alpha,
            "metrics": metrics,
            "label_mask": self.label_mask,
        }

    @staticmethod
    def _alpha(alpha, student_loss_weight):
        """`alpha`, or `1 - student_loss_weight` (keras.distillation's name), or 0.5."""
        if student_loss_weight is not None:
            if alpha is not None:
                raise ValueError("Pass `alpha` or `student_loss_weight` (= 1 - alpha), not both.")
            w = student_loss_weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
                raise ValueError(
                    f"`student_loss_weight` must be a number in [0, 1]; received {w!r}."
                )
            return 1.0 - float(w)
        alpha = 0.5 if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be a number in [0, 1]; received {alpha!r}.")
        return float(alpha)

    @staticmethod
    def _distillation_loss(loss, temperature):
        if loss is None:
            raise ValueError("`distillation_loss` is required.")
        loss, temperature = _from_keras_distillation(loss, temperature)
        if isinstance(loss, str) or temperature is not None:
            return kd_losses.get(loss, temperature=temperature)
        return _as_loss(loss)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        return keras.saving.serialize_keras_object(self._kd_compile_config)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # === Inputs ===

    def split_inputs(self, x):
        """Returns `(teacher_x, student_x, cached_teacher_outputs)` for a batch."""
        if isinstance(x, dict):
            routed = {TEACHER_KEY, STUDENT_KEY, self.teacher_outputs_key}
            if routed & set(x):
                cached = x.get(self.teacher_outputs_key)
                if STUDENT_KEY in x:
                    student_x = x[STUDENT_KEY]
                else:
                    student_x = {k: v for k, v in x.items() if k not in routed}
                    if not student_x:
                        raise ValueError(
                            f"Batch inputs {sorted(x)} hold nothing for the student: add a "
                            f"{STUDENT_KEY!r} entry."
                        )
                teacher_x = x.get(TEACHER_KEY, student_x)
                return teacher_x, student_x, cached
        return x, x, None

    def teacher_outputs(self, x):
        """The teacher's outputs for a batch: cached ones if `x` carries them."""
        teacher_x, _, cached = self.split_inputs(x)
        if cached is None and self.teacher is None:
            raise ValueError(
                "This Distiller has no teacher (`teacher=None`): every batch must carry the "
                f"teacher's outputs under {self.teacher_outputs_key!r}."
            )
        outputs = cached if cached is not None else self.teacher(teacher_x, training=False)
        return tf.nest.map_structure(
            lambda t: (
                tf.stop_gradient(tf.cast(t, tf.float32)) if tf.as_dtype(t.dtype).is_floating else t
            ),
            outputs,
        )

    # === Forward pass ===

    def call(self, inputs, training=None):
        _, student_x, _ = self.split_inputs(inputs)
        return self.student(student_x, training=training)

    def _compute_losses(self, y, teacher_out, student_out, sample_weight):
        soft_kwargs = {}
        if self.label_mask and y is not None:
            if not isinstance(self.distillation_loss, kd_losses.DistillationLoss):
                raise ValueError("`label_mask=True` needs a kd_keras.losses distillation loss.")
            soft_kwargs["labels"] = y
        soft = self.distillation_loss(
            _select(teacher_out, self.distill_output),
            _select(student_out, self.distill_output),
            sample_weight=sample_weight,
            **soft_kwargs,
        )
        if y is not None and self.student_loss is not None:
            hard = self.student_loss(
                y, _select(student_out, self.label_output), sample_weight=sample_weight
            )
        else:
            hard = tf.zeros((), tf.float32)
        soft = tf.cast(soft, tf.float32)
        hard = tf.cast(hard, tf.float32)
        total = self.alpha * soft + (1.0 - self.alpha) * hard
        if self.student.losses:
            # Regularizers, already per replica as Keras' own losses are.
            extra = tf.add_n([tf.cast(t, tf.float32) for t in self.student.losses])
            total = total + kd_losses._scale_for_distribution(extra)
        return total, hard, soft

    def _update_trackers(self, x, y, student_out, sample_weight, total, hard, soft):
        batch = tf.shape(tf.nest.flatten(self.split_inputs(x)[1])[0])[0]
        for tracker, value in (
            (self._loss_tracker, total),
            (self.student_loss_tracker, hard),
            (self.distillation_loss_tracker, soft),
        ):
            tracker.update_state(kd_losses._unscale_for_distribution(value), sample_weight=batch)
        if y is None:
            return self.get_metrics_result()
        return self.compute_metrics(
            x, y, _select(student_out, self.label_output), sample_weight=sample_weight
        )

    def _logs_for_strategy(self, logs):
        # Under MultiWorkerMirroredStrategy, Keras 3 (3.15) averages every
        # step log over the workers with `strategy.reduce("MEAN", v, axis=0)`,
        # which fails on the scalars that metrics give (tensorflow#72388).
        # Shape [1] gives it its axis and comes out a scalar; the values are
        # the same in every replica anyway (metric variables are synchronized).
        if not _multi_worker(self.distribute_strategy):
            return logs
        return keras.tree.map_structure(
            lambda v: tf.reshape(v, [1]) if tf.convert_to_tensor(v).shape.rank == 0 else v, logs
        )

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; under `MultiWorkerMirroredStrategy`, a worker that dies
        stops the others with one `kd_keras.distribute.WorkerLostError` naming it
        (`kd_keras.distribute.peers_needed`), not a hang or a TensorFlow traceback."""
        with distribute.peers_needed(self.distribute_strategy):
            return super().fit(*args, **kwargs)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, student_x, _ = self.split_inputs(x)
        teacher_out = self.teacher_outputs(x)  # outside the tape
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            student_out = self.student(student_x, training=True)
            total, hard, soft = self._compute_losses(y, teacher_out, student_out, sample_weight)
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        logs = self._update_trackers(x, y, student_out, sample_weight, total, hard, soft)
        return self._logs_for_strategy(logs)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, student_x, _ = self.split_inputs(x)
        teacher_out = self.teacher_outputs(x)
        student_out = self.student(student_x, training=False)
        total, hard, soft = self._compute_losses(y, teacher_out, student_out, sample_weight)
        logs = self._update_trackers(x, y, student_out, sample_weight, total, hard, soft)
        return self._logs_for_strategy(logs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy, Keras 3 (3.15, TF backend) builds the
        # model from a first batch, read through an extra iterator over the
        # data and averaged over the replicas (`strategy.reduce`), only for its
        # shapes and dtypes. The extra pass advances a reshuffling
        # `tf.data` shuffle (the training would not see one process's batches)
        # and, under MultiWorkerMirroredStrategy, the reduce fails on dict
        # inputs (keras-team/keras#20329), as every batch of cached teacher
        # outputs is. The dataset's element spec has the shapes and dtypes.
        if self._distribute_strategy is not None and iterator is not None and data_batch is None:
            dataset = iterator.data_adapter.get_tf_dataset()
            if isinstance(dataset, tf.data.Dataset):
                return super()._maybe_symbolic_build(data_batch=dataset.element_spec)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # === Config ===

    def get_config(self):
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher_outputs_key": self.teacher_outputs_key,
            "distill_output": self.distill_output,
            "label_output": self.label_output,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)
