"""A data loader over tensors that already live on the training device (after airbench).

The whole split is a uint8 tensor on the device; each batch is indexed, augmented (batched crop and
flip) and normalised there. Order and augmentation come from a CPU generator seeded by
``(seed, epoch)``, so an epoch is reproducible on its own: a run resumed at epoch ``e`` sees exactly
the batches the uninterrupted run saw. Under DDP each rank takes a strided shard of the permutation.
"""

from __future__ import annotations

from typing import Iterator

import torch

from kdprune.data.augment import random_crop_flip
from kdprune.errors import UserError


class TensorLoader:
    """Batches of ``(normalised float images, labels)`` from two tensors.

    ``images``: ``[N, C, H, W]``, either uint8 in 0..255 (as datasets are stored) or float in [0, 1].
    ``mean``/``std``: per-channel, in [0, 1] units for both (as torchvision's ``Normalize`` after
    ``ToTensor``); by default the images' own per-channel statistics. A test or validation loader must use
    the training split's: ``stats=train_loader`` takes them from a TensorLoader (or a ``(mean, std)`` pair). ``train=True`` shuffles and
    augments (``pad``-padded random crop, horizontal ``flip``); ``train=False`` keeps the order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train: bool = False,
        pad: int = 0,
        flip: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        drop_last: bool | None = None,
        stats: "TensorLoader | tuple | None" = None,
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = int(batch_size)
        self.train = train
        self.pad, self.flip = (pad, flip) if train else (0, False)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        if images.dim() != 4 or len(labels) != len(images):
            raise UserError(f"TensorLoader wants images [N, C, H, W] and N labels, got {tuple(images.shape)} "
                            f"and {len(labels)} labels")
        c = images.shape[1]
        if stats is not None:
            if mean is not None or std is not None:
                raise UserError("TensorLoader: give stats= or mean=/std=, not both")
            mean, std = stats.stats if isinstance(stats, TensorLoader) else stats
            if len(mean) != c or len(std) != c:
                raise UserError(f"TensorLoader: stats= has {len(mean)} channels, the images {c}")
        if mean is None or std is None:
            x = images.to(torch.float64) / (255.0 if images.dtype == torch.uint8 else 1.0)
            mean = x.mean(dim=(0, 2, 3)).tolist() if mean is None else mean
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist() if std is None else std
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * scale
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * scale)
        self.scale = scale
        self.stats = (list(map(float, mean)), list(map(float, std)))  # [0, 1] units: stats= of another loader
        n = len(self.labels)
        # Training drops the ragged last batch (BatchNorm cannot train on a batch of one) when it can.
        self.drop_last = (train and n // world_size >= batch_size) if drop_last is None else drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping the last batch)."""
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.train:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return g

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None,
                  share: tuple[int, int, int] | None = None) -> torch.Tensor:
        """uint8 images -> augmented (training loaders, when a generator is given; ``share``: see
        :func:`random_crop_flip`) and normalised floats."""
        if self.train and generator is not None:
            x = random_crop_flip(x, self.pad, self.flip, generator, share)
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batches_with_index(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Like iteration, but also yields each batch's sample indices into ``images``/``labels``."""
        return self._iterate(with_index=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._iterate(with_index=False)

    def _iterate(self, with_index: bool):
        n = len(self.labels)
        g = self._generator()
        if self.train:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.train:
                total = self.num_samples * self.world_size
                order = torch.cat([order, order[: total - n]])  # pad like DistributedSampler
            order = order[self.rank::self.world_size]  # evaluation: no padding, every image once
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            # a rank's batch is positions rank::world_size of the global one: draw the global batch's augmentation
            share = (len(idx) * self.world_size, self.rank, self.world_size) if self.world_size > 1 else None
            x = self.transform(self.images[idx], g, share)
            yield (x, self.labels[idx], idx) if with_index else (x, self.labels[idx])
