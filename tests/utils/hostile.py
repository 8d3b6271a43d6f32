"""A generated corpus of hostile and odd requests, each with the statuses that are right.

Every class of issue 10: extreme aspect ratios in each format and orientation, pixel
bombs, 16-bit and odd modes, every accepted mode and format, refused formats, truncated
and corrupt files, multipart abuse, malformed HTTP, and bundle-upload abuse. Each case
is the exact bytes sent on the wire (`tests.utils.rawhttp`), so a client library cannot
tidy up what an attacker would not.

The limits the expectations assume are `SERVICE_ENV` (small, so the cases stay cheap):
resize 72 (the test bundles), 40 MP per image and per resize, 1 MiB per image, 4 MiB per
predict body, 8 images per request, 16 MiB per upload, 24 MiB per extracted bundle.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.utils import crafted
from tests.utils.archives import HOSTILE_KINDS, hostile_tar, tar_of
from tests.utils.factories import image_bytes, png_bomb
from tests.utils.server import ADMIN_TOKEN

SERVICE_ENV = {
    "APP_WORKERS": "1",
    "APP_MAX_IMAGE_BYTES": str(1024 * 1024),
    "APP_MAX_REQUEST_BYTES": str(4 * 1024 * 1024),
    "APP_MAX_IMAGES_PER_REQUEST": "8",
    "APP_MAX_UPLOAD_BYTES": str(16 * 1024 * 1024),
    "APP_MAX_BUNDLE_BYTES": str(24 * 1024 * 1024),
    # Short deadlines, so the slow-client cases take seconds, not a minute.
    "APP_HEADER_TIMEOUT_S": "1",
    "APP_BODY_TIMEOUT_S": "2",
}
OK = frozenset({200})
IMAGE_REFUSED = frozenset({422})


@dataclass(frozen=True)
class Case:
    cls: str  # the class of input, for per-class counts
    name: str
    wire: list[bytes]  # what is sent, chunk by chunk
    expect: frozenset[int]  # 0: the server closes without answering (nobody left to answer)
    code: str | None = None  # the `error` the body must name, where one is certain
    pause: float = 0.0  # between chunks
    keep_open: bool = True
    tags: tuple[str, ...] = field(default=())


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    length: int | None = None,
    admin: bool = False,
) -> bytes:
    """One HTTP/1.1 request. Keep-alive, as clients send them: a server that refuses a body
    part-way reads and drops the rest instead of resetting the connection under its answer."""
    head = {"Host": "127.0.0.1", **(headers or {})}
    if admin:
        head["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    if "Transfer-Encoding" not in head:
        head["Content-Length"] = str(len(body) if length is None else length)
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def predict(body: bytes, ctype: str = "image/jpeg") -> list[bytes]:
    return [request("POST", "/v1/predict", body, {"Content-Type": ctype})]


def multipart(parts: list[tuple[str, bytes]], boundary: str = "hostile-b0undary", *, close: bool = True) -> bytes:
    """Parts as (Content-Disposition params, body); `close=False` leaves out the closing boundary."""
    out = b""
    for disposition, data in parts:
        out += f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def files(images: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f'name="files"; filename="img{i}.bin"', data) for i, data in enumerate(images)]


def form(parts: list[tuple[str, bytes]], boundary: str = "hostile-b0undary", *, close: bool = True) -> list[bytes]:
    return predict(multipart(parts, boundary, close=close), f"multipart/form-data; boundary={boundary}")


# --- images ---------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)


def png_raw(width: int, height: int, bit_depth: int, color_type: int, pixels: bytes) -> bytes:
    """A PNG written by hand, for bit depths and colour types PIL cannot write (16-bit RGB...)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = len(pixels) // height
    raw = b"".join(b"\x00" + pixels[i * row : (i + 1) * row] for i in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def with_exif_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(img, "JPEG", exif=exif.tobytes())


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims another size: a header-only bomb."""
    data = bytearray(_encode(noise((16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A WebP extended header (VP8X) announcing a canvas of `width` x `height` and no image."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def aspect_cases() -> list[Case]:
    # With resize 72 and 40 MP, the resize of the shorter side allows ~7,700:1.
    cases = []
    sizes = [((100, 1), OK), ((2000, 1), OK), ((7000, 1), OK), ((8000, 1), IMAGE_REFUSED), ((16000, 2), IMAGE_REFUSED)]
    for fmt, ctype, biggest in (("JPEG", "jpeg", 65000), ("PNG", "png", 300000), ("WEBP", "webp", 16383)):
        for (long, short), expect in [*sizes, ((biggest, 1), IMAGE_REFUSED)]:
            for orientation, size in (("wide", (long, short)), ("tall", (short, long))):
                code = "aspect_ratio_too_large" if expect == IMAGE_REFUSED else None
                body = _encode(noise(size, "L" if fmt != "WEBP" else "RGB"), fmt)
                cases.append(
                    Case(
                        "aspect_ratio",
                        f"{fmt} {orientation} {long}:{short}",
                        predict(body, f"image/{ctype}"),
                        expect,
                        code,
                    )
                )
    cases.append(
        Case(
            "aspect_ratio",
            "PNG 3000000x1 (the 500 of issue 10)",
            predict(png_raw(3_000_000, 1, 8, 0, bytes(3_000_000)), "image/png"),
            IMAGE_REFUSED,
            "aspect_ratio_too_large",
        )
    )
    # EXIF turns a wide JPEG tall: the bound holds for the rotated image too.
    for turn in (6, 8):
        for (long, short), expect in (((2000, 1), OK), ((8000, 1), IMAGE_REFUSED)):
            body = with_exif_orientation(noise((long, short), "L"), turn)
            cases.append(Case("aspect_ratio", f"JPEG EXIF {turn} {long}:{short}", predict(body), expect))
    return cases


def bomb_cases() -> list[Case]:
    refused = [
        (50_000, 50_000),
        (7_000, 7_000),
        (6_325, 6_325),
        (65_535, 65_535),
        (1, 2**31 - 1),
        (2**31 - 1, 2**31 - 1),
    ]
    cases = [
        Case("bomb", f"PNG header {w}x{h}", predict(png_bomb(w, h), "image/png"), IMAGE_REFUSED) for w, h in refused
    ]
    cases += [
        Case("bomb", f"JPEG header {w}x{h}", predict(jpeg_claiming(w, h)), IMAGE_REFUSED)
        for w, h in ((60_000, 60_000), (7_000, 7_000), (65_535, 1))
    ]
    cases += [
        Case("bomb", f"WebP canvas {w}x{h}", predict(webp_claiming(w, h), "image/webp"), IMAGE_REFUSED)
        for w, h in ((16_383, 16_383), (16_383, 1))
    ]
    # Inside the limits but heavy: what the memory bound must allow (36 MP decode).
    flat = Image.new("L", (6000, 6000), 128)
    cases.append(Case("bomb", "PNG 6000x6000 flat (36 MP, allowed)", predict(_encode(flat, "PNG"), "image/png"), OK))
    cases.append(Case("bomb", "JPEG 6000x6000 flat (36 MP, allowed)", predict(_encode(flat, "JPEG", quality=10)), OK))
    cases.append(Case("bomb", "PNG 6000x6000 flat, 8 in one request", form(files([_encode(flat, "PNG")] * 8)), OK))
    return cases


def mode_cases() -> list[Case]:
    """Every mode a JPEG, PNG or WebP decodes to is accepted (converted faithfully)."""
    size = (96, 80)
    rgb = noise(size)
    grey16 = np.random.default_rng(1).integers(0, 65536, size=(80, 96), dtype=np.uint16)
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    images: list[tuple[str, bytes, str]] = [
        ("PNG 1-bit", _encode(rgb.convert("1"), "PNG"), "png"),
        ("PNG L", _encode(rgb.convert("L"), "PNG"), "png"),
        ("PNG LA", _encode(rgb.convert("LA"), "PNG"), "png"),
        ("PNG P", _encode(pal, "PNG"), "png"),
        ("PNG P with transparency", _encode(pal, "PNG", transparency=0), "png"),
        ("PNG P 4-bit", _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", bits=4), "png"),
        ("PNG RGB", _encode(rgb, "PNG"), "png"),
        ("PNG RGBA", _encode(rgb.convert("RGBA"), "PNG"), "png"),
        ("PNG optimized", _encode(rgb, "PNG", optimize=True), "png"),
        ("PNG I;16 (16-bit grey)", _encode(Image.fromarray(grey16), "PNG"), "png"),
        ("PNG 16-bit grey, all black", png_raw(96, 80, 16, 0, bytes(96 * 80 * 2)), "png"),
        ("PNG 16-bit grey, all white", png_raw(96, 80, 16, 0, b"\xff" * 96 * 80 * 2), "png"),
        ("PNG 16-bit RGB", png_raw(96, 80, 16, 2, grey16.repeat(3).byteswap().tobytes()), "png"),
        ("PNG 16-bit grey+alpha", png_raw(96, 80, 16, 4, grey16.repeat(2).byteswap().tobytes()), "png"),
        ("PNG 16-bit RGBA", png_raw(96, 80, 16, 6, grey16.repeat(4).byteswap().tobytes()), "png"),
        ("PNG 2-bit grey", png_raw(96, 80, 2, 0, bytes(range(256)) * 7 + bytes(128)), "png"),
        ("PNG 4-bit grey", png_raw(96, 80, 4, 0, bytes(range(256)) * 15), "png"),
        ("PNG animated (APNG)", _encode(rgb, "PNG", save_all=True, append_images=[rgb.rotate(90)]), "png"),
        ("JPEG L", _encode(rgb.convert("L"), "JPEG"), "jpeg"),
        ("JPEG RGB", _encode(rgb, "JPEG"), "jpeg"),
        ("JPEG CMYK", _encode(rgb.convert("CMYK"), "JPEG"), "jpeg"),
        ("JPEG progressive", _encode(rgb, "JPEG", progressive=True), "jpeg"),
        ("JPEG 4:4:4", _encode(rgb, "JPEG", subsampling=0, quality=95), "jpeg"),
        ("JPEG quality 1", _encode(rgb, "JPEG", quality=1), "jpeg"),
        ("JPEG 1x1", _encode(noise((1, 1)), "JPEG"), "jpeg"),
        ("WebP lossy", _encode(rgb, "WEBP"), "webp"),
        ("WebP lossless", _encode(rgb, "WEBP", lossless=True), "webp"),
        ("WebP RGBA", _encode(rgb.convert("RGBA"), "WEBP", lossless=True), "webp"),
        ("WebP animated", _encode(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)]), "webp"),
        ("PNG sent as image/jpeg", _encode(rgb, "PNG"), "jpeg"),
        ("JPEG sent as image/gif", _encode(rgb, "JPEG"), "gif"),
    ]
    cases = [Case("mode", name, predict(data, f"image/{ctype}"), OK) for name, data, ctype in images]
    cases += [
        Case("mode", f"JPEG EXIF orientation {o}", predict(with_exif_orientation(rgb, o)), OK) for o in range(1, 9)
    ]
    return cases


def format_cases() -> list[Case]:
    rgb = noise((64, 48))
    refused = [
        ("GIF", _encode(rgb, "GIF"), "unsupported_image_format"),
        ("BMP", _encode(rgb, "BMP"), "unsupported_image_format"),
        ("TIFF", _encode(rgb, "TIFF"), "unsupported_image_format"),
        (
            "TIFF float",
            _encode(Image.fromarray(np.ones((48, 64), np.float32)), "TIFF"),
            "unsupported_image_format",
        ),
        ("PDF", b"%PDF-1.7\n" + bytes(200), "unsupported_image_format"),
        ("JPEG 2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(200), "unsupported_image_format"),
        ("ICO", _encode(rgb, "ICO"), "not_an_image"),
        ("PPM", _encode(rgb, "PPM"), "not_an_image"),
        ("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "not_an_image"),
        ("HTML", b"<html><body>hello</body></html>", "not_an_image"),
        ("JSON", b'{"image": "parcel.jpg"}', "not_an_image"),
        ("empty", b"", "not_an_image"),
        ("one byte", b"\xff", "not_an_image"),
        ("random 4 KiB", np.random.default_rng(2).bytes(4096), "not_an_image"),
        ("NUL 64 KiB", bytes(65536), "not_an_image"),
        ("PNG signature only", b"\x89PNG\r\n\x1a\n", None),
        ("JPEG markers only", b"\xff\xd8\xff\xd9", None),
    ]
    cases = [Case("format", name, predict(data), IMAGE_REFUSED, code) for name, data, code in refused]
    big = image_bytes(3, (1400, 1400), "PNG")  # over 1 MiB of noise
    cases.append(
        Case("format", "image over the byte limit", predict(big, "image/png"), frozenset({413}), "payload_too_large")
    )
    cases += [
        Case(
            "format",
            f"content type {ctype or '(none)'}",
            [request("POST", "/v1/predict", image_bytes(1), {"Content-Type": ctype} if ctype else {})],
            frozenset({415}),
            "unsupported_media_type",
        )
        for ctype in ("", "text/plain", "application/octet-stream", "application/json", "multipart/mixed; boundary=x")
    ]
    return cases


def corrupt_cases() -> list[Case]:
    originals = {
        "JPEG": (image_bytes(5, (160, 120)), "jpeg"),
        "PNG": (image_bytes(5, (160, 120), "PNG"), "png"),
        "WebP": (image_bytes(5, (160, 120), "WEBP"), "webp"),
    }
    cases = []
    for fmt, (data, ctype) in originals.items():
        for frac in (0.05, 0.25, 0.5, 0.75, 0.95):
            cut = data[: int(len(data) * frac)]
            cases.append(
                Case("corrupt", f"{fmt} truncated at {frac:.0%}", predict(cut, f"image/{ctype}"), IMAGE_REFUSED)
            )
        # The last bytes are end markers some decoders do without: either answer is right, a 5xx is not.
        cases.append(
            Case(
                "corrupt", f"{fmt} minus its last 2 bytes", predict(data[:-2], f"image/{ctype}"), frozenset({200, 422})
            )
        )
        rng = np.random.default_rng(len(data))
        for i in range(4):
            flipped = bytearray(data)
            for pos in rng.integers(len(data) // 4, len(data), size=8):
                flipped[pos] ^= 0xFF
            cases.append(
                Case(
                    "corrupt",
                    f"{fmt} 8 bytes flipped #{i}",
                    predict(bytes(flipped), f"image/{ctype}"),
                    frozenset({200, 422}),
                )
            )
        header = bytearray(data)
        header[1:6] = b"\x00\x00\x00\x00\x00"
        cases.append(Case("corrupt", f"{fmt} header zeroed", predict(bytes(header), f"image/{ctype}"), IMAGE_REFUSED))
    exif = bytearray(with_exif_orientation(noise((64, 48)), 6))
    app1 = exif.index(b"Exif")
    exif[app1 + 10 : app1 + 30] = b"\xff" * 20
    cases.append(Case("corrupt", "JPEG with a corrupt EXIF block", predict(bytes(exif)), frozenset({200, 422})))
    return cases


def multipart_cases() -> list[Case]:
    good = image_bytes(9)
    b = "hostile-b0undary"
    over_part = image_bytes(4, (700, 700), "PNG")  # over the 1 MiB image limit, under the 4 MiB body limit
    near = [image_bytes(40 + i, (560, 560), "PNG") for i in range(5)]  # ~940 KB each: 4.7 MB in all
    assert all(len(x) < 1024 * 1024 for x in near) and sum(map(len, near)) > 4 * 1024 * 1024
    cases = [
        Case("multipart", "2 good files", form(files([good, image_bytes(10)])), OK),
        Case("multipart", "8 good files (the limit)", form(files([image_bytes(i) for i in range(8)])), OK),
        Case("multipart", "9 files", form(files([good] * 9)), frozenset({413}), "too_many_images"),
        Case("multipart", "200 tiny parts", form(files([b"x"] * 200)), frozenset({413}), "too_many_images"),
        Case(
            "multipart", "one part over the image limit", form(files([over_part])), frozenset({413}), "image_too_large"
        ),
        Case(
            "multipart",
            "5 parts in limit, body over the request limit",
            form(files(near)),
            frozenset({413}),
            "payload_too_large",
        ),
        Case(
            "multipart",
            "declared 10 GB",
            [
                request(
                    "POST", "/v1/predict", b"", {"Content-Type": f"multipart/form-data; boundary={b}"}, length=10**10
                )
            ],
            frozenset({413}),
            "payload_too_large",
        ),
        Case("multipart", "unterminated", form(files([good]), close=False), IMAGE_REFUSED, "invalid_multipart"),
        Case(
            "multipart",
            "wrong boundary in the body",
            predict(multipart(files([good]), "other"), f"multipart/form-data; boundary={b}"),
            IMAGE_REFUSED,
            "invalid_multipart",
        ),
        Case(
            "multipart",
            "no boundary parameter",
            predict(multipart(files([good])), "multipart/form-data"),
            IMAGE_REFUSED,
            "invalid_multipart",
        ),
        Case("multipart", "empty body", predict(b"", f"multipart/form-data; boundary={b}"), IMAGE_REFUSED),
        Case(
            "multipart",
            "only the closing boundary",
            predict(f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"),
            IMAGE_REFUSED,
        ),
        Case(
            "multipart",
            "no 'files' field",
            form([('name="image"; filename="a.jpg"', good)]),
            IMAGE_REFUSED,
            "no_images",
        ),
        Case(
            "multipart",
            "text field over 64 KiB",
            form([('name="note"', b"n" * 70_000), *files([good])]),
            frozenset({413}),
            "payload_too_large",
        ),
        Case(
            "multipart",
            "a part without Content-Disposition",
            predict(
                f"--{b}\r\nContent-Type: image/jpeg\r\n\r\n".encode() + good + f"\r\n--{b}--\r\n".encode(),
                f"multipart/form-data; boundary={b}",
            ),
            IMAGE_REFUSED,
            "no_images",
        ),
        Case("multipart", "an empty file part", form(files([b""])), IMAGE_REFUSED, "not_an_image"),
        Case("multipart", "a good and a truncated file", form(files([good, good[: len(good) // 2]])), IMAGE_REFUSED),
        Case(
            "multipart",
            "a good file and a GIF",
            form(files([good, _encode(noise((8, 8)), "GIF")])),
            IMAGE_REFUSED,
            "unsupported_image_format",
        ),
        Case("multipart", "filename ../../etc/passwd", form([('name="files"; filename="../../etc/passwd"', good)]), OK),
        Case(
            "multipart",
            "filename of 10,000 characters",
            form([(f'name="files"; filename="{"f" * 10_000}.jpg"', good)]),
            IMAGE_REFUSED,
            "invalid_multipart",  # python-multipart's bound on a part's headers
        ),
        Case("multipart", "boundary of 200 characters", form(files([good]), "B" * 200), frozenset({200, 422})),
        Case(
            "multipart",
            "LF line endings",
            predict(multipart(files([good])).replace(b"\r\n", b"\n"), f"multipart/form-data; boundary={b}"),
            IMAGE_REFUSED,
        ),
        Case(
            "multipart",
            "a nested multipart/mixed part",
            form(files([multipart(files([good]), "inner")])),
            IMAGE_REFUSED,
            "not_an_image",
        ),
        Case(
            "multipart",
            "a part header of 100 KB",
            predict(
                f'--{b}\r\nContent-Disposition: form-data; name="files"\r\nX-Pad: {"p" * 100_000}\r\n\r\n'.encode()
                + good
                + f"\r\n--{b}--\r\n".encode(),
                f"multipart/form-data; boundary={b}",
            ),
            frozenset({200, 413, 422}),
        ),
        Case(
            "multipart",
            "garbage before the first boundary",
            predict(b"x" * 5000 + b"\r\n" + multipart(files([good])), f"multipart/form-data; boundary={b}"),
            frozenset({200, 422}),
        ),
    ]
    return cases


def http_cases() -> list[Case]:
    good = image_bytes(11)
    ok_head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
    bad_request = frozenset({400})
    cases = [
        Case("http", "URL of 9 KB", [request("GET", "/healthz?" + "q" * 9_000)], frozenset({414}), "uri_too_long"),
        Case("http", "URL of 60 KB", [request("GET", "/" + "a" * 60_000)], frozenset({414}), "uri_too_long"),
        Case(
            "http",
            "one header of 70 KB",
            [request("GET", "/healthz", headers={"X-Big": "h" * 70_000})],
            frozenset({431}),
            "request_headers_too_large",
        ),
        Case(
            "http",
            "800 headers of 100 bytes",
            [request("GET", "/healthz", headers={f"X-H{i}": "v" * 90 for i in range(800)})],
            frozenset({431}),
            "request_headers_too_large",
        ),
        Case(
            "http",
            "a header name of 66 KB",
            [b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"N" * 66_000 + b": v\r\n\r\n"],
            frozenset({431}),
            "request_headers_too_large",
        ),
        Case("http", "garbage request line", [b"HELLO THERE\r\n\r\n"], bad_request, "bad_request"),
        Case("http", "binary garbage", [bytes(range(256)) * 4], bad_request, "bad_request"),
        Case(
            "http",
            "header without a colon",
            [b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"],
            bad_request,
            "bad_request",
        ),
        Case(
            "http",
            "Content-Length abc",
            [(ok_head + "Content-Length: abc\r\n\r\n").encode() + good],
            bad_request,
            "bad_request",
        ),
        Case(
            "http",
            "Content-Length -1",
            [(ok_head + "Content-Length: -1\r\n\r\n").encode() + good],
            bad_request,
            "bad_request",
        ),
        Case(
            "http",
            "two different Content-Lengths",
            [(ok_head + f"Content-Length: {len(good)}\r\nContent-Length: 5\r\n\r\n").encode() + good],
            bad_request,
            "bad_request",
        ),
        Case(
            "http",
            "Content-Length and chunked",
            [(ok_head + f"Content-Length: {len(good)}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + good],
            bad_request,
            "bad_request",
        ),
        Case(
            "http",
            "bad chunk size",
            [(ok_head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode() + good],
            frozenset({400, 0}),
        ),
        Case(
            "http",
            "chunked good image",
            [
                (ok_head + "Transfer-Encoding: chunked\r\n\r\n").encode()
                + f"{len(good):x}\r\n".encode()
                + good
                + b"\r\n0\r\n\r\n"
            ],
            OK,
        ),
        Case(
            "http",
            "HTTP/1.0 good image",
            [
                f"POST /v1/predict HTTP/1.0\r\nContent-Type: image/jpeg\r\nContent-Length: {len(good)}\r\n\r\n".encode()
                + good
            ],
            OK,
        ),
        Case(
            "http",
            "no Host header",
            [
                b"POST /v1/predict HTTP/1.1\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
                + f"Content-Length: {len(good)}\r\n\r\n".encode()
                + good
            ],
            OK,
        ),
        Case(
            "http",
            "Expect: 100-continue",
            [request("POST", "/v1/predict", good, {"Content-Type": "image/jpeg", "Expect": "100-continue"})],
            OK,
        ),
        Case(
            "http",
            "headers a few bytes at a time",
            [x.encode() for x in ok_head] + [f"Content-Length: {len(good)}\r\n\r\n".encode() + good],
            OK,
            pause=0.001,
        ),
        Case(
            "http",
            "headers never finished (slow headers)",
            [b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"],
            frozenset({408}),
            "request_timeout",
        ),
        Case("http", "connect and send nothing", [b""], frozenset({408}), "request_timeout"),
        Case(
            "http",
            "body never finished (slow body)",
            [(ok_head + "Content-Length: 100000\r\n\r\n").encode() + good[:100]],
            frozenset({408}),
            "request_timeout",
        ),
        Case(
            "http",
            "body cut, client gone",
            [(ok_head + "Content-Length: 100000\r\n\r\n").encode() + good[:100]],
            frozenset({408, 0}),
            keep_open=False,
        ),
        Case("http", "unknown method", [b"BREW /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n"], frozenset({400, 405})),
        Case(
            "http",
            "absolute-form target",
            [
                b"POST http://127.0.0.1/v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Content-Type: image/jpeg\r\nContent-Length: {len(good)}\r\n\r\n".encode()
                + good
            ],
            frozenset({200, 404}),
        ),
        Case(
            "http",
            "dot segments in the path",
            [request("POST", "/v1/../v1/predict", good, {"Content-Type": "image/jpeg"})],
            frozenset({404}),
            "not_found",
        ),
        Case("http", "NUL in the path", [request("GET", "/healthz%00")], frozenset({404}), "not_found"),
        Case("http", "unknown path", [request("GET", "/admin")], frozenset({404}), "not_found"),
    ]
    for method, path in (
        ("GET", "/v1/predict"),
        ("PUT", "/v1/predict"),
        ("DELETE", "/healthz"),
        ("PATCH", "/v1/models"),
        ("OPTIONS", "/v1/predict"),
    ):
        cases.append(
            Case(
                "http",
                f"{method} {path}",
                [request(method, path)],
                frozenset({405}),
                "method_not_allowed",
                tags=("allow",),
            )
        )
    return cases


def tar_cases(bundles: dict[str, Path], tmp: Path) -> list[Case]:
    good = bundles["v1"]  # already in the store: a good upload is an identical re-import (200)

    def upload(
        body: bytes, ctype: str = "application/x-tar", admin: bool = True, length: int | None = None
    ) -> list[bytes]:
        return [request("POST", "/v1/models", body, {"Content-Type": ctype}, admin=admin, length=length)]

    unsafe = frozenset({422})
    cases = [
        Case("tar", f"hostile member: {kind}", upload(hostile_tar(kind, good)), unsafe, "unsafe_archive")
        for kind in HOSTILE_KINDS
    ]
    plain = tar_of(good)
    many = io.BytesIO()
    with tarfile.open(fileobj=many, mode="w") as tar:
        for i in range(1001):
            info = tarfile.TarInfo(f"bundle/f{i}")
            tar.addfile(info, io.BytesIO(b""))
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
        info = tarfile.TarInfo("bundle/model.safetensors")
        info.size = 64 * 1024 * 1024  # well past the 24 MiB a bundle may expand to
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    tampered_dir = tmp / "tampered"
    shutil.copytree(good, tampered_dir)
    weights = tampered_dir / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    cases += [
        Case("tar", "not a tar", upload(b"hello, this is not an archive" * 10), unsafe, "unsafe_archive"),
        Case("tar", "empty body", upload(b""), unsafe, "unsafe_archive"),
        Case("tar", "truncated tar", upload(plain[: len(plain) // 2]), unsafe),
        Case("tar", "1001 members", upload(many.getvalue()), unsafe, "unsafe_archive"),
        Case("tar", "gzip bomb (64 MiB of zeros)", upload(bomb.getvalue()), unsafe, "unsafe_archive"),
        Case("tar", "tampered weights", upload(tar_of(tampered_dir)), unsafe, "bundle_tampered"),
        Case("tar", "good bundle, identical re-upload", upload(plain), OK),
        Case("tar", "good bundle, flat layout", upload(tar_of(good, arcname=".")), OK),
        Case("tar", "good bundle, gzip", upload(tar_of(good, mode="w:gz")), OK),
        Case("tar", "good bundle, bzip2", upload(bz2.compress(plain)), OK),
        Case("tar", "good bundle, xz", upload(lzma.compress(plain)), OK),
        Case("tar", "wrong content type", upload(plain, "image/png"), frozenset({415}), "unsupported_media_type"),
        Case("tar", "no token", upload(plain, admin=False), frozenset({401}), "unauthorized"),
        Case(
            "tar",
            "wrong token",
            [
                request(
                    "POST",
                    "/v1/models",
                    plain,
                    {"Content-Type": "application/x-tar", "Authorization": "Bearer " + "x" * 26},
                )
            ],
            frozenset({401}),
            "unauthorized",
        ),
        Case(
            "tar",
            "Basic auth",
            [
                request(
                    "POST",
                    "/v1/models",
                    plain,
                    {"Content-Type": "application/x-tar", "Authorization": "Basic dXNlcjpwYXNz"},
                )
            ],
            frozenset({401}),
            "unauthorized",
        ),
        Case("tar", "declared 1 GB", upload(b"", length=10**9), frozenset({413}), "payload_too_large"),
        Case(
            "tar",
            "activate a traversal name",
            [request("POST", "/v1/models/..%2F..%2Fetc/activate", admin=True)],
            frozenset({404, 422}),
        ),
        Case(
            "tar",
            "activate a name with a newline",
            [request("POST", "/v1/models/v1%0A/activate", admin=True)],
            unsafe,
            "invalid_version_name",
        ),
        Case(
            "tar",
            "activate an unknown version",
            [request("POST", "/v1/models/v9/activate", admin=True)],
            frozenset({404}),
            "version_not_found",
        ),
        Case(
            "tar",
            "rollback with a body that is not JSON",
            [request("POST", "/v1/models/rollback", b"{not json", {"Content-Type": "application/json"}, admin=True)],
            unsafe,
            "invalid_request",
        ),
        Case(
            "tar",
            "rollback with a reason of 10 KB",
            [
                request(
                    "POST",
                    "/v1/models/rollback",
                    b'{"reason": "' + b"r" * 10_000 + b'"}',
                    {"Content-Type": "application/json"},
                    admin=True,
                )
            ],
            unsafe,
            "invalid_request",
        ),
    ]
    return cases


# --- structure that costs more than pixels (issue 19) ----------------------------------


def structure_cases() -> list[Case]:
    """Images under the byte limit whose markers, fill, chunks or scans would stall a parser
    (the front) or a decoder (a worker): refused before either walks them."""
    size = 1024 * 1024 - 4096  # SERVICE_ENV's per-image limit
    too_complex = frozenset({422})
    return [
        Case("structure", "JPEG padded with empty COM markers", predict(crafted.jpeg_with_markers(size)),
             too_complex, "image_too_complex"),
        Case("structure", "JPEG padded with 0xFF fill", predict(crafted.jpeg_with_fill(size)),
             too_complex, "image_too_complex"),
        Case("structure", "PNG padded with unknown chunks", predict(crafted.png_with_chunks(size), "image/png"),
             too_complex, "image_too_complex"),
        Case("structure", "progressive JPEG with 3,000 scans", predict(crafted.progressive_jpeg(3000, (128, 128))),
             too_complex, "image_too_complex"),
        Case("structure", "four padded PNGs in one request",
             form(files([crafted.png_with_chunks(size // 4)] * 4)), too_complex, "image_too_complex"),
        Case("structure", "12-bit JPEG", predict(crafted.jpeg_with_precision(12)),
             frozenset({422}), "unsupported_image_mode"),
        Case("structure", "MPO from a phone", predict(crafted.mpo_and_jpeg()[0]), OK),
        Case("structure", "libjpeg progressive JPEG", predict(crafted.progressive_jpeg(0)), OK),
    ]  # fmt: skip


def budget_cases() -> list[Case]:
    """`X-Request-Timeout-Ms`: a malformed budget is refused before the body is read."""
    image = image_bytes(61)
    return [
        Case("budget", f"X-Request-Timeout-Ms: {value!r}",
             [request("POST", "/v1/predict", image, {"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": value})],
             frozenset({422}), "invalid_request_timeout")
        for value in ("0", "-1", "1e3", "600001", "99999999999999999999", "")
    ] + [
        Case("budget", "X-Request-Timeout-Ms: 60000",
             [request("POST", "/v1/predict", image, {"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": "60000"})],
             OK),
    ]  # fmt: skip


def body_before_token_cases() -> list[Case]:
    """Management bodies: never read (no `100 Continue`) before the token is checked."""
    huge = {"Content-Type": "application/json", "Expect": "100-continue"}
    return [
        Case("body-before-token", f"{method} {path}, no token, 10 GB declared",
             [request(method, path, headers=huge, length=10_000_000_000)], frozenset({401}), "unauthorized")
        for method, path in (("PUT", "/v1/shadow"), ("DELETE", "/v1/shadow"), ("POST", "/v1/models/v2/activate"))
    ] + [
        Case("body-before-token", "PUT /v1/shadow, token, 10 GB declared",
             [request("PUT", "/v1/shadow", headers=huge, length=10_000_000_000, admin=True)],
             frozenset({413}), "payload_too_large"),
        Case("body-before-token", "PUT /v1/shadow, token, body not JSON",
             [request("PUT", "/v1/shadow", b"{nope", {"Content-Type": "application/json"}, admin=True)],
             frozenset({422}), "invalid_request"),
    ]  # fmt: skip


def explain_cases() -> list[Case]:
    """`POST /v1/explain` reads predict's body forms through the same checks, one image only;
    `GET /v1/receipts/keys` with receipts off."""
    path = "/v1/explain"
    good = image_bytes(71)
    jpeg = {"Content-Type": "image/jpeg"}
    b = "hostile-b0undary"
    two = multipart(files([good, good]), b)
    in_parts = {"Content-Type": f"multipart/form-data; boundary={b}"}
    return [
        Case("explain", "one image", [request("POST", path, good, jpeg)], OK),
        Case("explain", "two images", [request("POST", path, two, in_parts)], IMAGE_REFUSED, "one_image_only"),
        Case("explain", "PNG header 100000x100000", [request("POST", path, png_bomb(100_000, 100_000),
             {"Content-Type": "image/png"})], IMAGE_REFUSED),
        Case("explain", "JPEG padded with empty COM markers",
             [request("POST", path, crafted.jpeg_with_markers(1024 * 1024 - 4096), jpeg)],
             IMAGE_REFUSED, "image_too_complex"),
        Case("explain", "GIF", [request("POST", path, b"GIF89a" + b"\0" * 30, jpeg)],
             IMAGE_REFUSED, "unsupported_image_format"),
        Case("explain", "10 GB declared", [request("POST", path, headers=jpeg, length=10**10)],
             frozenset({413}), "payload_too_large"),
        Case("explain", "X-Request-Timeout-Ms: -1",
             [request("POST", path, good, {**jpeg, "X-Request-Timeout-Ms": "-1"})],
             frozenset({422}), "invalid_request_timeout"),
        Case("explain", "hang-up mid-body", [request("POST", path, headers=jpeg, length=10_000) + good[:100]],
             frozenset({0}), keep_open=False),
        Case("explain", "GET /v1/receipts/keys, receipts off", [request("GET", "/v1/receipts/keys")],
             frozenset({404}), "receipts_off"),
    ]  # fmt: skip


def canary_cases() -> list[Case]:
    """The canary's management routes (issue 20): no token, huge or malformed bodies, policies
    with unknown or out-of-range settings, canaries naming both or neither of their station
    forms: each a 4xx naming the problem, the store unchanged."""
    jsn = {"Content-Type": "application/json"}
    huge = {**jsn, "Expect": "100-continue"}

    def put(path: str, body: object) -> bytes:
        return request("PUT", path, json.dumps(body).encode(), jsn, admin=True)

    policy = "/v1/canary/policy"
    return [
        Case("canary", "PUT /v1/canary/policy, no token, 10 GB declared",
             [request("PUT", policy, headers=huge, length=10_000_000_000)], frozenset({401}), "unauthorized"),
        Case("canary", "PUT /v1/canary/policy, token, 10 GB declared",
             [request("PUT", policy, headers=huge, length=10_000_000_000, admin=True)],
             frozenset({413}), "payload_too_large"),
        Case("canary", "policy: not JSON", [request("PUT", policy, b"{nope", jsn, admin=True)],
             frozenset({422}), "invalid_request"),
        Case("canary", "policy: an unknown setting", [put(policy, {"policy": {"min_imgs": 5}})],
             frozenset({422}), "invalid_request"),
        Case("canary", "policy: agreement above 1", [put(policy, {"policy": {"min_agreement": 7}})],
             frozenset({422}), "invalid_request"),
        Case("canary", "policy: a string for a count", [put(policy, {"policy": {"min_images": "200"}})],
             frozenset({422}), "invalid_request"),
        Case("canary", "policy: 60,000 nested lists", [request("PUT", policy, b"[" * 60_000, jsn, admin=True)],
             frozenset({422}), "invalid_request"),
        Case("canary", "GET /v1/canary/policy, no token", [request("GET", policy)],
             frozenset({401}), "unauthorized"),
        Case("canary", "canary: stations and fraction",
             [put("/v1/canary", {"version": "v2", "stations": ["a"], "fraction": 0.5})],
             frozenset({422}), "invalid_request"),
        Case("canary", "canary: a station ID with a slash",
             [put("/v1/canary", {"version": "v2", "stations": ["../a"]})], frozenset({422}), "invalid_request"),
        Case("canary", "canary: fraction 0", [put("/v1/canary", {"version": "v2", "fraction": 0})],
             frozenset({422}), "invalid_request"),
        Case("canary", "end with no canary running", [request("DELETE", "/v1/canary", admin=True)],
             frozenset({409}), "canary_conflict"),
    ]  # fmt: skip


# --- the HTTP edge (issue 19) ------------------------------------------------------------


def edge_cases() -> list[Case]:
    """Pipelining, request lines that are not HTTP/1.x, and clients that hang up mid-body."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    bad_request = frozenset({400})
    cases = [
        # Several complete requests in one read: none of them is an oversized head (was 431).
        Case("edge", "4,000 pipelined GETs", [get * 4000], OK),
        Case("edge", "pipelined GETs, then one split across writes", [get * 2000 + get[:20], get[20:]], OK),
        Case("edge", "HTTP/0.9 request line, alone", [b"GET /healthz\r\n"], bad_request, "bad_request"),
        Case("edge", "HTTP/0.9 request line and an empty line", [b"GET /healthz\r\n\r\n"], bad_request, "bad_request"),
        Case("edge", "HTTP/0.9 request line with a header", [b"GET / \r\nHost: x\r\n\r\n"], bad_request),
        Case(
            "edge",
            "HTTP/2.0 in an HTTP/1 request line",
            [b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"],
            bad_request,
            "bad_request",
        ),
    ]
    # The client hangs up part-way through a body each kind of route reads: a management
    # JSON body (after its token), rollback's optional reason, the predict intake. Nobody is
    # left to answer; the service counts a 499, never a 400 or a 5xx.
    for name, method, path, admin in (
        ("shadow JSON", "PUT", "/v1/shadow", True),
        ("rollback reason", "POST", "/v1/models/rollback", True),
        ("predict image", "POST", "/v1/predict", False),
    ):
        ctype = "image/jpeg" if path == "/v1/predict" else "application/json"
        head = request(method, path, headers={"Content-Type": ctype}, length=10_000, admin=admin)
        cases.append(
            Case("edge", f"hang-up mid-body: {name}", [head + b'{"reason": "'], frozenset({0}), keep_open=False)
        )
    return cases


# --- the Open Inference Protocol v2 (issue 24) --------------------------------------------

OIP = ("oip",)  # errors in the protocol's shape: {"error": "<code>: <message>"}


def oip_body(
    images: list[bytes], *, sizes: list[int] | None = None, binary_size: int | None = None, shape: int | None = None
) -> tuple[bytes, int]:
    """An inference request as tritonclient encodes it (header JSON, then each element as a
    4-byte little-endian length and its bytes), with any of the counts made to lie."""
    lengths = sizes if sizes is not None else [len(i) for i in images]
    section = b"".join(struct.pack("<I", n) + i for n, i in zip(lengths, images, strict=True))
    size = len(section) if binary_size is None else binary_size
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images) if shape is None else shape]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}).encode()
    return header + section, len(header)


def infer(path: str, body: bytes, header_length: int | None, **headers: str) -> list[bytes]:
    head = {"Content-Type": "application/octet-stream", **headers}
    if header_length is not None:
        head["Inference-Header-Content-Length"] = str(header_length)
    return [request("POST", path, body, head)]


def zip_bomb(encoding: str, size: int = 256 * 1024 * 1024) -> bytes:
    """About size/1000 bytes that inflate to `size` zero bytes (compressed a MiB at a time)."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join(pack.compress(zeros) for _ in range(size // len(zeros))) + pack.flush()


def oip_cases(model: str) -> list[Case]:
    """Inference requests whose counts, lengths, encodings or names lie: each a 4xx naming it."""
    path = f"/v2/models/{model}/infer"
    good = image_bytes(1)
    body, n = oip_body([good, good])
    bad = frozenset({400})
    as_json = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}).encode()
    return [
        Case("oip", "a batch of two", infer(path, body, n), OK),
        Case("oip", "binary_data_size says 10 more", infer(path, *oip_body([good], binary_size=len(good) + 14)),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "binary_data_size of 4 GiB", infer(path, *oip_body([good], binary_size=2**32)),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "element length past the end", infer(path, *oip_body([good], sizes=[len(good) + 100])),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "element length 0xFFFFFFFF", infer(path, *oip_body([good], sizes=[0xFFFFFFFF])),
             frozenset({413}), "image_too_large", tags=OIP),
        Case("oip", "shape [2], three elements", infer(path, *oip_body([good] * 3, shape=2)),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "shape [3], two elements", infer(path, *oip_body([good] * 2, shape=3)),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "nine elements (the limit is 8)", infer(path, *oip_body([good] * 9)),
             frozenset({413}), "too_many_images", tags=OIP),
        Case("oip", "shape [1000000000]", infer(path, *oip_body([good], shape=10**9)),
             frozenset({413}), "too_many_images", tags=OIP),
        Case("oip", "gzip bomb", infer(path, zip_bomb("gzip"), None, **{"Content-Encoding": "gzip"}),
             frozenset({413}), "payload_too_large", tags=OIP),
        Case("oip", "deflate bomb", infer(path, zip_bomb("deflate"), None,
             **{"Content-Encoding": "deflate"}), frozenset({413}), "payload_too_large", tags=OIP),
        Case("oip", "truncated gzip", infer(path, gzip.compress(body)[:-20], n, **{"Content-Encoding": "gzip"}),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "brotli", infer(path, body, n, **{"Content-Encoding": "br"}),
             frozenset({415}), "unsupported_media_type", tags=OIP),
        Case("oip", "BYTES as JSON data", infer(path, as_json, None), bad, "invalid_inference_request", tags=OIP),
        Case("oip", "header length past the body", infer(path, body, len(body) + 1),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "header length negative", [request("POST", path, body, {"Inference-Header-Content-Length": "-5"})],
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "header JSON of 100 KiB", infer(path, b" " * 100_000 + body, n + 100_000),
             frozenset({413}), "payload_too_large", tags=OIP),
        Case("oip", "header not JSON", infer(path, b"\xff" * 10 + body[n:], 10),
             bad, "invalid_inference_request", tags=OIP),
        Case("oip", "10 GB declared", [request("POST", path, headers={"Content-Encoding": "gzip"}, length=10**10)],
             frozenset({413}), "payload_too_large", tags=OIP),
        Case("oip", "a wrong model name", infer("/v2/models/not-this-one/infer", body, n),
             frozenset({404}), "model_not_found", tags=OIP),
        Case("oip", "another version", infer(f"/v2/models/{model}/versions/v9/infer", body, n),
             frozenset({404}), "version_not_found", tags=OIP),
        Case("oip", "not an image", infer(path, *oip_body([b"GIF89a" + b"\0" * 30])),
             IMAGE_REFUSED, "unsupported_image_format", tags=OIP),
    ]  # fmt: skip


def corpus(bundles: dict[str, Path], tmp: Path) -> list[Case]:
    model = json.loads((bundles["v1"] / "manifest.json").read_text())["name"]
    return [
        *oip_cases(model),
        *structure_cases(),
        *body_before_token_cases(),
        *budget_cases(),
        *aspect_cases(),
        *bomb_cases(),
        *mode_cases(),
        *format_cases(),
        *corrupt_cases(),
        *multipart_cases(),
        *http_cases(),
        *tar_cases(bundles, tmp),
        *edge_cases(),
        *explain_cases(),
        *canary_cases(),
    ]
