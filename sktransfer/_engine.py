"""The engine: device, batching, inference, progress, output assembly.

It runs any module that maps a preprocessed ``(n, 3, H, W)`` float batch to a
list of ``(n, d_i)`` tensors over the batches of an input adapter, and writes
the concatenated rows, in input order, into one preallocated float32 array.
It knows nothing of sklearn.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["extract", "resolve_device"]


def resolve_device(device) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; other values are checked."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            "The 'device' parameter must be 'auto', 'cpu', 'cuda', 'cuda:N' or "
            f"'mps'. Got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"The 'device' parameter is {device!r} but CUDA is not available on "
            "this machine. Use device='auto' or 'cpu'."
        )
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"The 'device' parameter is {device!r} but MPS is not available on "
            "this machine. Use device='auto' or 'cpu'."
        )
    return resolved


def run_batch(net, preprocessing, batch: torch.Tensor, device) -> torch.Tensor:
    """Preprocess one batch on ``device`` and return its ``(n, d)`` features."""
    with torch.inference_mode():
        x = preprocessing(batch.to(device, non_blocking=True))
        return torch.cat(net(x), dim=1)


def extract(
    net,
    preprocessing,
    images,
    *,
    n_features,
    batch_size,
    device,
    indices=None,
    verbose=True,
    desc="Extracting features",
) -> np.ndarray:
    """Run ``net`` over the images (or those at ``indices``), rows in order."""
    n = len(images) if indices is None else len(indices)
    out = np.empty((n, n_features), dtype=np.float32)
    with tqdm(total=n, desc=desc, unit="img", disable=not verbose, leave=False) as bar:
        for start, batch in images.batches(batch_size, indices):
            feats = run_batch(net, preprocessing, batch, device)
            if feats.shape[1] != n_features:
                first = start if indices is None else int(indices[start])
                raise ValueError(
                    f"Image {first} and its batch give "
                    f"{feats.shape[1]} features, but the extractor was fitted "
                    f"with {n_features}. With pooling='flatten' or no crop, every "
                    "image must have the size seen in fit; set preprocessing="
                    "{'crop_size': ...} to make them equal."
                )
            out[start : start + len(batch)] = feats.float().cpu().numpy()
            bar.update(len(batch))
    return out
