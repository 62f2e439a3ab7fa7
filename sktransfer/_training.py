"""The training loop of :class:`~sktransfer.FineTunedClassifier` and
:class:`~sktransfer.FineTunedRegressor`.

It stands on the engine (``_engine``): training batches come through the
same input path as validation and prediction (nvJPEG decoding and pinned
copies on CUDA, Pillow on threads elsewhere, resized and normalised on the
device), so a model is trained on exactly the pixels it later predicts on.
It is split as skorch splits its ``fit_loop``: batches (:func:`image_batches`,
:func:`feature_batches`), one optimisation step (:class:`TrainStep`), a
validation score (a callable), early stopping (:class:`EarlyStopping`), and
:func:`fit_loop` that runs the epochs. It knows nothing of sklearn.

Randomness comes from generators the caller owns (shuffling, augmentation);
only dropout inside the network draws from torch's global generator, and the
caller forks it around the loop.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from sktransfer import _engine
from sktransfer._common import progress
from sktransfer._device import autocast

__all__ = [
    "Augmentation",
    "EarlyStopping",
    "History",
    "TrainStep",
    "feature_batches",
    "fit_loop",
    "image_batches",
    "plan_batches",
]

Batches = Iterator[tuple[np.ndarray, torch.Tensor]]


def plan_batches(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches of an epoch of ``n`` images.

    Batches of ``batch_size``; a last batch of a single image (which batch
    norm cannot train on) joins the one before it. No image is left out.
    """
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    if rest == 1 and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


def image_batches(
    images, preprocessing, order, batch_size, device, augment=None
) -> Batches:
    """Yield ``(rows, x)`` over ``order`` in the batches of
    :func:`plan_batches`: ``x`` the preprocessed batch on ``device``, from
    the engine's input path.

    A batch of images that do not share one size after preprocessing (no
    crop, images of different shapes) cannot be stacked: a ValueError says
    how to give them one size, rather than training on fragments.
    """
    sizes = plan_batches(len(order), batch_size)
    last = sizes[-1] if sizes else 0
    if len(sizes) > 1 and last != sizes[0]:  # all but the last, then the last
        cut = len(order) - last
        parts = [(order[:cut], sizes[0]), (order[cut:], last)]
    else:
        parts = [(order, sizes[0] if sizes else batch_size)]
    for rows, size in parts:
        for start, batch in _engine.batches(images, preprocessing, size, device, rows):
            expected = min(size, len(rows) - start)
            if len(batch) != expected:
                raise ValueError(
                    f"The training images do not all have one size after "
                    f"preprocessing (a batch of {expected} stops after "
                    f"{len(batch)} images of {tuple(batch.shape[-2:])}), so they "
                    "cannot be batched. Give them one size: "
                    "preprocessing={'crop_size': N} (or 'resize_size': (H, W))."
                )
            x = _engine.device_input(preprocessing, batch, device, images.resizes)
            if augment is not None:
                x = augment(x)
            yield rows[start : start + len(batch)], x


def feature_batches(features: torch.Tensor, order, batch_size, device) -> Batches:
    """Yield ``(rows, x)`` over ``order`` in the batches of
    :func:`plan_batches`: rows of precomputed features, on ``device``."""
    start = 0
    for size in plan_batches(len(order), batch_size):
        rows = order[start : start + size]
        start += size
        yield rows, features[rows].to(device, non_blocking=True)


class Augmentation:
    """A random resized crop (70-100% of the area, aspect 3/4 to 4/3) back to
    ``size`` and a random horizontal flip, for each image of a batch, drawn
    from ``generator``.

    The crop is torchvision's ``RandomResizedCrop.get_params``, run in a
    fork of torch's global generator seeded from ``generator``: the caller's
    global random state is left as it was.
    """

    scale = [0.7, 1.0]
    ratio = [3 / 4, 4 / 3]

    def __init__(self, size, generator: torch.Generator):
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.generator = generator

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of one random crop."""
        seed = int(torch.randint(2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            box = RandomResizedCrop.get_params(
                torch.empty(1, height, width, device="meta"), self.scale, self.ratio
            )
        return tuple(int(v) for v in box)  # type: ignore[return-value]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x:
            top, left, h, w = self.crop_box(*image.shape[-2:])
            image = TF.resized_crop(image, top, left, h, w, self.size, antialias=True)
            if float(torch.rand((), generator=self.generator)) < 0.5:
                image = TF.horizontal_flip(image)
            out.append(image)
        return torch.stack(out).contiguous(memory_format=torch.channels_last)


class TrainStep:
    """One optimisation step: forward, loss, backward, update.

    The loss is the (class-weighted) mean over the batch (over its values,
    for targets of several columns), summed over
    micro-batches: out of memory, the batch is split in halves, then
    quarters..., and the gradients are accumulated, so the step is the same
    step (batch-norm statistics then come from the smaller parts).

    Parameters
    ----------
    forward : callable
        Maps an input batch to logits.
    optimizer : torch.optim.Optimizer
    class_weight : torch.Tensor or None
        Weight of each class in the loss.
    device : torch.device
    dtype : torch.dtype
        The autocast dtype (float16 on CUDA uses a gradient scaler).
    loss : torch.nn.Module or None
        The loss, summed over the batch (``reduction="sum"``); None:
        cross-entropy with ``class_weight``.
    """

    def __init__(self, forward, optimizer, class_weight, device, dtype, loss=None):
        self.forward = forward
        self.optimizer = optimizer
        self.class_weight = class_weight
        self.device, self.dtype = device, dtype
        if loss is None:
            loss = nn.CrossEntropyLoss(weight=class_weight, reduction="sum")
        self.loss = loss
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=dtype == torch.float16 and device.type == "cuda"
        )
        self.micro: int | None = None  # micro-batch size after an OOM back-off
        self._host_weight: torch.Tensor | None = None  # class_weight on the CPU

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Take one step on ``(x, targets)``; return the batch's mean loss, a
        0-d tensor on the device: reading it waits for the step, so the
        caller reads it rarely (the GPU then runs while the next batch is
        decoded and copied)."""
        # (the loss's normaliser from the targets on the host: no wait)
        norm = self._norm(targets.cpu())
        targets = targets.to(self.device, non_blocking=True)
        # Batch norms' running statistics before the step: the micro-batches
        # that ran before an out-of-memory error have updated them, and the
        # retry must not count those images twice.
        module = self.forward if isinstance(self.forward, nn.Module) else None
        before = (
            {name: b.clone() for name, b in module.named_buffers()}
            if module is not None
            else {}
        )
        while True:
            try:
                return self._step(x, targets, norm)
            except Exception as exc:
                if not _engine.is_oom(exc):
                    raise _explained(exc, len(x)) from exc
                size = self.micro or len(x)
                if size == 1:
                    raise _engine.oom_error(
                        exc,
                        f"Out of memory on {self.device} training on a single "
                        "image. Use smaller images (preprocessing={'crop_size': "
                        "...}), fewer trainable_layers, or device='cpu'.",
                    ) from exc
                self.micro = max(1, size // 2)
            if module is not None:
                with torch.no_grad():
                    for name, buffer in module.named_buffers():
                        buffer.copy_(before[name])
            _engine.free_after_oom(self.device)

    def _norm(self, targets: torch.Tensor) -> float:
        """What the summed loss is divided by: the number of targets, or the
        sum of their class weights."""
        if self.class_weight is None:
            return float(targets.numel())
        if self._host_weight is None:
            self._host_weight = self.class_weight.cpu()
        return float(self._host_weight[targets].sum())

    def _step(self, x, targets, norm: float) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        size = self.micro or len(x)
        for part, part_targets in zip(x.split(size), targets.split(size), strict=True):
            with autocast(self.device, self.dtype):
                logits = self.forward(part)
            loss = self.loss(logits.float(), part_targets) / norm
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total


def _explained(exc: Exception, batch: int) -> Exception:
    """Batch norm's refusal of a batch of one image, in our words."""
    if batch == 1 and "Expected more than 1 value per channel" in str(exc):
        return ValueError(
            "A batch norm layer cannot train on a batch of one image (one value "
            "per channel). Use batch_size >= 2, or freeze_batchnorm=True."
        )
    return exc


class EarlyStopping:
    """Stop when the validation score has not improved by ``tol`` for
    ``patience`` epochs, keeping the weights of the best epoch (as
    scikit-learn's ``MLPClassifier`` does).

    Call it with each epoch's score and the network; it returns True when
    training should stop. ``best_state`` holds a copy of the best weights.
    """

    def __init__(self, patience: int, tol: float):
        self.patience, self.tol = patience, tol
        self.best_score: float | None = None
        self.best_state: dict | None = None
        self.stale = 0

    def __call__(self, score: float, net: nn.Module) -> bool:
        best = self.best_score
        self.stale = 0 if best is None or score > best + self.tol else self.stale + 1
        if best is None or score > best:
            self.best_score = score
            self.best_state = copy.deepcopy(net.state_dict())
        return self.stale >= self.patience


@dataclass
class History:
    """What an estimator records of its training."""

    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] | None = None
    n_iter: int = 0


def fit_loop(
    *,
    net: nn.Module,
    step: TrainStep,
    batches: Callable[[np.ndarray], Batches],
    targets: torch.Tensor,
    train_rows: np.ndarray,
    max_epochs: int,
    generator: torch.Generator,
    train_mode: Callable[[], None],
    validate: Callable[[], float] | None = None,
    stopper: EarlyStopping | None = None,
    verbose: bool = True,
) -> History:
    """Train ``net`` for up to ``max_epochs`` epochs over ``train_rows``,
    shuffled by ``generator``; ``batches(order)`` yields ``(rows, x)`` and
    ``step`` updates the network on each.

    After each epoch ``validate()`` (if given) scores the network and
    ``stopper`` decides whether to go on. Every image of ``train_rows`` is
    in one batch of each epoch.
    """
    history = History(validation_scores=[] if validate is not None else None)
    for epoch in range(max_epochs):
        train_mode()
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        total: torch.Tensor | float = 0.0  # (on the device: read rarely)
        seen, shown = 0, time.monotonic()
        with progress(
            total=len(order),
            desc=f"Epoch {epoch + 1}/{max_epochs}",
            unit="img",
            verbose=verbose,
            leave=False,
        ) as bar:
            for rows, x in batches(order):
                total = total + step(x, targets[rows]) * len(rows)
                seen += len(rows)
                bar.update(len(rows))
                if verbose and time.monotonic() - shown > 1:  # (reading waits)
                    bar.set_postfix(loss=f"{float(total) / seen:.4f}", refresh=False)
                    shown = time.monotonic()
        if seen != len(order):
            raise AssertionError(f"an epoch saw {seen} of {len(order)} images")
        history.n_iter = epoch + 1
        history.loss_curve.append(float(total) / seen)
        if validate is None:
            continue
        score = validate()
        assert history.validation_scores is not None
        history.validation_scores.append(score)
        if stopper is not None and stopper(score, net):
            break
    return history
