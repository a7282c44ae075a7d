"""Deterministic mp4 encoding and decoding through PyAV's bundled FFmpeg and libx264.

Same frames + same :class:`VideoEncoding` + same PyAV build → the same bytes. What makes it so:
a pinned thread count (x264's output depends on it), preset, crf and pixel format; the
``bitexact`` flags, so no library version string or creation time enters the container; a
fixed time base of 1/fps and pts = frame index; and colour conversion done here in numpy.

Why the colour conversion is ours: letting PyAV convert rgb24 frames to yuv420p (swscale) gave a
different H.264 stream in about 1 encode out of 8 for the same frames (PyAV 18.1, measured
2026-11-26: 8 of 60 encodes), while feeding yuv420p planes converted here gave 60 of 60
identical. Decoding likewise reads the yuv420p planes and converts them here.

Colour: BT.601 limited range ("studio swing"), chroma subsampled by the mean of each 2×2 block
and upsampled by repetition, rounded half to even. ``VideoEncoding.yuv`` names how the encoder's
input is computed: ``bt601-integer`` (the default) in exact integer arithmetic, the same bytes on
every CPU; ``bt601-float64`` (records made before 2026-12) by a float64 matrix product, which
numpy hands to the BLAS library, whose kernel is chosen per CPU: on this project's machine
(2026-12-05) 20 random 832×480 frames converted to other bytes under OpenBLAS's Prescott and
Sandybridge kernels than under Haswell, SkylakeX and Zen (no FMA vs FMA: a last bit decides
values that lie on a rounding tie), so two hosts could encode the same frames differently.
"""

from __future__ import annotations

import io
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, sha256_bytes
from ditproof.protocol.options import VideoEncoding


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidInputError(
            f"frames: got dtype {frames.dtype} and shape {frames.shape}; allowed: uint8 of shape (F, H, W, 3)"
        )
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise InvalidInputError(f"frames: got {width}x{height}; allowed: even width and height")


_RGB_TO_YUV = (
    np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64)
    / 255.0
)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0])
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)


_YUV_SCALE = 255_000
_RGB_TO_YUV_INT = np.array(
    [[65_481, 128_553, 24_966], [-37_797, -74_203, 112_000], [112_000, -93_786, -18_214]], dtype=np.int32
)
""":data:`_RGB_TO_YUV` × 255,000: the same coefficients as integers (each has three decimals). In
int32: a pixel's sums stay below 2^26 in magnitude, a 2×2 block's with its offset below 2^29."""


def rgb_to_yuv420p(frame: np.ndarray, method: str = "bt601-integer") -> np.ndarray:
    """One RGB frame ``(H, W, 3)`` uint8 → yuv420p planes stacked as ``(H * 3 // 2, W)`` uint8.

    ``method``: ``bt601-integer`` (exact, the same on every machine) or ``bt601-float64`` (the
    conversion of records made before it; see the module docstring).
    """
    if method == "bt601-float64":
        return _rgb_to_yuv420p_float64(frame)
    height, width, _ = frame.shape
    # Y·255000 − 16·255000 exactly, channel by channel (elementwise integer products: no BLAS);
    # U and V are linear, so they are computed once per 2×2 block from the block's channel sums.
    r, g, b = (frame[..., c].astype(np.int32) for c in range(3))
    (yr, yg, yb), (ur, ug, ub), (vr, vg, vb) = _RGB_TO_YUV_INT.tolist()
    luma = _round_half_even(yr * r + yg * g + yb * b + 16 * _YUV_SCALE, _YUV_SCALE)
    r4, g4, b4 = (c.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3)) for c in (r, g, b))
    u = _round_half_even(ur * r4 + ug * g4 + ub * b4 + 4 * 128 * _YUV_SCALE, 4 * _YUV_SCALE)
    v = _round_half_even(vr * r4 + vg * g4 + vb * b4 + 4 * 128 * _YUV_SCALE, 4 * _YUV_SCALE)
    planes = [luma.reshape(-1), u.reshape(-1), v.reshape(-1)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def _round_half_even(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """``numerator / denominator`` (``denominator`` even and positive) rounded to the nearest
    integer, ties to even, exactly."""
    shifted = numerator + denominator // 2
    quotient = shifted // denominator  # round half up
    tie = (shifted - quotient * denominator == 0) & (quotient % 2 == 1)
    return quotient - tie


def _rgb_to_yuv420p_float64(frame: np.ndarray) -> np.ndarray:
    height, width, _ = frame.shape
    yuv = frame.astype(np.float64) @ _RGB_TO_YUV.T + _YUV_OFFSET
    luma = np.rint(yuv[..., 0])
    chroma = yuv[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    chroma = np.rint(chroma)
    planes = [luma.reshape(-1), chroma[..., 0].reshape(-1), chroma[..., 1].reshape(-1)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def yuv420p_to_rgb(planes: np.ndarray) -> np.ndarray:
    """yuv420p planes ``(H * 3 // 2, W)`` uint8 → RGB ``(H, W, 3)`` uint8 (inverse of the above)."""
    rows, width = planes.shape
    height = rows * 2 // 3
    flat = planes.reshape(-1).astype(np.float64)
    luma = flat[: height * width].reshape(height, width)
    quarter = (height // 2) * (width // 2)
    u = flat[height * width : height * width + quarter].reshape(height // 2, width // 2)
    v = flat[height * width + quarter :].reshape(height // 2, width // 2)
    u = u.repeat(2, axis=0).repeat(2, axis=1)
    v = v.repeat(2, axis=0).repeat(2, axis=1)
    yuv = np.stack([luma, u, v], axis=-1) - _YUV_OFFSET
    return np.clip(np.rint(yuv @ _YUV_TO_RGB.T), 0, 255).astype(np.uint8)


def encode_video(frames: np.ndarray, fps: int, encoding: VideoEncoding) -> bytes:
    """Encodes RGB frames ``(F, H, W, 3)`` uint8 into mp4 bytes with pinned settings."""
    _check_frames(frames)
    writer = Mp4Writer(frames.shape[2], frames.shape[1], fps, encoding)
    try:
        writer.add(frames)
        return writer.finish()
    finally:
        writer.close()


class Mp4Writer:
    """An mp4 encode that takes its frames a few at a time (pinned settings, as :func:`encode_video`).

    The bytes depend only on the frames, their order and the settings, not on how they were split
    into :meth:`add` calls or when each call came (x264 is deterministic for a pinned thread count).
    """

    def __init__(self, width: int, height: int, fps: int, encoding: VideoEncoding):
        self.width, self.height, self.fps, self.encoding = width, height, fps, encoding
        self.frames = 0
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, mode="w", format="mp4", options={"fflags": "+bitexact"})
        self._lossless = encoding.codec == "h264-lossless"
        if self._lossless:
            stream = self._container.add_stream("libx264rgb", rate=fps)
            stream.pix_fmt = "rgb24"
            codec_options = {"qp": "0", "preset": encoding.preset, "x264-params": f"mbtree={int(encoding.mbtree)}"}
        else:
            stream = self._container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv420p"
            codec_options = {
                "crf": str(encoding.crf),
                "preset": encoding.preset,
                "x264-params": f"mbtree={int(encoding.mbtree)}",
            }
        stream.width = width
        stream.height = height
        stream.time_base = Fraction(1, fps)
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = encoding.threads
        stream.codec_context.thread_type = "FRAME" if encoding.threads > 1 else "SLICE"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.codec_context.options = codec_options
        self._stream = stream

    def add(self, frames: np.ndarray) -> None:
        """Encodes the next RGB frames ``(F, H, W, 3)`` uint8 of this writer's size."""
        _check_frames(frames)
        if frames.shape[1:3] != (self.height, self.width):
            raise InvalidInputError(
                f"frames: got {frames.shape[2]}x{frames.shape[1]}; allowed: {self.width}x{self.height} "
                "(the size of the frames before them)"
            )
        for array in frames:
            frame = _input_frame(array, self._lossless, self.encoding.yuv)
            frame.pts = self.frames
            frame.time_base = Fraction(1, self.fps)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def finish(self) -> bytes:
        """Flushes the encoder and returns the mp4's bytes."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self.close()
        return self._buffer.getvalue()

    def close(self) -> None:
        """Closes the container (idempotent); after :meth:`finish` the bytes stay readable."""
        if self._container is not None:
            self._container.close()
            self._container = None  # type: ignore[assignment]


class BackgroundEncode:
    """:class:`Mp4Writer` on its own thread, fed as the frames are decoded: the GPU decodes the next
    frames while the CPU encodes the last ones (the same bytes as :func:`encode_video`).

    Call it with each chunk of frames in order, then :meth:`finish`; use it as a context manager so
    that an error on the way stops the thread. An error of the encode (bad frames) is raised by
    :meth:`finish`.
    """

    _END = None

    def __init__(self, fps: int, encoding: VideoEncoding):
        self.fps, self.encoding = fps, encoding
        self.frames = 0
        self._queue: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._data: bytes | None = None

    def __call__(self, frames: np.ndarray) -> None:
        _check_frames(frames)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, args=(frames.shape[2], frames.shape[1]), daemon=True)
            self._thread.start()
        self.frames += frames.shape[0]
        self._queue.put(frames)

    def _work(self, width: int, height: int) -> None:
        ended = False
        writer: Mp4Writer | None = None
        try:
            writer = Mp4Writer(width, height, self.fps, self.encoding)
            while (frames := self._queue.get()) is not self._END:
                writer.add(frames)
            ended = True
            self._data = writer.finish()
        except BaseException as exc:  # not swallowed: finish() raises it in the caller's thread
            self._error = exc
            while not ended and self._queue.get() is not self._END:  # the rest is dropped
                pass
        finally:
            if writer is not None:
                writer.close()

    def finish(self) -> bytes:
        """Waits for the encode of every frame handed over and returns the mp4's bytes.

        Raises:
            InvalidInputError: no frames were handed over, or the frames were not encodable.
        """
        if self._thread is None:
            raise InvalidInputError("frames: got none; allowed: at least one frame to encode")
        self._stop()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()

    def __enter__(self) -> BackgroundEncode:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()


def _input_frame(array: np.ndarray, lossless: bool, yuv: str) -> av.VideoFrame:
    """An encoder input frame in FFmpeg's own aligned buffers, every byte written by us.

    ``VideoFrame.from_ndarray`` may hand the encoder numpy's memory, whose alignment changes
    from one allocation to the next; with it, the same frames gave other H.264 bytes in about
    1 of 3 encodes (measured 2026-11-26, PyAV 18.1, 64×48 frames). Copying into a frame that
    FFmpeg allocated (aligned) and filling its row padding too made them agree.
    """
    height, width, _ = array.shape
    if lossless:
        frame = av.VideoFrame(width, height, "rgb24")
        planes = [np.ascontiguousarray(array).reshape(height, width * 3)]
    else:
        frame = av.VideoFrame(width, height, "yuv420p")
        packed = rgb_to_yuv420p(array, yuv).reshape(-1)
        luma, quarter = height * width, (height // 2) * (width // 2)
        planes = [
            packed[:luma].reshape(height, width),
            packed[luma : luma + quarter].reshape(height // 2, width // 2),
            packed[luma + quarter :].reshape(height // 2, width // 2),
        ]
    for plane, data in zip(frame.planes, planes, strict=True):
        rows = np.zeros((plane.buffer_size // plane.line_size, plane.line_size), dtype=np.uint8)
        rows[: data.shape[0], : data.shape[1]] = data
        plane.update(rows.tobytes())
    return frame


def decode_video(data: bytes | str | Path) -> np.ndarray:
    """Decodes an mp4 (bytes or path) into RGB frames ``(F, H, W, 3)`` uint8."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        with av.open(source, mode="r") as container:
            frames = [_frame_to_rgb(frame) for frame in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as exc:
        raise InvalidInputError(f"video: cannot be decoded as mp4 ({exc})") from None
    if not frames:
        raise InvalidInputError("video: the file holds no video frames")
    return np.stack(frames)


def _frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    if frame.format.name == "rgb24":
        return frame.to_ndarray()
    if frame.format.name == "gbrp":  # libx264rgb decodes to planar G, B, R
        g, b, r = (_plane(frame, i) for i in range(3))
        return np.stack([r, g, b], axis=-1)
    if frame.format.name != "yuv420p":
        raise InvalidInputError(f"video: pixel format {frame.format.name}; allowed: yuv420p or rgb24 (ditproof's)")
    return yuv420p_to_rgb(frame.to_ndarray())


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    rows = np.frombuffer(bytes(plane), dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[: frame.height, : frame.width]


def write_video(path: str | Path, frames: np.ndarray, fps: int, encoding: VideoEncoding) -> tuple[str, int]:
    """Encodes and writes the video atomically; returns (sha256, size in bytes)."""
    data = encode_video(frames, fps, encoding)
    atomic_write_bytes(path, data)
    return sha256_bytes(data), len(data)


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] → uint8 by round-half-to-even of ×255 after clipping."""
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
