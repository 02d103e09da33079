"""One batched forward pass, and the vectors strata keeps from it.

All the gathering is vectorised over the batch: one index into the hidden
states picks every stored token's subword (first/last/subword), one
``index_add_`` averages subwords for ``mean`` and for mean pooling, and the
cast to the stored dtype and its range check happen once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from extractor.alignment import cls_position, subword_positions

FLOAT16_MAX = 65504.0


@dataclass
class BatchOutput:
    tokens: torch.Tensor  # float32 (layer, stored tokens of the batch's sentences in batch order, neuron)
    sizes: np.ndarray  # stored tokens per sentence of the batch
    pooled: dict[str, torch.Tensor]  # kind -> float32 (layer, sentence, neuron)
    attention: torch.Tensor | None = None  # float32 (block, sentence, head, padded position): CLS rows


class OutOfRange(Exception):
    """Activations that the stored dtype cannot hold (inf/NaN, or beyond float16)."""

    def __init__(self, what: str, layer: int, row: int, value: float):
        super().__init__(what)
        self.what, self.layer, self.row, self.value = what, layer, row, value


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values[:, j]`` over j with the same ``segment[j]`` -> (L, n, H)."""
    total = values.new_zeros(values.shape[0], n, values.shape[2]).index_add_(1, segment, values)
    count = torch.bincount(segment, minlength=n).clamp_min(1).to(values.dtype)
    return total / count[None, :, None]


def to_stored(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast (layer, row, neuron) values for storage; raise ``OutOfRange`` rather
    than store inf, NaN, or a float16 overflow."""
    if not values.numel():
        return values.to(dtype)
    # max |x| per (layer, row) from two reductions, without an abs() copy
    peak = torch.maximum(values.amax(dim=2), values.amin(dim=2).neg())
    bad = ~torch.isfinite(peak)
    what = "non-finite"
    if not bad.any() and dtype == torch.float16:
        bad, what = peak > FLOAT16_MAX, "float16-overflow"
    if bad.any():
        layer, row = (int(x) for x in torch.nonzero(bad)[0])
        raise OutOfRange(what, layer, row, float(peak[layer, row]))
    return values.to(dtype)


@torch.inference_mode()
def forward_batch(model, input_ids: list[np.ndarray], word_ids: list[np.ndarray], *, layer_ids: list[int],
                  word_vector: str, pool: list[str], pad_id: int, cls_id: int | None, device,
                  attention: bool = False) -> BatchOutput:
    """Run one padded batch (right padding, so absolute positions start at 0)."""
    width = max(len(ids) for ids in input_ids)
    ids = np.full((len(input_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), width), dtype=np.int64)
    for b, row in enumerate(input_ids):
        ids[b, :len(row)] = row
        mask[b, :len(row)] = 1
    out = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device),
                output_hidden_states=True, output_attentions=attention)
    hidden = out.hidden_states

    def gather(flat_positions: np.ndarray) -> torch.Tensor:
        """(layer, len(positions), neuron) float32 from the flattened (batch*width) axis,
        each layer's rows selected straight into its slice (no stacked copy)."""
        at = torch.from_numpy(flat_positions).to(device)
        size = hidden[0].shape[-1]
        picked = torch.empty((len(layer_ids), len(at), size), dtype=torch.float32, device=hidden[0].device)
        for i, layer in enumerate(layer_ids):
            torch.index_select(hidden[layer].reshape(-1, size).float(), 0, at, out=picked[i])
        return picked

    sources, targets, sizes = [], [], []
    for b, wids in enumerate(word_ids):
        positions, target = subword_positions(wids, word_vector)
        sources.append(positions + b * width)
        targets.append(target + sum(sizes))
        sizes.append(int(target.max()) + 1 if len(target) else 0)
    if word_vector == "mean":
        segments = torch.from_numpy(np.concatenate(targets)).to(device)
        tokens = _segment_mean(gather(np.concatenate(sources)), segments, sum(sizes))
    else:
        tokens = gather(np.concatenate(sources))  # one subword per stored token, already in order

    pooled = {}
    if "cls" in pool:
        pooled["cls"] = gather(np.array([b * width + cls_position(input_ids[b], word_ids[b], cls_id)
                                         for b in range(len(input_ids))]))
    if "mean" in pool:
        # Mean over all of the sentence's subwords, special tokens excluded.
        valid = [np.flatnonzero(wids >= 0) for wids in word_ids]
        owner = torch.from_numpy(np.repeat(np.arange(len(valid)), [len(v) for v in valid])).to(device)
        pooled["mean"] = _segment_mean(gather(np.concatenate([v + b * width for b, v in enumerate(valid)])),
                                       owner, len(input_ids))
    rows = None
    if attention:
        # The CLS (or first) token's attention row in every block and head; positions past
        # the sentence are padding (weight 0 under the mask) and are cut by the caller.
        at = torch.tensor([cls_position(input_ids[b], word_ids[b], cls_id) for b in range(len(input_ids))],
                          device=hidden[0].device)
        batch = torch.arange(len(input_ids), device=at.device)
        rows = torch.stack([a[batch, :, at, :] for a in out.attentions]).float()
    return BatchOutput(tokens, np.asarray(sizes), pooled, rows)
