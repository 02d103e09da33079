"""Loading a Hugging Face model and tokenizer, and the facts strata records about them."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from store.errors import StrataError, first_line

#: Model families whose position ids start after the padding index, so two
#: of their position embeddings are never usable (RoBERTa-style offset).
PADDING_OFFSET_FAMILIES = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}

#: Tokenizers report "no limit" as a huge sentinel such as 1e30.
_NO_LIMIT = 1_000_000


#: Seconds a connection to the Hugging Face endpoint may take before strata treats it as offline.
HUB_CONNECT_TIMEOUT = 3.0


def _looks_like_path(name: str) -> bool:
    return str(name).startswith((".", "/", "~")) or Path(name).exists()


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the hub is not to be asked (``HF_HUB_OFFLINE`` set, or its host cannot be reached), else ``None``.

    Asked once per process, by a plain TCP connection: on a machine without network,
    huggingface_hub retries every request five times with back-off (27 s of warnings
    before the error, measured with a hub id on a machine with no DNS), and it has no call
    that tells "offline" apart up front.  Behind a proxy the direct connection says
    nothing, so strata then assumes the hub is reachable and lets the hub client decide."""
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if url.scheme in urllib.request.getproxies():
        return None
    try:
        socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError:
        return f"{host} cannot be reached"
    return None


def _hub_options(name: str) -> tuple[dict, str]:
    """``from_pretrained`` options for ``name`` and what to add to a failure: a hub id while
    the hub is unreachable is loaded from the local cache only (no retries)."""
    if _looks_like_path(name):
        return {}, ""
    reason = hub_unreachable()
    if reason is None:
        return {}, ""
    return {"local_files_only": True}, f" ({reason}, so only the local Hugging Face cache was read)"


def load_config(name: str):
    """The model's config, or a one-line error naming ``--model``."""
    from transformers import AutoConfig

    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise StrataError(f"--model: no such directory: {name}")
    options, offline = _hub_options(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False, **options)
    except Exception as e:  # transformers raises many types; the message is what matters
        raise StrataError(f"--model: cannot load {name!r}{offline}: {first_line(e)}") from None


def load_tokenizer(name: str):
    """A fast tokenizer (word ids are needed to map subwords back to words).

    Byte-level BPE tokenizers (GPT-2, RoBERTa) need ``add_prefix_space`` to
    tokenize pre-split words the way they tokenize running text.
    """
    from transformers import AutoTokenizer

    options, offline = _hub_options(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False, **options)
        if getattr(tok, "add_prefix_space", None) is False:
            tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False, add_prefix_space=True, **options)
    except Exception as e:
        raise StrataError(f"--model: cannot load the tokenizer of {name!r}{offline}: {first_line(e)}") from None
    if not tok.is_fast:
        raise StrataError(f"--model: {name!r} has no fast tokenizer; strata needs one to map subwords to words")
    _byte_level_prefix_space(tok)
    # Without tokenizer files transformers still builds the config's tokenizer
    # class with only its special tokens, which turns every word into [UNK] (or
    # into nothing): a store of garbage with no warning.
    if not set(tok.get_vocab()) - set(tok.all_special_tokens):
        raise StrataError(f"--model: {name!r} has no tokenizer: its vocabulary holds only special tokens "
                          "(tokenizer.json or the vocabulary files are missing)")
    return tok


def load_pretrained(name: str):
    """The pretrained model in eval mode on the CPU, in float32."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # strata shows its own progress bar
    options, offline = _hub_options(name)
    try:
        model = AutoModel.from_pretrained(name, trust_remote_code=False, dtype=torch.float32, **options)
    except Exception as e:
        raise StrataError(f"--model: cannot load {name!r}{offline}: {first_line(e)}") from None
    return model.eval()


def _set_prefix_space(node) -> bool:
    """Turn on ``add_prefix_space`` in every ByteLevel step of a pre-tokenizer's JSON; True if any was off."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
        node["add_prefix_space"] = True
        return True
    return any([_set_prefix_space(step) for step in node.get("pretokenizers") or []])


def _byte_level_prefix_space(tok) -> None:
    """Give a byte-level BPE backend the space before every pre-split word.

    Reloading with ``add_prefix_space=True`` (above) does it for GPT-2's and RoBERTa's
    tokenizer classes; a tokenizer saved with the generic fast class only records the flag
    and leaves its backend's ByteLevel step without it, so every word of
    ``is_split_into_words`` input lost its leading space ("The cat" became "T he c at":
    other tokens, other vectors, no warning).  The backend's own pre-tokenizer is set here,
    through the ``tokenizers`` JSON that describes it."""
    from tokenizers import Tokenizer

    backend = tok.backend_tokenizer
    doc = json.loads(backend.to_str())
    if _set_prefix_space(doc.get("pre_tokenizer")):
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(doc)).pre_tokenizer


def load_model(name: str, device: str):
    """The model in eval mode on ``device``, with hidden states of every layer."""
    return to_device(load_pretrained(name), device)


def weights_sha256(model) -> str:
    """Hash of every tensor of the model's state dict: name, dtype, shape and bytes, by name.

    The weights a store's activations come from, so that a resume refuses a model
    directory whose weights changed since the crash (a retrained checkpoint under the
    same path).  The loaded tensors, not the files: which files ``from_pretrained``
    read (safetensors or bin, sharded or not, a hub snapshot) is its business, and
    the same weights saved another way are the same weights.  About 1 GB/s.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def to_device(model, device: str):
    """``model.to(device)``, with a one-line error when it does not fit or the device fails."""
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as e:  # torch: CUDA out of memory, bad ordinal, no CUDA build
        raise StrataError(f"--device: cannot move the model to {device}: {first_line(e)}") from None


def n_layers(config) -> int:
    """Number of transformer layers (hidden states = this + 1 for the embeddings)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise StrataError(f"--model: cannot tell how many layers {config.model_type!r} has")


def attention_heads(config) -> int:
    for key in ("num_attention_heads", "n_head", "num_heads"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise StrataError(f"--attention: cannot tell how many attention heads {config.model_type!r} has")


def hidden_size(config) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise StrataError(f"--model: cannot tell the hidden size of {config.model_type!r}")


def max_positions(config, tokenizer) -> int | None:
    """Longest input (special tokens included) the model accepts, or None."""
    limits = []
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            if config.model_type in PADDING_OFFSET_FAMILIES:
                pad = getattr(config, "pad_token_id", None)
                value -= (pad if isinstance(pad, int) else 1) + 1  # positions start at pad + 1
            limits.append(value)
            break
    if 0 < tokenizer.model_max_length < _NO_LIMIT:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


#: Config keys that say where the model was loaded from, not what it is.
_PATH_KEYS = ("_name_or_path", "name_or_path")


def _without_paths(value):
    """The config dict without path keys, also in nested sub-configs."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in _PATH_KEYS}
    return value


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def config_sha256(config) -> str:
    """Hash of the config's JSON with sorted keys (the architecture's identity).

    The path the config was loaded from is left out: the same model given as
    ``bert``, ``./bert`` or from another working directory has one hash.
    """
    return _sha256_json(_without_paths(config.to_dict()))


def legacy_config_sha256(config, name_or_path: str) -> str:
    """The hash strata recorded before it left the path out: the whole config, with
    ``_name_or_path`` the ``--model`` string of that run (so those stores still resume)."""
    return _sha256_json({**config.to_dict(), "_name_or_path": name_or_path})


def model_identity(name: str) -> str:
    """What ``--model`` names, whatever its spelling: a local directory's resolved
    absolute path (transformers loads any existing directory as local), else the hub id."""
    path = Path(name)
    return str(path.resolve()) if path.is_dir() else name


def same_model(recorded: str | None, given: str) -> bool:
    """Does ``--model given`` name the model a store recorded?  Stores from before
    ``model_identity`` recorded the string as typed, so it is resolved here (from
    the current directory) too."""
    return recorded == given or (recorded is not None and model_identity(recorded) == model_identity(given))


