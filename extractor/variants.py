"""Model variants at extraction: the controls a probing study compares against.

``--variant`` changes the model after loading, one variant per store, and the
store records it (parameters and provenance), so a resume with another variant
is refused and ``strata compare`` can say what it compared:

``random-init``
    The same architecture with fresh weights from the model's own initializer
    (the randomized-model baseline of Merchant et al. 2020, seed ``003_*``).
``reinit:K-``
    Blocks K..L re-initialized, blocks below K kept (Tamkin et al. 2020's
    progressive re-initialization, seed ``004_*``); layer ids are hidden-state
    indices, so layer K is the output of block K and ``reinit:1-`` keeps only
    the embeddings.
``reinit:I-J``
    Blocks I..J re-initialized, the others kept.
``permute:SEED``
    The blocks applied in a seeded random order (a permutation that moves at
    least one block when there are two or more).
``truncate:K``
    Only the first K blocks: hidden states 0..K.  (GPT-2's final layer norm
    then applies to block K's output, as transformers does for the last block.)

Randomness comes from ``torch.manual_seed(--variant-seed)`` inside a forked RNG
state, so every process of a multi-process run builds the same weights and the
same command gives the same store.  Re-initialization uses the model's own
``_init_weights`` (what ``from_pretrained`` uses for missing weights), module by
module with children before their parents (stores record ``reinit_order``), after
clearing the marks transformers puts on loaded weights.  Models that share one set
of weights across layers (ALBERT) have no per-layer blocks to change; they are
refused except for ``random-init``.

Against Tamkin et al.: their progressive ``k`` (the first k blocks kept, every block
after re-initialized; k = 0 keeps only the embeddings) is our ``reinit:(k+1)-``, and
their BERT re-initialization draws a truncated normal
(std 0.02, cut at +-0.04) where BERT's own ``_init_weights`` draws an untruncated
normal (std 0.02): the same scale, about 4.6% of draws beyond the cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from store.errors import StrataError

KINDS = ("random-init", "reinit", "permute", "truncate")
_SYNTAX = "random-init, reinit:K-, reinit:I-J, permute:SEED or truncate:K"


@dataclass(frozen=True)
class Variant:
    kind: str
    first: int | None = None  # reinit: first re-initialized layer (1-based block id)
    last: int | None = None  # reinit: last one (None: to the top)
    seed: int = 0  # random-init / reinit weights; permute: the permutation
    keep: int | None = None  # truncate: blocks kept

    def spec(self) -> str:
        """Canonical text, recorded in the store."""
        if self.kind == "random-init":
            return "random-init"
        if self.kind == "reinit":
            return f"reinit:{self.first}-{'' if self.last is None else self.last}"
        if self.kind == "permute":
            return f"permute:{self.seed}"
        return f"truncate:{self.keep}"


def parse_variant(text: str | None, seed: int | None = None) -> Variant | None:
    """``--variant`` text (and ``--variant-seed``, None when not given: 0) to a :class:`Variant`, or None."""
    if seed is not None and not 0 <= seed < 2**64:  # torch.manual_seed's range
        raise StrataError(f"--variant-seed: must be >= 0 and < 2**64, got {seed}")
    if text is None or text == "none":
        if seed is not None:
            raise StrataError("--variant-seed: given without a --variant that draws weights (random-init or reinit:...)")
        return None
    bad = StrataError(f"--variant: {text!r} is not one of {_SYNTAX}")
    if seed is not None and text.partition(":")[0] in ("permute", "truncate"):
        raise StrataError(f"--variant-seed: --variant {text} draws no weights from it (permute's seed is its "
                          "PERMUTE:SEED, truncate has none)")
    seed = 0 if seed is None else seed
    if text == "random-init":
        return Variant("random-init", seed=seed)
    kind, _, arg = text.partition(":")
    if kind == "reinit":
        m = re.fullmatch(r"(\d+)-(\d*)", arg)
        if not m:
            raise bad
        first, last = int(m.group(1)), int(m.group(2)) if m.group(2) else None
        if first < 1 or (last is not None and last < first):
            raise StrataError(f"--variant: {text!r} needs 1 <= I <= J (layer ids of blocks; 0 is the embeddings)")
        return Variant("reinit", first=first, last=last, seed=seed)
    if kind in ("permute", "truncate") and re.fullmatch(r"\d+", arg):
        return Variant("permute", seed=int(arg)) if kind == "permute" else Variant("truncate", keep=int(arg))
    raise bad


def blocks_of(model, n_blocks: int, name: str):
    """The ``nn.ModuleList`` of the model's transformer blocks (found by its length)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_blocks]
    if len(lists) != 1:
        raise StrataError(f"--variant: cannot find the {n_blocks} transformer blocks of {name} "
                          "(layers shared across depth, e.g. ALBERT, have none); only random-init applies")
    return lists[0]


def check_variant(variant: Variant, n_blocks: int, name: str) -> None:
    """Refuse block ids beyond the model's depth before anything is loaded."""
    top = {"reinit": variant.last or variant.first, "truncate": variant.keep}.get(variant.kind)
    if top is not None and not 1 <= top <= n_blocks:
        raise StrataError(f"--variant: {variant.spec()} asks for block {top}, but {name} has blocks 1..{n_blocks}")


def variant_config(config, variant: Variant | None):
    """The config the variant's model has (truncate changes the depth)."""
    if variant is None or variant.kind != "truncate":
        return config
    config = config.__class__.from_dict(config.to_dict())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, variant.keep)
    return config


def permutation(n_blocks: int, seed: int) -> list[int]:
    """The block order of ``permute:SEED`` (never the identity when n >= 2)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_blocks)
    while n_blocks >= 2 and (order == np.arange(n_blocks)).all():
        order = rng.permutation(n_blocks)
    return [int(i) for i in order]


def _forget_initialized(module) -> None:
    """Clear transformers' ``_is_hf_initialized`` marks (set on every loaded weight),
    without which ``_init_weights`` leaves loaded weights untouched."""
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False), module]:
        if getattr(tensor, "_is_hf_initialized", False):
            tensor._is_hf_initialized = False


def build_model(load, config, variant: Variant | None, n_blocks: int, name: str):
    """The model to extract from: ``load()`` (the pretrained model), changed by ``variant``."""
    import torch
    from transformers import AutoModel

    if variant is None:
        return load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(variant.seed)
        if variant.kind == "random-init":
            return AutoModel.from_config(config, trust_remote_code=False).eval()
        model = load()
        blocks = blocks_of(model, n_blocks, name)
        if variant.kind == "reinit":
            last = variant.last or n_blocks
            with torch.no_grad():
                for block in blocks[variant.first - 1:last]:
                    # Children before parents (nn.Module.apply), as transformers' own initialization
                    # goes: a parent's _init_weights may overwrite a child's (GPT-2 rescales c_proj to
                    # 0.02/sqrt(2 n_layer) from GPT2Attention/GPT2MLP), and parents first would undo it.
                    block.apply(lambda module: (_forget_initialized(module), model._init_weights(module)))
        elif variant.kind == "permute":
            order = permutation(n_blocks, variant.seed)
            reordered = [blocks[i] for i in order]
            for position, block in enumerate(reordered):
                blocks[position] = block
        else:  # truncate
            del blocks[variant.keep:]
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                if isinstance(getattr(model.config, key, None), int):
                    setattr(model.config, key, variant.keep)
    return model
