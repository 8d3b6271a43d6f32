"""Valid small images whose structure costs a parser or decoder far more than their pixels:
what an attacker sends to stall the front (markers, fill, chunks) or a worker (scans)."""

from __future__ import annotations

import io
import re
import struct
import zlib

from PIL import Image

from tests.utils.factories import image_bytes

SMALL = (64, 64)


def jpeg_with_markers(total: int) -> bytes:
    """A 64x64 JPEG padded to about `total` bytes with empty COM markers after SOI."""
    jpg = image_bytes(1, SMALL)
    return jpg[:2] + b"\xff\xfe\x00\x02" * max(0, (total - len(jpg)) // 4) + jpg[2:]


def jpeg_with_fill(total: int) -> bytes:
    """A 64x64 JPEG padded with 0xFF fill bytes before its first marker (legal, and each
    one a step of Pillow's Python marker loop)."""
    jpg = image_bytes(2, SMALL)
    return jpg[:2] + b"\xff" * max(0, total - len(jpg)) + jpg[2:]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(total: int) -> bytes:
    """A 64x64 PNG padded with empty unknown ancillary chunks after IHDR."""
    png = image_bytes(3, SMALL, "PNG")
    unknown = _chunk(b"zzZz", b"")
    return png[:33] + unknown * max(0, (total - len(png)) // len(unknown)) + png[33:]


def progressive_jpeg(extra_scans: int, size: tuple[int, int] = (256, 256)) -> bytes:
    """A progressive JPEG (libjpeg's 10 scans) with its smallest scan repeated `extra_scans`
    times: libjpeg warns about the bogus progression and decodes every one of them."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(4, size))).save(buf, "JPEG", quality=60, progressive=True)
    data = buf.getvalue()
    starts = [m.start() for m in re.finditer(b"\xff\xda", data)]
    eoi = data.rindex(b"\xff\xd9")
    ends = [*starts[1:], eoi]
    smallest = min((data[a:b] for a, b in zip(starts, ends, strict=True)), key=len)
    return data[:eoi] + smallest * extra_scans + data[eoi:]


def jpeg_with_precision(bits: int) -> bytes:
    """A JPEG whose frame header declares `bits` bits per sample (12: what medical and some
    industrial cameras write; Pillow's libjpeg decodes only 8)."""
    data = bytearray(image_bytes(5, SMALL))
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = bits
    return bytes(data)


def mpo_and_jpeg(seed: int = 6, size: tuple[int, int] = (400, 300)) -> tuple[bytes, bytes]:
    """The same picture as an MPO (a JPEG with an MP index and a second image, as phones
    write) and as a plain JPEG with the same encoder settings."""
    img = Image.open(io.BytesIO(image_bytes(seed, size, "PNG"))).convert("RGB")
    mpo, jpg = io.BytesIO(), io.BytesIO()
    img.save(mpo, "MPO", save_all=True, append_images=[img.resize((size[0] // 4, size[1] // 4))], quality=90)
    img.save(jpg, "JPEG", quality=90)
    return mpo.getvalue(), jpg.getvalue()
