"""Running a text encoder: tokenize, batch by length, pool hidden states.

:func:`encode` embeds texts with a loaded
:class:`~sktransfer._sources.transformers.TextModel`. Each distinct text is
tokenized once by the model's own (fast) tokenizer; texts longer than
``max_length`` tokens are truncated (and counted) or split into overlapping
windows. Windows are sorted by length and cut into the batches that run the
fewest padded tokens (:func:`batch_ends`), so that a batch pads to little
more than its own texts. The encoder runs once per batch with every
hidden state (``output_hidden_states``), and each requested *slot* (a hidden
state and a pooling, or the model's own sentence embedding) is pooled from
that one pass over the real tokens only (the attention mask): a grid over
layers and poolings costs one pass. Special tokens (``[CLS]``, ``[SEP]``,
``<s>``...) are real tokens: mean and max pooling include them, as
sentence-transformers does.

Rows come back in the order of the texts given, float32, pooled in float32
whatever the compute precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sktransfer._common import progress
from sktransfer._device import autocast
from sktransfer._engine import check_finite, count_inputs, free_after_oom, is_oom
from sktransfer._memo import Memo
from sktransfer._text.inputs import text_digest

__all__ = [
    "POOLINGS",
    "Slot",
    "batch_ends",
    "count_long",
    "encode",
    "padded",
    "pool",
    "stride_of",
    "token_ids",
]

#: Poolings of a hidden state.
POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class Slot:
    """One pooled vector of a text: hidden state ``layer`` (0 = the
    embedding layer's output) pooled with ``pooling``; ``layer=None``: the
    model's own sentence embedding (its pooling, then its normalisation)."""

    layer: int | None
    pooling: str

    @property
    def name(self) -> str:
        """Its name in the cache (and, with ``|`` as ``_``, in feature names)."""
        return "sentence" if self.layer is None else f"{self.layer}|{self.pooling}"


def stride_of(max_length: int) -> int:
    """Tokens shared by consecutive windows of a long text (``"chunk"``)."""
    return max(1, max_length // 4)


def _windows(tokenizer, texts, max_length, chunk):
    """Token ids of each window and the text it belongs to; and how many
    texts are longer than ``max_length``."""
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride_of(max_length) if chunk else 0,
        return_overflowing_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        padding=False,
    )
    ids = encoded["input_ids"]
    owner = list(encoded["overflow_to_sample_mapping"])
    counts = np.bincount(owner, minlength=len(texts))
    n_long = int((counts > 1).sum())
    if not chunk:  # keep each text's first window: its head
        first = np.concatenate([[True], np.diff(owner) != 0])
        ids = [w for w, keep in zip(ids, first, strict=True) if keep]
        owner = [o for o, keep in zip(owner, first, strict=True) if keep]
    return ids, np.asarray(owner, dtype=np.int64), n_long


#: Whether a text is longer than a max_length for a model's tokenizer, by
#: (model identity, max_length, text digest): a grid search transforms the
#: same texts a hundred times, and tokenizing them is then most of its cost.
_LONG = Memo(size=1 << 18)


def count_long(model, texts, max_length: int, digests=None) -> int:
    """How many of ``texts`` are longer than ``max_length`` tokens
    (``digests``: their :func:`text_digest`, if known)."""
    if digests is None:
        digests = [text_digest(t) for t in texts]
    keys = [(model.identity, max_length, d) for d in digests]
    known = _LONG.get_many(keys)
    todo = {keys[i]: texts[i] for i, k in enumerate(known) if k is None}
    if todo:
        with model.lock:
            _, owner, _ = _windows(
                model.tokenizer, list(todo.values()), max_length, True
            )
        windows = np.bincount(owner, minlength=len(todo))
        found = {key: bool(n > 1) for key, n in zip(todo, windows, strict=True)}
        for key, long in found.items():
            _LONG.put(key, long)
        known = [
            found[key] if k is None else k for key, k in zip(keys, known, strict=True)
        ]
    return sum(known)


def _pool(hidden, mask, pooling):
    """Pooled ``(b, d)`` float32 sums (or maxima, or first tokens) and the
    real-token counts ``(b,)``: summed over windows then divided, so that a
    long text's windows pool into one row."""
    hidden = hidden.float()
    counts = mask.sum(1).float()
    if pooling == "cls":
        return hidden[:, 0], counts
    if pooling == "max":
        # -inf added at the padding (3.5x faster than masked_fill on a batch of
        # 32 x 256 tokens); where a padding value is inf or NaN (a float16
        # overflow), the sum is NaN, and masked_fill sets it aside
        floor = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        floor.masked_fill_(~mask, float("-inf"))
        maxima = (hidden + floor.unsqueeze(-1)).amax(1)
        if not torch.isfinite(maxima).all():
            maxima = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return maxima, counts
    return (hidden * mask.unsqueeze(-1)).sum(1), counts


class _Pooled:
    """The running pooled vector of each text, for one slot."""

    def __init__(self, n: int, width: int, mode: str):
        self.mode = mode
        fill = float("-inf") if mode == "max" else 0.0
        self.values = torch.full((n, width), fill, dtype=torch.float32)
        self.counts = torch.zeros(n, dtype=torch.float32)  # tokens (cls: windows)

    def add(self, owner: torch.Tensor, values, counts):
        if self.mode == "max":  # (a text's windows may share a batch)
            where = owner.unsqueeze(1).expand_as(values)
            self.values.scatter_reduce_(0, where, values, "amax")
        else:
            self.values.index_add_(0, owner, values)
        if self.mode == "cls":  # (the mean of the windows' first tokens)
            counts = torch.ones_like(counts)
        self.counts.index_add_(0, owner, counts)

    def result(self) -> torch.Tensor:
        return _finish(self.values, self.counts, self.mode)


def _finish(values, counts, mode):
    """Pooled vectors from :func:`_pool`'s sums (or maxima) and counts."""
    if mode == "max":
        return values
    if mode == "mean_sqrt_len_tokens":
        return values / counts.clamp(min=1.0).sqrt().unsqueeze(1)
    # mean over all real tokens of all windows (cls: over windows)
    return values / counts.clamp(min=1e-9).unsqueeze(1)


def pool(hidden, mask, mode: str, normalize: bool = False) -> torch.Tensor:
    """The pooled ``(b, d)`` float32 vectors of one batch of hidden states
    (differentiable): ``mode`` is a pooling of :data:`POOLINGS` or a
    sentence-transformers mode, ``mask`` the real tokens; ``normalize``:
    each vector to unit length. The same values as :func:`encode` gives."""
    how = mode if mode in POOLINGS else "mean"  # (sums)
    values, counts = _pool(hidden, mask, how)
    if mode == "cls":
        counts = torch.ones_like(counts)
    vectors = _finish(values, counts, mode)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
    return vectors


def padded(ids, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of several texts as one ``(b, longest)`` batch, padded with
    ``pad``, and its mask of real tokens."""
    longest = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.bool)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.as_tensor(tokens)
        mask[row, : len(tokens)] = True
    return input_ids, mask


#: The fixed cost of one forward pass, in padded tokens, on a CPU and on a
#: GPU (kernel launches and Python; small matrix products run slower):
#: what a batch must save in padding to be worth running apart.
BATCH_OVERHEAD = (64, 1024)


def batch_ends(lengths, most: int, overhead: int) -> list[int]:
    """Where to cut windows sorted longest first into batches of at most
    ``most``: the end of each batch, minimising the tokens run (each batch
    pads to its first, longest, window) plus ``overhead`` tokens per batch.

    An exact dynamic programme over the cuts: ``cost[j]``, the least cost of
    the first ``j`` windows, is the least over the start ``i`` of the last
    batch of ``cost[i] + lengths[i] * (j - i) + overhead``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    cost = np.zeros(n + 1, dtype=np.int64)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(max(0, j - most), j)
        candidates = cost[i] + lengths[i] * (j - i)
        best = int(np.argmin(candidates))  # (the first: the largest batch)
        cost[j] = candidates[best] + overhead
        start[j] = i[best]
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = int(start[j])
    return ends[::-1]


def token_ids(model, texts, max_length: int) -> list[list[int]]:
    """The token ids of each text, truncated to ``max_length`` tokens."""
    with model.lock:
        ids, _, _ = _windows(model.tokenizer, list(texts), max_length, False)
    return ids


def encode(
    model,
    texts,
    slots,
    *,
    max_length,
    chunk,
    batch_size,
    device,
    dtype,
    verbose=True,
    indices=None,
):
    """Embed ``texts`` (a sequence of str): the ``(n, sum of widths)``
    float32 columns of every slot in order, and the number of texts longer
    than ``max_length`` tokens (truncated unless ``chunk``).

    Identical texts are embedded once. ``model`` is a ``TextModel`` whose
    encoder is on ``device``. Rows holding inf or NaN (float16 overflows)
    give a NumericsWarning naming them: their positions in ``texts``, or
    the input rows ``indices`` that the texts are.
    """
    sentence = model.sentence
    keys = list(texts)
    if sentence is not None and sentence.lowercase:  # (sentence_bert_config.json)
        keys = [text.lower() for text in keys]
    unique_of: dict[str, int] = {}
    rows = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        rows[i] = unique_of.setdefault(key, len(unique_of))
    unique = list(unique_of)
    n = len(unique)
    with model.lock:
        ids, owner, n_long = _windows(model.tokenizer, unique, max_length, chunk)
    pooled = {}
    for slot in slots:
        mode = sentence.mode if slot.layer is None else slot.pooling
        pooled[slot] = _Pooled(n, model.width, mode)
    order = sorted(range(len(ids)), key=lambda w: -len(ids[w]))  # longest first
    lengths = [len(ids[w]) for w in order]
    pad = model.tokenizer.pad_token_id or 0
    last = model.n_hidden_states - 1
    size = batch_size
    overhead = BATCH_OVERHEAD[device.type == "cuda"]
    ends = iter(batch_ends(lengths, size, overhead))
    start = 0
    bar = progress(
        total=len(order),
        desc="Embedding texts",
        unit="text",
        verbose=verbose,
        leave=False,
    )
    with bar:
        while start < len(order):
            batch = order[start : next(ends)]
            input_ids, mask = padded([ids[w] for w in batch], pad)
            try:
                hidden = _forward(model.encoder, input_ids, mask, device, dtype)
            except Exception as exc:
                if not is_oom(exc) or len(batch) == 1:
                    raise
                hidden = None
            if hidden is None:  # (out of memory: the except block has ended)
                free_after_oom(device)
                size = max(1, min(size, len(batch)) // 2)
                rest = batch_ends(lengths[start:], size, overhead)
                ends = iter([start + end for end in rest])
                continue
            count_inputs(len(batch))
            where = torch.as_tensor(owner[batch])
            on_device = mask.to(device)
            for slot, acc in pooled.items():
                layer = last if slot.layer is None else slot.layer
                how = acc.mode if acc.mode in POOLINGS else "mean"  # (sums)
                values, counts = _pool(hidden[layer], on_device, how)
                acc.add(where, values.cpu(), counts.cpu())
            start += len(batch)
            bar.update(len(batch))
    columns = []
    for slot, acc in pooled.items():
        vectors = acc.result()
        if slot.layer is None and sentence.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        columns.append(vectors)
    out = torch.cat(columns, dim=1).numpy()[rows]
    check_finite(out, None, indices, dtype)
    return out, n_long


def _forward(encoder, input_ids, mask, device, dtype):
    """Every hidden state of one batch."""
    with torch.inference_mode(), autocast(device, dtype):
        output = encoder(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device=device, dtype=torch.long),
            output_hidden_states=True,
            return_dict=True,
        )
    return output.hidden_states
