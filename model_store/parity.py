"""Parity: do a bundle's reference images reproduce the outputs recorded at export?

The acceptance rule lives here once (`parity_ok`); export's check against training, the
CLI, the store and the service all use it. A passed report yields a `ParityProof`, the
only thing a store accepts to move its active pointer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model_store.errors import ParityFailed
from model_store.manifest import Manifest


def parity_ok(
    expected_probability: float,
    actual_probability: float,
    *,
    tolerance: float,
    threshold: float,
    decide: Callable[[float], str],
) -> bool:
    """Within `tolerance`, and the same decision as a station would see.

    A decision flip fails even inside the tolerance, unless the expected probability sits
    within the tolerance of the threshold (where either side is an honest answer).
    """
    if abs(actual_probability - expected_probability) > tolerance:
        return False
    if abs(expected_probability - threshold) <= tolerance:
        return True
    return decide(actual_probability) == decide(expected_probability)


@dataclass(frozen=True)
class ParityCheck:
    file: str
    expected_probability: float
    actual_probability: float
    expected_decision: str
    actual_decision: str
    passed: bool

    @property
    def abs_diff(self) -> float:
        return abs(self.actual_probability - self.expected_probability)


@dataclass(frozen=True)
class ParityProof:
    """Evidence that the verified bundle with this manifest digest passed parity.

    Stores refuse to move their active pointer without one that matches the stored
    manifest, so no path (API, CLI, library) can activate an unproven bundle.
    """

    version: str
    manifest_sha256: str
    max_abs_diff: float


@dataclass(frozen=True)
class ParityReport:
    version: str
    manifest_sha256: str
    tolerance: float
    threshold: float
    checks: list[ParityCheck]

    @property
    def max_abs_diff(self) -> float:
        return max(c.abs_diff for c in self.checks)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> str:
        flips = sum(c.actual_decision != c.expected_decision for c in self.checks)
        return (
            f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}), "
            f"{flips} decision flip(s) over {len(self.checks)} reference image(s)"
        )

    def require_pass(self) -> ParityProof:
        """The proof a store needs, or `ParityFailed` naming what went wrong."""
        if not self.passed:
            raise ParityFailed(f"{self.version} fails parity: {self.summary()}")
        return ParityProof(self.version, self.manifest_sha256, self.max_abs_diff)


def report(manifest: Manifest, manifest_sha256: str, probabilities: Sequence[float]) -> ParityReport:
    """Compare probabilities of the reference images (in manifest order) with the record."""
    spec, decision = manifest.parity, manifest.decision
    checks = [
        ParityCheck(
            r.file,
            r.expected_probability,
            p,
            r.expected_decision,
            decision.decide(p),
            parity_ok(
                r.expected_probability,
                p,
                tolerance=spec.tolerance,
                threshold=decision.threshold,
                decide=decision.decide,
            ),
        )
        for r, p in zip(spec.references, probabilities, strict=True)
    ]
    return ParityReport(manifest.version, manifest_sha256, spec.tolerance, decision.threshold, checks)


def combine(reports: Sequence[ParityReport]) -> ParityReport:
    """Several runs of the same references (one per worker): the worst outcome per image."""
    first = reports[0]
    checks = [
        max(column, key=lambda c: (not c.passed, c.abs_diff))
        for column in zip(*(r.checks for r in reports), strict=True)
    ]
    return ParityReport(first.version, first.manifest_sha256, first.tolerance, first.threshold, checks)
