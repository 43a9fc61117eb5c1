"""The synthetic dataset as a torch ``Dataset`` of :mod:`data.records` samples, with an in-memory cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from data.degrade import degrade
from data.maskbits import unpack_planes
from data.records import LESIONS, DataError, make_sample
from data.synthetic.backgrounds import BACKGROUND_CHOICES
from data.synthetic.pool import render_all, render_packed
from data.synthetic.render import (
    check_size,
    check_split,
    noise_generator,
    normalise_class_mix,
    sample_id,
)

log = logging.getLogger(__name__)

SCALES: tuple[int, ...] = (2, 4, 8)


class SyntheticFundus(torch.utils.data.Dataset):
    """Semi-synthetic DR dataset yielding :mod:`data.records` samples (all four masks valid).

    ``hr`` is the rendered image / 255; ``lr = degrade(hr, scale, ...)`` with per-sample seeded noise.
    With ``cache=True`` rendered samples are kept as packed uint8 tensors; call :meth:`materialize` before
    building DataLoader workers so they share one cache instead of each filling its own.
    """

    def __init__(
        self,
        split: str,
        n: int,
        hr_size: int,
        scale: int,
        seed: int = 0,
        class_mix: Sequence[float] | None = None,
        backgrounds: str = "all",
        blur_kernel: int = 0,
        blur_sigma: float = 0.0,
        noise_var: float = 0.0,
        cache: bool = True,
    ) -> None:
        check_split(split)
        if n <= 0:
            raise DataError(f"n must be > 0, got {n}")
        if scale not in SCALES:
            raise DataError(f"scale must be one of {SCALES}, got {scale}")
        if hr_size <= 0 or hr_size % scale:
            raise DataError(f"hr_size must be > 0 and divisible by scale {scale}, got {hr_size}")
        check_size(hr_size)
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        if backgrounds not in BACKGROUND_CHOICES:
            raise DataError(f"backgrounds must be one of {BACKGROUND_CHOICES}, got {backgrounds!r}")
        if blur_kernel and (blur_kernel < 3 or blur_kernel % 2 == 0):
            raise DataError(f"blur_kernel must be 0 (off) or an odd size >= 3, got {blur_kernel}")
        if noise_var < 0:
            raise DataError(f"noise_var must be >= 0, got {noise_var}")
        normalise_class_mix(class_mix)  # validates
        self.class_mix = None if class_mix is None else tuple(float(w) for w in class_mix)
        self.split, self.n, self.hr_size, self.scale, self.seed = split, n, hr_size, scale, seed
        self.backgrounds = backgrounds
        self.blur_kernel, self.blur_sigma, self.noise_var = blur_kernel, blur_sigma, noise_var
        self.cache = cache
        self._images: torch.Tensor | None = None  # uint8 [n,3,S,S]
        self._bits: torch.Tensor | None = None  # uint8 [n,S,S]
        self._grades = torch.full((n,), -1, dtype=torch.int64)  # -1 = not rendered yet

    def __len__(self) -> int:
        return self.n

    def _job(self, index: int) -> tuple[int, str, int, int, tuple[float, ...] | None, str]:
        return self.seed, self.split, index, self.hr_size, self.class_mix, self.backgrounds

    def _store(self, index: int, image: np.ndarray, bits: np.ndarray, grade: int) -> None:
        """Put one packed sample in the cache (allocated on first use)."""
        if self._images is None or self._bits is None:
            self._images = torch.empty((self.n, 3, self.hr_size, self.hr_size), dtype=torch.uint8)
            self._bits = torch.empty((self.n, self.hr_size, self.hr_size), dtype=torch.uint8)
        self._images[index] = torch.from_numpy(image)
        self._bits[index] = torch.from_numpy(bits)
        self._grades[index] = grade

    def _packed(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Packed sample ``index`` from the cache, rendering (and caching if enabled) when missing."""
        if self._images is not None and self._bits is not None and self._grades[index] >= 0:
            return self._images[index], self._bits[index], int(self._grades[index])
        _, image, bits, grade = render_packed(self._job(index))
        if self.cache:
            self._store(index, image, bits, grade)
        else:
            self._grades[index] = grade
        return torch.from_numpy(image), torch.from_numpy(bits), grade

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        index = i % self.n
        image, bits, grade = self._packed(index)
        hr = image.float() / 255.0
        masks, fov = unpack_planes(bits)
        generator = noise_generator(self.seed, self.split, index) if self.noise_var > 0 else None
        lr = degrade(hr, self.scale, self.blur_kernel, self.blur_sigma, self.noise_var, generator)
        valid = torch.ones(len(LESIONS), dtype=torch.bool)
        return make_sample(lr, hr, grade, masks, valid, fov, sample_id(self.split, index))

    def materialize(self, progress: bool = False) -> None:
        """Render every sample not yet cached so epochs only look up.

        From 64 samples on this uses 2 spawned processes, which re-import the caller's ``__main__``: call
        it from a module run as ``python -m`` or a script with an ``if __name__ == "__main__":`` guard
        (stdin scripts fall back to one process).
        """
        if not self.cache:
            raise DataError("materialize needs cache=True")
        todo = [index for index in range(self.n) if self._images is None or self._grades[index] < 0]
        if not todo:
            return
        log.info("rendering %d synthetic %s samples at %d px", len(todo), self.split, self.hr_size)
        started = time.perf_counter()
        jobs = [self._job(index) for index in todo]
        with tqdm(
            total=len(todo), disable=not progress, desc=f"synthetic {self.split}", unit="img"
        ) as bar:
            for index, image, bits, grade in render_all(jobs):
                self._store(index, image, bits, grade)
                bar.update()
        log.info(
            "rendered %d synthetic %s samples in %.1f s",
            len(todo),
            self.split,
            time.perf_counter() - started,
        )

    @property
    def grades(self) -> list[int]:
        """Labels of all samples (renders what is missing, caching it when enabled), for class weights."""
        if self.cache:
            self.materialize()
        else:
            for index in range(self.n):
                if self._grades[index] < 0:
                    self._grades[index] = render_packed(self._job(index))[3]
        return self._grades.tolist()
