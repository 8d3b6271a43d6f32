"""A bounded walk of a JPEG's markers and a PNG's chunks, before any decoder sees the file.

Pillow reads JPEG markers and PNG chunks in Python, one at a time, and skips 0xFF fill
and stray bytes a byte at a time: a valid 64x64 image padded to 20 MiB with millions of
empty markers, fill bytes or unknown chunks costs seconds of header parsing, and a
progressive JPEG with thousands of (empty) scans costs libjpeg a pass over every
coefficient per scan. No camera writes such files, so they are refused here, with work
bounded by the limits below (the loops run at most a few thousand times, the byte scans
are C-speed `bytes` methods).

The limits are far above what cameras, phones and image libraries write (measured: a phone
JPEG has under 20 segments before its first scan and libjpeg's progressive mode 10 scans;
libpng writes 8 KiB IDAT chunks, 2,560 of them for a 20 MiB image).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_store.errors import ImageTooComplex, TruncatedImage, UnsupportedImageMode

MAX_JPEG_SEGMENTS = 64  # markers before the first scan (APPn, COM, DQT, DHT, SOF, DRI)
MAX_JPEG_HEADER_BYTES = 2 * 1024 * 1024  # bytes before the first scan (EXIF, ICC, XMP, tables)
MAX_JPEG_STRAY_BYTES = 256  # fill (0xFF) and stray bytes between markers, in all
MAX_JPEG_SCANS = 64  # progressive scans; each costs a pass over every coefficient
MAX_PNG_CHUNKS = 8192  # all chunks
MAX_PNG_METADATA_CHUNKS = 64  # chunks that are not image data (IDAT, fdAT)

_FILL = re.compile(rb"\xff{1,%d}" % (MAX_JPEG_STRAY_BYTES + 2))  # bounded: never a 20 MiB match
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
# Start-of-frame markers; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})  # each further scan refines every coefficient
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DATA = frozenset({b"IDAT", b"fdAT"})


@dataclass(frozen=True)
class Structure:
    """What the walk found that admission needs: a progressive JPEG's scans cost extra work."""

    scans: int = 1
    header_bytes: int = 0  # a JPEG's bytes before its first scan, which Pillow parses in Python


def check_structure(data: bytes) -> Structure:
    """Refuse a JPEG or PNG whose structure would cost a parser or decoder unbounded work.

    Other data passes unchanged (the decoder's allow-list decides what it is).
    Raises `ImageTooComplex`, `TruncatedImage`, `UnsupportedImageMode`.
    """
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if data.startswith(_PNG_SIGNATURE):
        _png(data)
    return Structure()


def _jpeg(data: bytes) -> Structure:
    n, pos, segments, stray, progressive = len(data), 2, 0, 0, False
    while True:
        if pos >= n:
            raise TruncatedImage("JPEG ends before its image data")
        if data[pos] != 0xFF:  # stray bytes before a marker (libjpeg warns and skips them)
            nxt = data.find(b"\xff", pos)
            stray += (n if nxt < 0 else nxt) - pos
            if nxt < 0 or stray > MAX_JPEG_STRAY_BYTES:
                raise _too_complex(f"JPEG has more than {MAX_JPEG_STRAY_BYTES} stray or fill bytes between markers")
            pos = nxt
        fill = _FILL.match(data, pos)
        assert fill is not None
        stray += fill.end() - pos - 1
        if stray > MAX_JPEG_STRAY_BYTES:
            raise _too_complex(f"JPEG has more than {MAX_JPEG_STRAY_BYTES} stray or fill bytes between markers")
        pos = fill.end()
        if pos >= n:
            raise TruncatedImage("JPEG ends before its image data")
        marker = data[pos]
        pos += 1
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_complex(f"JPEG has more than {MAX_JPEG_SEGMENTS} markers before its image data")
        if pos > MAX_JPEG_HEADER_BYTES:
            raise _too_complex(f"JPEG has more than {MAX_JPEG_HEADER_BYTES} bytes of metadata before its image data")
        if marker == 0xDA:  # start of scan: the image data; libjpeg (C) reads the rest
            break
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise TruncatedImage("JPEG ends (EOI) before its image data")
        if pos + 2 > n:
            raise TruncatedImage("JPEG ends inside a marker segment")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise TruncatedImage(f"JPEG marker 0xFF{marker:02X} has an impossible length {length}")
        if marker in _SOF and pos + 2 < n and data[pos + 2] != 8:
            raise UnsupportedImageMode(
                f"{data[pos + 2]}-bit JPEGs are not accepted; send an 8-bit JPEG (or a 16-bit PNG)"
            )
        progressive = progressive or marker in _PROGRESSIVE_SOF
        pos += length
    if not progressive:
        # A sequential frame is decoded in one pass whatever follows its scans (~150 µs per
        # camera photo not spent counting markers, in the front and again in the worker).
        return Structure(header_bytes=pos)
    # Inside entropy-coded data every 0xFF is followed by 0x00 or a restart marker, so
    # 0xFFDA is only ever a real marker: counting is exact, and C-speed. (Past the first
    # image's end, an MP file's second image counts too: erring on the side of more work.)
    scans = 1 + data.count(b"\xff\xda", pos)
    if scans > MAX_JPEG_SCANS:
        raise _too_complex(f"JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted")
    return Structure(scans, pos)


def _png(data: bytes) -> None:
    n, pos, chunks, metadata = len(data), len(_PNG_SIGNATURE), 0, 0
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        if kind not in _PNG_DATA:
            metadata += 1
            if metadata > MAX_PNG_METADATA_CHUNKS:
                raise _too_complex(f"PNG has more than {MAX_PNG_METADATA_CHUNKS} chunks that are not image data")
        if chunks > MAX_PNG_CHUNKS:
            raise _too_complex(f"PNG has more than {MAX_PNG_CHUNKS} chunks")
        if kind == b"IEND":
            return
        pos += 12 + length  # length, type, data, CRC
    # A PNG that ends without IEND: the decoder says what is missing.


def _too_complex(message: str) -> ImageTooComplex:
    return ImageTooComplex(f"{message}; no camera writes such a file (re-encode it)")
