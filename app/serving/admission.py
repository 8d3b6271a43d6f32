"""Admission control, in one place: how much station work is queued or in a batch, and the
refusals when more would pass the bounds.

Work is counted in images and in decode work (header pixels, weighted for a many-scan
progressive JPEG: `ImageInfo.decode_work`), from the moment a request is admitted until
each of its images is answered. Shadow images are not counted: they have a small queue of
their own and are dropped first.

Explanations (`POST /v1/explain`) cost many forward passes each (`model_store.explain.forwards`).
They are admitted apart, so they can never starve predict: at most `explain_bound` at once,
and only while the station queue has room for their cost in images on top of what it holds.
Station requests never count them: an explanation waits for, and is refused before, any
station image.
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
    explain_bound: int = 1  # explanations admitted at once
    images: int = 0  # admitted station images not yet answered (queued or in a batch)
    pixels: int = 0
    explains: int = 0  # admitted explanations not yet answered

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

    def admit_explain(self, forwards: int, pixels: int) -> None:
        """Count an explanation in (`forwards`: its cost in images, `pixels`: its decode work),
        or refuse it: the explanations running are at their bound, or the station queue is
        too full to also take one's cost (stations first)."""
        if self.explains >= self.explain_bound:
            raise Overloaded(
                f"{self.explains} explanation(s) already running (at most {self.explain_bound} at once; "
                "predictions are not affected)"
            )
        if self.images + forwards > self.queue_bound or self.pixels + pixels > self.max_pending_pixels:
            raise Overloaded(f"station work comes first: {self._state()}; an explanation costs {forwards} images")
        self.explains += 1

    def explained(self) -> None:
        """An admitted explanation left for good (answered, failed, or its client left)."""
        self.explains -= 1

    def _state(self) -> str:
        return (
            f"{self.images} images ({self.pixels / 1e6:.0f} megapixels) already queued "
            f"(bounds {self.queue_bound} images, {self.max_pending_pixels / 1e6:.0f} megapixels)"
        )
