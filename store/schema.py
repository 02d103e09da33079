"""Names, dimensions and version of the strata store format (see store/SCHEMA.md).

A store is one Zarr v3 group.  Every array sits at the group root so that
``xarray.open_zarr(path)`` shows the whole store as one Dataset; arrays that
share a dimension name share its length.  Bookkeeping (the per-unit resume
manifest, staging areas) lives in the ``manifest`` and ``staging`` subgroups,
which are ordinary Zarr groups too, so plain zarr lists the store without
warnings.
"""

SCHEMA_VERSION = 1

#: Root attribute holding everything strata records about a store.
ROOT_ATTR = "strata"

# --- model-dependent arrays (written unit by unit) -------------------------
ACTIVATIONS = "activations"  # (layer, token, neuron) float16|float32
ACTIVATION_DIMS = ("layer", "token", "neuron")

# --- sentence-pooled arrays (written once all units are done) --------------
POOL_KINDS = ("cls", "mean")
POOLED_DIMS = ("layer", "sentence", "neuron")


# --- attention rows (written once all units are done, like pooled arrays) --
ATTENTION_CLS = "attention_cls"  # (block, sentence, head, position): the CLS token's attention row
ATTENTION_DIMS = ("block", "sentence", "head", "position")


def pooled_name(kind: str) -> str:
    """Array name of one pooling kind, e.g. ``pooled_cls``."""
    return f"pooled_{kind}"


# --- corpus-derived arrays (written at creation) ---------------------------
LAYER = "layer"  # (layer,) int16: model layer index, 0 = embedding output
SENTENCE_OFFSETS = "sentence_offsets"  # (sentence_edge,) int64, n_sentences + 1
SENTENCE_SKIPPED = "sentence_skipped"  # (sentence,) bool: too long for the model
TOKEN_SENTENCE = "token_sentence"  # (token,) int32: sentence of each token
TOKEN_WORD = "token_word"  # (token,) int32: index of the word within its sentence
TOKEN_TEXT = "token_text"  # (token,) string: the word, or the subword piece

TOKEN_LABEL_PREFIX = "label_"  # label_<name>: (token,) int16 class codes
SENTENCE_LABEL_PREFIX = "sentence_label_"  # sentence_label_<name>: (sentence,) int16

# --- bookkeeping groups -----------------------------------------------------
MANIFEST = "manifest"
STAGING = "staging"
PLAN_RECORD = "plan"  # manifest/plan: written last during creation
FINAL_RECORD = "final"  # manifest/final: pooled arrays written and checksummed
METADATA_RECORD = "metadata"  # manifest/metadata: every zarr.json and the root attributes, at finalize
METADATA_FILE = "zarr.json"  # a node's metadata (attributes, array shape, dtype, codecs)


def unit_record(unit: int) -> str:
    """Manifest entry of one unit of work (= one activation shard)."""
    return f"unit_{unit:07d}"


def token_label_name(name: str) -> str:
    return TOKEN_LABEL_PREFIX + name


def sentence_label_name(name: str) -> str:
    return SENTENCE_LABEL_PREFIX + name
