"""Image files ↔ numpy arrays in RGB order (OpenCV underneath, which works in BGR).

Arrays keep the file's bit depth (uint8 or uint16) and channels: H×W gray, H×W×3 RGB or
H×W×4 RGBA. Writes go to a temporary file in the target folder and are renamed when complete.

Metadata: ``read_metadata`` takes a file's EXIF, ICC colour profile and resolution (DPI), and
``write_image(..., metadata=)`` puts them into a JPEG or PNG it writes (as the segments and
chunks those formats define), so a deblurred photo keeps its camera data, colours and print
size. Pixels are read as stored (EXIF orientation is not applied), so the orientation tag is
copied as it is and viewers turn the output as they turned the input.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
EXIF_HEADER = b"Exif\x00\x00"
ICC_HEADER = b"ICC_PROFILE\x00"
ICC_CHUNK = 65535 - 2 - len(ICC_HEADER) - 2  # bytes of profile per JPEG APP2 segment
HEADER_BYTES = 1 << 16  # where the size of every format read_header knows is found
QUALITY_OPTION = {".jpg": cv2.IMWRITE_JPEG_QUALITY, ".jpeg": cv2.IMWRITE_JPEG_QUALITY,
                  ".webp": cv2.IMWRITE_WEBP_QUALITY}  # fmt: skip


@dataclass
class ImageMetadata:
    """What a photo carries besides pixels (each None when absent)."""

    exif: bytes | None = None  # b"Exif\0\0" + the TIFF structure
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None


def is_image(path: str | os.PathLike) -> bool:
    """True when the file name has an image suffix (the contents are not looked at)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_metadata(path: str | os.PathLike) -> ImageMetadata:
    """The EXIF, ICC profile and DPI of an image file (without decoding its pixels)."""
    from PIL import Image  # scikit-image's dependency; only needed here

    try:
        with Image.open(path) as image:
            info = image.info
    except Exception:  # Pillow cannot read every format OpenCV reads: no metadata then
        return ImageMetadata()
    exif = info.get("exif")
    if exif and not exif.startswith(EXIF_HEADER):
        exif = EXIF_HEADER + exif
    dpi = info.get("dpi")
    return ImageMetadata(exif or None, info.get("icc_profile") or None,
                         tuple(float(d) for d in dpi) if dpi else None)  # fmt: skip


@dataclass
class ImageHeader:
    """What an image file's header says: enough to plan its memory before decoding it."""

    height: int
    width: int
    channels: int  # as decoded (OpenCV's IMREAD_UNCHANGED): 1, 3 or 4
    itemsize: int  # bytes per sample as decoded: 1 (8-bit) or 2 (16-bit)

    @property
    def nbytes(self) -> int:
        """The decoded array's size."""
        return self.height * self.width * self.channels * self.itemsize


def _png_header(head: bytes) -> ImageHeader | None:
    if not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    width, height, depth, kind = struct.unpack(">IIBB", head[16:26])
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(kind, 4)  # palettes: up to RGBA
    return ImageHeader(height, width, channels, 2 if depth == 16 else 1)


def _jpeg_header(head: bytes) -> ImageHeader | None:
    """The frame header (SOFn) of a JPEG, found by walking its segments."""
    at = 2
    while head.startswith(b"\xff\xd8") and at + 9 < len(head) and head[at] == 0xFF:
        marker, size = head[at + 1], struct.unpack(">H", head[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            depth, height, width, components = struct.unpack(">BHHB", head[at + 4 : at + 10])
            return ImageHeader(height, width, 1 if components == 1 else 3, 1 + (depth > 8))
        at += 2 + size
    return None


def _tiff_header(head: bytes) -> ImageHeader | None:
    """Width, height, depth and samples from the first IFD of a classic TIFF."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(head[:4])
    if order is None:
        return None
    at = struct.unpack(order + "I", head[4:8])[0]
    tags = {}
    for i in range(struct.unpack(order + "H", head[at : at + 2])[0]):
        tag, kind, count, value = struct.unpack(
            order + "HHI4s", head[at + 2 + 12 * i : at + 14 + 12 * i]
        )
        short = kind == 3
        if count * (2 if short else 4) > 4:  # the values lie elsewhere: the first one counts
            value = head[struct.unpack(order + "I", value)[0] :][:4]
        tags[tag] = struct.unpack(order + ("H" if short else "I"), value[: 2 if short else 4])[0]
    if 256 not in tags or 257 not in tags:
        return None
    samples = tags.get(277, 1)
    channels = 1 if samples == 1 else min(4, max(3, samples))
    return ImageHeader(tags[257], tags[256], channels, 2 if tags.get(258, 8) == 16 else 1)


def _webp_header(head: bytes) -> ImageHeader | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return ImageHeader(height & 0x3FFF, width & 0x3FFF, 3, 1)
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return ImageHeader((bits >> 14 & 0x3FFF) + 1, (bits & 0x3FFF) + 1, 4, 1)
    if kind == b"VP8X":
        width, height = (int.from_bytes(head[i : i + 3], "little") + 1 for i in (24, 27))
        return ImageHeader(height, width, 4, 1)
    return None


def _bmp_header(head: bytes) -> ImageHeader | None:
    if head[:2] != b"BM" or len(head) < 30:
        return None
    width, height, _, bits = struct.unpack("<iiHH", head[18:30])
    return ImageHeader(abs(height), abs(width), 4 if bits == 32 else 3, 1)


def read_header(path: str | os.PathLike) -> ImageHeader | None:
    """Size, channels and depth of a PNG, JPEG, TIFF, WebP or BMP file from its first bytes,
    without decoding it (None: another format, or a header these readers do not follow)."""
    try:
        with open(path, "rb") as file:
            head = file.read(HEADER_BYTES)
    except OSError:
        return None  # read_image says why
    for reader in (_png_header, _jpeg_header, _tiff_header, _webp_header, _bmp_header):
        with contextlib.suppress(struct.error):
            header = reader(head)
            if header is not None:
                return header
    return None


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _jpeg_with(data: bytes, meta: ImageMetadata) -> bytes:
    """A JPEG with ``meta`` added: density in its JFIF header, EXIF (APP1) and ICC (APP2)."""
    if data[2:4] != b"\xff\xe0" or data[6:11] != b"JFIF\x00":  # OpenCV always writes JFIF
        return data
    end = 4 + struct.unpack(">H", data[4:6])[0]  # end of the JFIF segment
    app0 = bytearray(data[4:end])
    if meta.dpi:
        app0[9:14] = struct.pack(">BHH", 1, *(min(65535, round(d)) for d in meta.dpi))
    extra = b""
    if meta.exif:
        extra += _segment(0xE1, meta.exif)
    if meta.icc:
        parts = [meta.icc[i : i + ICC_CHUNK] for i in range(0, len(meta.icc), ICC_CHUNK)]
        for n, part in enumerate(parts, 1):
            extra += _segment(0xE2, ICC_HEADER + bytes([n, len(parts)]) + part)
    return data[:4] + bytes(app0) + extra + data[end:]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_with(data: bytes, meta: ImageMetadata) -> bytes:
    """A PNG with ``meta`` added after its header chunk: iCCP, pHYs and eXIf."""
    end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4  # signature + IHDR
    extra = b""
    if meta.icc:
        extra += _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc))
    if meta.dpi:
        per_metre = (round(d / 0.0254) for d in meta.dpi)
        extra += _chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1))
    if meta.exif:
        extra += _chunk(b"eXIf", meta.exif[len(EXIF_HEADER) :])
    return data[:end] + extra + data[end:]


def read_image(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode copes with any file name
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    with _native_stderr() as said:  # libpng/libjpeg print their complaints to fd 2
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        detail = said[0].strip().splitlines()[-1:] if said else []
        reason = f" ({detail[0]})" if detail else ""
        raise InputError(f"cannot decode {path}: not an image, or a corrupt one{reason}")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: {image.dtype} images are not supported (8- or 16-bit only)")
    del data
    # In place: a large frame must not be held twice.
    if image.ndim == 3 and image.shape[2] == 3:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    elif image.ndim == 3 and image.shape[2] == 4:
        cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA, dst=image)
    return image


_CAPTURING = threading.Lock()  # file descriptor 2 is the process's: one capture at a time


@contextlib.contextmanager
def _native_stderr():
    """Capture what C libraries write to file descriptor 2 meanwhile (a list, filled after):
    their warnings are noise, and their errors belong in our one-line message.

    Only one thread redirects at a time: a thread that finds a capture running decodes without
    its own (its libraries' lines then land in that capture), so that no two threads ever save
    and restore the descriptor crosswise, which would leave stderr pointing at a deleted file.
    """
    said: list[str] = []
    if not _CAPTURING.acquire(blocking=False):
        yield said
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        _CAPTURING.release()
        yield said
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                said.append(capture.read().decode(errors="replace"))
    finally:
        _CAPTURING.release()


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    overwrite: bool = False,
    *,
    metadata: ImageMetadata | None = None,
    quality: int = 95,
    consume: bool = False,
) -> Path:
    """Write an RGB(A) or gray array; the format follows the file suffix.

    ``metadata`` (from ``read_metadata``) goes into JPEG and PNG files; ``quality`` (1–100) is
    the JPEG and WebP quality. ``consume=True``: the caller gives the array up, and it is
    turned into the encoder's BGR order in place (a large frame is not held twice).
    """
    if not 1 <= quality <= 100:
        raise InputError(f"image quality must be in 1–100, got {quality}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; refusing to overwrite it (use --overwrite)")
    if not is_image(path):
        raise InputError(
            f"{path}: unsupported image suffix (use one of {', '.join(IMAGE_SUFFIXES)})"
        )
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        in_place = consume and image.flags.c_contiguous and image.flags.writeable
        image = cv2.cvtColor(image, code, dst=image) if in_place else cv2.cvtColor(image, code)
    # Only the format's own option: OpenCV warns on stderr about any other one.
    option = QUALITY_OPTION.get(path.suffix.lower())
    ok, encoded = cv2.imencode(path.suffix, image, [] if option is None else [option, quality])
    if not ok:
        raise InputError(f"cannot encode a {image.dtype} {image.shape} image as {path.suffix}")
    data = encoded.tobytes()
    if metadata is not None and path.suffix.lower() in (".jpg", ".jpeg"):
        data = _jpeg_with(data, metadata)
    elif metadata is not None and path.suffix.lower() == ".png":
        data = _png_with(data, metadata)
    write_bytes_atomic(path, data)
    return path
