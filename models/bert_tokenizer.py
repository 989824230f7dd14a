"""`BertPreprocessor`: strings to BERT inputs, as the Hugging Face tokenizer does it.

Everything runs in TensorFlow graph ops (`tf.strings` and `tensorflow_text`),
so the layer works eagerly, inside `tf.data`, and inside an exported
`tf.saved_model` that takes `tf.string` inputs.
"""

import json
import pathlib

import keras
import tensorflow as tf
import tensorflow_text as tf_text

__all__ = ["BertPreprocessor", "load_tokenizer_json_vocabulary", "load_vocabulary"]

# Whitespace as Rust's `char::is_whitespace` (the Unicode White_Space
# property) defines it, which the HF BERT normalizer and pre-tokenizer use.
_WHITESPACE = r"[\t-\r \x{85}]|\p{Z}"
# BERT punctuation: all non-alphanumeric printable ASCII plus Unicode `P*`.
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|\p{P}"
# CJK ideographs, each its own word (Google BERT's `_is_chinese_char`).
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# Removed by `clean_text`: NUL, U+FFFD and "other" characters (Cc, Cf, Co);
# tab, newline and carriage return are mapped to spaces first.
_REMOVED = r"[\x00\x{FFFD}\p{Cc}\p{Cf}\p{Co}]"


def load_vocabulary(path):
    """Reads a WordPiece `vocab.txt` (one token a line, id = line number).

    Args:
        path: path of the vocabulary file.

    Returns:
        The list of tokens.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"Vocabulary file not found: {path}") from None
    except UnicodeDecodeError as e:
        line = text_line_of_offset(path.read_bytes(), e.start)
        raise ValueError(f"{path}, line {line}: not valid UTF-8 ({e.reason}).") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise ValueError(f"Vocabulary file is empty: {path}")
    return tokens


def load_tokenizer_json_vocabulary(path):
    """Reads the WordPiece vocabulary of a Hugging Face `tokenizer.json`.

    Args:
        path: path of the `tokenizer.json` (a `WordPiece` model whose `vocab`
            maps tokens to ids `0 .. N-1`, `##` continuation prefix).

    Returns:
        The list of tokens, in id order.
    """
    path = pathlib.Path(path)
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Tokenizer file not found: {path}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable tokenizer.json ({e}).") from None
    model = tokenizer.get("model") if isinstance(tokenizer, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict) or model.get("type", "WordPiece") != "WordPiece":
        raise ValueError(f"{path}: expected a WordPiece model with a `vocab` dict.")
    if model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path}: only the `##` continuing-subword prefix is supported.")
    if not vocab:
        raise ValueError(f"{path}: the vocabulary is empty.")
    by_id = {}
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i in by_id:
            raise ValueError(f"{path}: token {token!r} has an invalid or repeated id {i!r}.")
        by_id[i] = token
    missing = next((i for i in range(len(by_id)) if i not in by_id), None)
    if missing is not None:
        raise ValueError(
            f"{path}: vocabulary ids are not contiguous (no token has id {missing}; "
            f"{len(by_id)} tokens, ids up to {max(by_id)})."
        )
    return [by_id[i] for i in range(len(by_id))]


def text_line_of_offset(data, offset):
    """1-based line number of byte `offset` in `data`."""
    return data.count(b"\n", 0, offset) + 1


@keras.saving.register_keras_serializable(package="kd_keras")
class BertPreprocessor(keras.layers.Layer):
    """Tokenizes and packs strings into BERT inputs, exactly as HF BERT does.

    The steps, and their order, are those of the Hugging Face `tokenizers`
    `BertNormalizer` + `BertPreTokenizer` + `WordPiece` pipeline (the "fast"
    tokenizer that `transformers` and `sentence-transformers` use):

    1. special tokens written literally in the text (`"[MASK]"`) are kept as
       they are (case-sensitive), like HF's non-normalized added tokens;
    2. `clean_text`: tab/newline/CR become spaces; NUL, U+FFFD and control,
       format and private-use characters are removed; other Unicode
       whitespace becomes a space;
    3. each CJK ideograph is surrounded by spaces;
    4. accents are stripped (NFD, then drop `\\p{Mn}`) when `strip_accents`,
       or when it is `None` and `lowercase` (the BERT default);
    5. lowercasing, per character (so a final capital sigma becomes `σ`, not
       `ς`) and without NFKC folding (`"…"` stays `"…"`, `"ß"` stays `"ß"`);
    6. split on whitespace and punctuation, keeping punctuation as words;
    7. WordPiece, greedy longest match first; a word longer than
       `max_chars_per_word` characters, or one that cannot be covered by the
       vocabulary, becomes a single `unk_token`.

    Then `[CLS] a [SEP]` (or `[CLS] a [SEP] b [SEP]` for pairs, segment ids 0
    then 1) truncated to `sequence_length` tokens. Pairs are truncated as HF's
    `longest_first`: the shorter side keeps `min(len, budget // 2)` tokens
    (the first side on ties) and the longer side the rest.

    Known differences from HF: unassigned code points (category `Cn`), which
    HF removes, are kept here (RE2 has no `Cn` class).

    Args:
        vocabulary: list of tokens (id = position) or a path to `vocab.txt`.
        sequence_length: int. Maximum length of the packed inputs, special
            tokens included. Calling the layer pads to exactly this length.
        lowercase: bool. Lowercase the text (uncased models).
        strip_accents: `None` or bool. Strip accents; `None` follows
            `lowercase`.
        tokenize_chinese_chars: bool. Split every CJK ideograph into its own
            word.
        clean_text: bool. Remove control characters and normalize whitespace.
        max_chars_per_word: int. Longer words become `unk_token`.
        unk_token, cls_token, sep_token, pad_token, mask_token: str. The
            special tokens; `mask_token` may be `None`.

    Call arguments:
        inputs: a string tensor `[batch]`, a list of strings or a string;
            or a *tuple* of two of them for sentence pairs (`(first,
            second)`; a list is always a batch of single sentences).

    Returns:
        A dict of int32 tensors `token_ids`, `segment_ids`, `padding_mask`,
        each `[batch, sequence_length]`.
    """

    def __init__(
        self,
        vocabulary,
        sequence_length=512,
        lowercase=True,
        strip_accents=None,
        tokenize_chinese_chars=True,
        clean_text=True,
        max_chars_per_word=100,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vocabulary, (str, pathlib.Path)):
            vocabulary = load_vocabulary(vocabulary)
        self.vocabulary = [str(t) for t in vocabulary]
        if int(sequence_length) < 2:
            raise ValueError(f"`sequence_length` must be at least 2; received {sequence_length}.")
        self.sequence_length = int(sequence_length)
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.clean_text = bool(clean_text)
        self.max_chars_per_word = int(max_chars_per_word)
        self.unk_token = unk_token
        self.cls_token = cls_token
        self.sep_token = sep_token
        self.pad_token = pad_token
        self.mask_token = mask_token

        token_to_id = {}
        for i, token in enumerate(self.vocabulary):
            token_to_id.setdefault(token, i)
        self.special_tokens = [
            t for t in (pad_token, unk_token, cls_token, sep_token, mask_token) if t is not None
        ]
        for token in self.special_tokens:
            if token not in token_to_id:
                raise ValueError(f"Special token {token!r} is not in the vocabulary.")
        self.cls_token_id = token_to_id[cls_token]
        self.sep_token_id = token_to_id[sep_token]
        self.pad_token_id = token_to_id[pad_token]
        self.unk_token_id = token_to_id[unk_token]
        self._special_pattern = "|".join(
            _escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)
        )
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=self.vocabulary,
            suffix_indicator="##",
            # Word length is limited in characters below, as HF does.
            max_bytes_per_word=4 * self.max_chars_per_word + 4,
            token_out_type=tf.int32,
            unknown_token=unk_token,
            no_pretokenization=True,
        )
        # ASCII text without a special token's first character is split and
        # WordPiece-tokenized by one op (BERT's whitespace and punctuation
        # split, done in C++), after the same cleaning and lowercasing: on
        # such text it is exactly the steps below, and several times faster.
        # A word longer than `max_chars_per_word` characters (= bytes) still
        # becomes `unk_token`.
        firsts = {t[0] for t in self.special_tokens}
        self._simple_pattern = (
            "[" + "".join(f"\\x{c:02x}" for c in range(128) if chr(c) not in firsts) + "]*"
        )
        self._wordpiece_text = tf_text.FastWordpieceTokenizer(
            vocab=self.vocabulary,
            suffix_indicator="##",
            max_bytes_per_word=self.max_chars_per_word,
            token_out_type=tf.int32,
            unknown_token=unk_token,
            no_pretokenization=False,
        )

    # === Text normalization ===

    def _normalize(self, text):
        """The `BertNormalizer` steps on a 1-D string tensor."""
        if self.clean_text:
            text = tf.strings.regex_replace(text, r"[\t\n\r]", " ")
            text = tf.strings.regex_replace(text, _REMOVED, "")
            text = tf.strings.regex_replace(text, _WHITESPACE, " ")
        if self.tokenize_chinese_chars:
            text = tf.strings.regex_replace(text, _CJK, r" \0 ")
        strip = self.lowercase if self.strip_accents is None else self.strip_accents
        if strip:
            text = tf_text.normalize_utf8(text, "NFD")
            text = tf.strings.regex_replace(text, r"\p{Mn}", "")
        if self.lowercase:
            # `tf.strings.lower` applies the context-dependent final-sigma
            # rule; HF lowercases character by character, so map it first.
            text = tf.strings.regex_replace(text, "Σ", "σ")
            text = tf.strings.lower(text, encoding="utf-8")
        return text

    def _words(self, text):
        """Normalized, split words of a 1-D string tensor: ragged `[n, words]`."""
        text = self._normalize(text)
        delimiters = _WHITESPACE + "|" + _PUNCTUATION
        words = tf_text.regex_split(
            text, delim_regex_pattern=delimiters, keep_delim_regex_pattern=_PUNCTUATION
        )
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        return words.with_flat_values(
            tf.where(too_long, tf.constant(self.unk_token), words.flat_values)
        )

    # === Public API ===

    def tokenize(self, texts):
        """WordPiece ids of each text, without special tokens or truncation.

        Args:
            texts: a string, a list of strings, or a 1-D string tensor.

        Returns:
            An int32 `tf.RaggedTensor` `[batch, None]`.
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        if texts.shape.rank == 0:
            texts = texts[tf.newaxis]
        if not self.clean_text:
            return self._tokenize_any(texts)
        simple = tf.cast(tf.strings.regex_full_match(texts, self._simple_pattern), tf.int32)
        rows = tf.dynamic_partition(tf.range(tf.size(texts)), simple, 2)
        other, ascii_text = tf.dynamic_partition(texts, simple, 2)
        ascii_text = tf.strings.regex_replace(ascii_text, r"[\t\n\r]", " ")
        ascii_text = tf.strings.regex_replace(ascii_text, r"[\x00-\x1f\x7f]", "")
        if self.lowercase:
            ascii_text = tf.strings.lower(ascii_text)
        ids = tf.concat(
            [self._tokenize_any(other), self._wordpiece_text.tokenize(ascii_text)], axis=0
        )
        return tf.gather(ids, tf.math.invert_permutation(tf.concat(rows, axis=0)))

    def _tokenize_any(self, texts):
        """`tokenize` of any 1-D string tensor, step by step."""
        if self.clean_text:
            # Dropped here already: `regex_split` would end the text at a NUL.
            texts = tf.strings.regex_replace(texts, r"\x00", "")
        # Split out literal special tokens first, so that they are neither
        # normalized nor split (HF keeps them as single tokens).
        pieces = tf_text.regex_split(
            texts,
            delim_regex_pattern=self._special_pattern,
            keep_delim_regex_pattern=self._special_pattern,
        )
        flat = pieces.flat_values
        is_special = tf.strings.regex_full_match(flat, self._special_pattern)
        words = self._words(flat)
        keep = tf.ones_like(words, dtype=tf.bool) & tf.logical_not(is_special)[:, tf.newaxis]
        words = tf.concat(
            [
                tf.ragged.boolean_mask(words, keep),
                tf.ragged.boolean_mask(flat[:, tf.newaxis], is_special[:, tf.newaxis]),
            ],
            axis=1,
        )
        ids = self._wordpiece.tokenize(words).merge_dims(1, 2)
        ids = tf.RaggedTensor.from_row_splits(ids, pieces.row_splits)
        return ids.merge_dims(1, 2)

    def pack(self, first, second=None, sequence_length=None, pad_to=None):
        """Adds special tokens, truncates and pads token ids.

        Args:
            first: ragged int `[batch, None]` ids of the first segments
                (from `tokenize`).
            second: optional ragged ids of the second segments.
            sequence_length: maximum packed length; defaults to the layer's.
            pad_to: `None` to pad to the longest packed row of the batch
                (dynamic padding), or an int length to pad to.

        Returns:
            A dict of int32 tensors `token_ids`, `segment_ids`,
            `padding_mask`, `[batch, length]`.
        """
        max_length = int(sequence_length or self.sequence_length)
        first = tf.cast(first, tf.int32)
        batch = first.nrows()
        cls = tf.fill([batch, 1], self.cls_token_id)
        sep = tf.fill([batch, 1], self.sep_token_id)
        cls = tf.RaggedTensor.from_tensor(cls)
        sep = tf.RaggedTensor.from_tensor(sep)
        if second is None:
            first = first[:, : max_length - 2]
            ids = tf.concat([cls, first, sep], axis=1)
            segments = tf.zeros_like(ids)
        else:
            second = tf.cast(second, tf.int32)
            keep_first, keep_second = _longest_first_lengths(
                first.row_lengths(), second.row_lengths(), max_length - 3
            )
            first = _truncate_rows(first, keep_first)
            second = _truncate_rows(second, keep_second)
            ids = tf.concat([cls, first, sep, second, sep], axis=1)
            segments = tf.concat(
                [
                    tf.zeros_like(tf.concat([cls, first, sep], axis=1)),
                    tf.ones_like(tf.concat([second, sep], axis=1)),
                ],
                axis=1,
            )
        shape = None if pad_to is None else [None, int(pad_to)]
        token_ids = ids.to_tensor(default_value=self.pad_token_id, shape=shape)
        mask = tf.ones_like(ids).to_tensor(default_value=0, shape=shape)
        return {
            "token_ids": token_ids,
            "segment_ids": segments.to_tensor(default_value=0, shape=shape),
            "padding_mask": mask,
        }

    def __call__(self, inputs, *args, **kwargs):
        # Keras only takes tensors positionally: convert Python strings.
        if isinstance(inputs, tuple):
            inputs = tuple(_to_string_tensor(x) for x in inputs)
        else:
            inputs = _to_string_tensor(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        if isinstance(inputs, tuple):
            if len(inputs) != 2:
                raise ValueError(
                    "A tuple input is a sentence pair `(first, second)`; "
                    f"received a tuple of {len(inputs)} elements."
                )
            first, second = (self.tokenize(x) for x in inputs)
        else:
            first, second = self.tokenize(inputs), None
        return self.pack(first, second, pad_to=self.sequence_length)

    def compute_output_spec(self, inputs):
        batch = None
        shape = (batch, self.sequence_length)
        return {
            "token_ids": keras.KerasTensor(shape, dtype="int32"),
            "segment_ids": keras.KerasTensor(shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(shape, dtype="int32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": self.vocabulary,
                "sequence_length": self.sequence_length,
                "lowercase": self.lowercase,
                "strip_accents": self.strip_accents,
                "tokenize_chinese_chars": self.tokenize_chinese_chars,
                "clean_text": self.clean_text,
                "max_chars_per_word": self.max_chars_per_word,
                "unk_token": self.unk_token,
                "cls_token": self.cls_token,
                "sep_token": self.sep_token,
                "pad_token": self.pad_token,
                "mask_token": self.mask_token,
            }
        )
        return config


def _escape(token):
    """`token` as an RE2 literal."""
    return "".join("\\" + c if not c.isalnum() else c for c in token)


def _to_string_tensor(x):
    if isinstance(x, (str, bytes, list)):
        return tf.convert_to_tensor(x, dtype=tf.string)
    return x


def _longest_first_lengths(length_a, length_b, budget):
    """Kept lengths under HF's `longest_first` pair truncation."""
    length_a = tf.cast(length_a, tf.int64)
    length_b = tf.cast(length_b, tf.int64)
    budget = tf.constant(budget, tf.int64)
    fits = length_a + length_b <= budget
    a_is_short = length_a <= length_b
    short = tf.minimum(tf.where(a_is_short, length_a, length_b), budget // 2)
    keep_a = tf.where(a_is_short, short, budget - short)
    keep_b = tf.where(a_is_short, budget - short, short)
    return tf.where(fits, length_a, keep_a), tf.where(fits, length_b, keep_b)


def _truncate_rows(ragged, lengths):
    positions = tf.ragged.range(ragged.row_lengths())
    return tf.ragged.boolean_mask(ragged, positions < lengths[:, tf.newaxis])
