"""Admission control, in one place: how much station work is queued or in a batch, and the
refusals when more would pass the bounds.

Work is counted in images and in decode work (header pixels, weighted for a many-scan
progressive JPEG: `ImageInfo.decode_work`), from the moment a request is admitted until
each of its images is answered. Shadow images are not counted: they have a small queue of
their own and are dropped first.
"""

from __future__ import annotations

from dataclasses import dataclass


class Overloaded(Exception):
    """Queued work is at its bound; the client should retry shortly."""


class RequestTooLarge(Exception):
    """This request alone is more work than the service ever queues."""


class DeadlineExceeded(Exception):
    """The request's time budget ran out before its answer; `stage` says where it was."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class Admission:
    queue_bound: int  # images
    max_pending_pixels: int  # decode work
    images: int = 0  # admitted station images not yet answered (queued or in a batch)
    pixels: int = 0

    def refuse_if_full(self) -> None:
        """Shed a request before its body is read (cheap) when the queue is already at a bound."""
        if self.images >= self.queue_bound or self.pixels >= self.max_pending_pixels:
            raise Overloaded(self._state())

    def admit(self, images: int, pixels: int) -> None:
        """Count a request's images in, or refuse it whole."""
        if pixels > self.max_pending_pixels:
            raise RequestTooLarge(
                f"{images} image(s) of {pixels / 1e6:.0f} megapixels in all; the service queues at most "
                f"{self.max_pending_pixels / 1e6:.0f}"
            )
        if self.images + images > self.queue_bound or self.pixels + pixels > self.max_pending_pixels:
            raise Overloaded(self._state())
        self.images += images
        self.pixels += pixels

    def answered(self, pixels: int) -> None:
        """One admitted image left the queue for good (answered, failed, or its client left)."""
        self.images -= 1
        self.pixels -= pixels

    def _state(self) -> str:
        return (
            f"{self.images} images ({self.pixels / 1e6:.0f} megapixels) already queued "
            f"(bounds {self.queue_bound} images, {self.max_pending_pixels / 1e6:.0f} megapixels)"
        )
