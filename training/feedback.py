"""Production feedback → a labelled data set: `python -m training dataset --from-feedback`.

Every captured image an inspector labelled becomes `<label>/<request id>-<n>.<ext>` in an
ImageFolder tree that `train` accepts as it is, with `provenance.json` saying where each
file came from (request, station, the version that served it and what it decided, who
labelled it and when, its sha256).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from model_store.capture import open_capture
from model_store.manifest import sha256_bytes
from training.data import DataError


def dataset_from_feedback(location: str, out: Path, labels: tuple[str, str] = ("intact", "damaged")) -> dict[str, int]:
    """Write the labelled captured images under `out` (which must not exist); per-label counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already holds files; give a new directory so data sets never mix")
    capture = open_capture(location)
    given = capture.labels()
    counts = dict.fromkeys(labels, 0)
    provenance: list[dict[str, Any]] = []
    for name in labels:
        (out / name).mkdir(parents=True, exist_ok=True)
    for record in capture.records():
        label = given.get(record["request_id"])
        if label is None:
            continue
        for i, (image, truth) in enumerate(zip(record["images"], label["labels"], strict=False)):
            if truth not in counts:
                continue  # a label of another bundle's vocabulary: not part of this data set
            data = capture.image(record["request_id"], image["file"])
            if sha256_bytes(data) != image["sha256"]:
                raise DataError(f"captured image {record['request_id']}/{image['file']} does not match its record")
            name = f"{record['request_id']}-{i}{Path(image['file']).suffix}"
            (out / truth / name).write_bytes(data)
            counts[truth] += 1
            provenance.append(
                {
                    "path": f"{truth}/{name}",
                    "sha256": image["sha256"],
                    "label": truth,
                    "request_id": record["request_id"],
                    "station": record["station"],
                    "served_by": record["version"],
                    "served_probability": image["probability"],
                    "served_decision": image["decision"],
                    "captured_at": record["time"],
                    "labelled_by": label.get("inspector") or label.get("by"),
                    "labelled_at": label.get("time"),
                }
            )
    if not provenance:
        raise DataError(f"no labelled feedback in {location}: label captured requests with POST /v1/feedback first")
    (out / "provenance.json").write_text(
        json.dumps({"source": location, "created_at": time.time(), "counts": counts, "images": provenance}, indent=1)
        + "\n"
    )
    return counts
