"""The batches of training: an epoch's sample order shared out over processes, on the device."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from softcontrast.data.crops import CropSpec
from softcontrast.data.device_decode import PendingCrops, collate_pending
from softcontrast.data.images import ImageSource
from softcontrast.data.splits import ImageTensorDataset
from softcontrast.data.views import RandomCrops


#: Where a streamed split's JPEG files may be decoded (:class:`TrainingBatches`).
DECODE_ON = ("workers", "device")


class EpochBatches:
    """Index batches of one epoch, shared out over processes.

    Each epoch draws one permutation of the dataset from ``(seed, epoch)``; global
    batch ``b`` holds positions ``[b·G, (b+1)·G)`` of it (G = ``batch_size × world``),
    and process ``r`` takes rows ``[r·batch_size, (r+1)·batch_size)`` of each global
    batch. The last incomplete global batch is dropped, so sample ids within a
    global batch are distinct and every process runs the same number of steps.

    Args:
        num_samples: dataset size.
        batch_size: per-process batch size.
        rank: this process's index.
        world_size: number of processes.
        seed: base seed of the permutations.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size * world_size > num_samples:
            raise ValueError(
                f"global batch {batch_size}×{world_size} is larger than the dataset ({num_samples} samples): "
                "lower the batch size"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """Yields the local index batches of ``epoch``, from batch ``start`` on."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        global_batch = self.batch_size * self.world_size
        for b in range(start, len(self)):
            offset = b * global_batch + self.rank * self.batch_size
            yield order[offset : offset + self.batch_size]


class _EpochKeys:
    """The loader's batch sampler: ``(index, epoch)`` keys of the epoch set by :meth:`set`.

    The loader keeps its workers between epochs; only this sampler, iterated in the
    main process, changes.
    """

    def __init__(self, sampler: EpochBatches):
        self.sampler, self.epoch, self.start = sampler, 0, 0

    def set(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for indices in self.sampler.epoch(self.epoch, self.start):
            yield [(int(i), self.epoch) for i in indices]


class TrainingBatches:
    """Yields training batches of a split on a device, with their sample ids.

    An in-memory split is indexed directly (optionally resident on the device) and
    yields ``B×3×H×W`` ``uint8`` images; the step crops them on the device. A
    streamed split (an :class:`ImageSource`) goes through one ``DataLoader`` with
    persistent workers that cut every crop of ``crops`` from the original image
    (:class:`RandomCrops`) and yields a list of ``B×3×s×s`` ``uint8`` crops.

    Args:
        data: the training split.
        batch_size: per-process batch size.
        device: where batches are delivered.
        rank: this process's index.
        world_size: number of processes.
        seed: base seed of the epoch permutations and of the crops.
        resident: hold an in-memory split on ``device`` (else copy per batch).
        num_workers: loader workers for a streamed split.
        crops: the crops of one image a step takes (``method.crop_plan()``); needed for a streamed split.
        draft: decode JPEG files at a reduced scale where the crops allow it.
        decode_on: where a streamed split's JPEG files are decoded: ``workers`` (the loader
            workers, on the CPU) or ``device`` (batched on ``device``, nvJPEG on a GPU;
            :mod:`~softcontrast.data.device_decode`).
    """

    def __init__(
        self,
        data: "ImageTensorDataset | ImageSource",
        batch_size: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        resident: bool = True,
        num_workers: int = 4,
        crops: Sequence[CropSpec] | None = None,
        draft: bool = True,
        decode_on: str = "workers",
    ):
        if decode_on not in DECODE_ON:
            raise ValueError(f"decode_on must be one of {', '.join(DECODE_ON)}; got {decode_on!r}")
        self.data, self.device, self.num_workers = data, torch.device(device), num_workers
        self.sampler = EpochBatches(len(data), batch_size, rank, world_size, seed)
        self.loader = None
        if isinstance(data, ImageTensorDataset):
            if resident:
                self.data = data.to(self.device)
            return
        if not crops:
            raise ValueError("a streamed split needs the step's crops (method.crop_plan())")
        self.keys = _EpochKeys(self.sampler)
        on_device = decode_on == "device"
        self.loader = torch.utils.data.DataLoader(
            RandomCrops(data, crops, seed, draft, decode=not on_device),
            batch_sampler=self.keys,
            collate_fn=collate_pending if on_device else None,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple["Tensor | list[Tensor]", Tensor]]:
        """Yields the batches of ``epoch`` from batch ``start`` on."""
        if self.loader is None:
            for indices in self.sampler.epoch(epoch, start):
                indices = indices.to(self.data.images.device)
                yield self.data.images[indices].to(self.device, non_blocking=True), indices.to(self.device)
            return
        self.keys.set(epoch, start)
        for crops, ids in self.loader:
            if isinstance(crops, PendingCrops):
                crops = crops.finish(self.device)
            yield ([crop.to(self.device, non_blocking=True) for crop in crops],
                   ids.to(self.device, non_blocking=True))
