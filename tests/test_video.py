import numpy as np
import pytest

from ditproof.errors import InvalidInputError
from ditproof.protocol.options import VideoEncoding
from ditproof.video import BackgroundEncode, Mp4Writer, decode_video, encode_video, frames_to_uint8


@pytest.fixture()
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.random((9, 48, 64, 3)), axis=2)
    return frames_to_uint8(smooth / smooth.max())


def test_same_frames_same_settings_same_bytes(frames):
    encoding = VideoEncoding()
    first = encode_video(frames, 16, encoding)
    assert first == encode_video(frames, 16, encoding)
    # Nothing version- or time-dependent in the container.
    assert b"Lavf" not in first and b"creation_time" not in first


def test_encoding_is_stable_over_many_runs(frames):
    """PyAV's own rgb24→yuv420p conversion changed the stream in ~1 of 8 encodes; ours must not."""
    for encoding in (VideoEncoding(), VideoEncoding(codec="h264-lossless")):
        assert len({encode_video(frames, 16, encoding) for _ in range(40)}) == 1


def test_video_length_frames_repeat_exactly_without_x264s_macroblock_tree():
    """81 frames of 416x240: with mbtree on, 8 encodes in one process gave 6 different streams
    (2026-11-27); ditproof's pinned encoding turns it off, for one and for eight threads."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, size=(81, 30, 52, 3), dtype=np.uint8)
    long_frames = np.ascontiguousarray(blocks.repeat(8, axis=1).repeat(8, axis=2))
    for encoding in (VideoEncoding(), VideoEncoding(threads=8)):
        assert not encoding.mbtree
        assert len({encode_video(long_frames, 16, encoding) for _ in range(4)}) == 1


def test_encoding_is_stable_across_processes(tmp_path, tiny_model):
    """Handing PyAV numpy memory (alignment varying per allocation) changed the bytes of these
    frames in ~1 of 4 encodes across fresh processes (12 of 50 before the fix); the encoder's
    input now lives in FFmpeg's own aligned frames."""
    import subprocess
    import sys

    from ditproof.generation.generate import generate
    from ditproof.protocol.options import RuntimeOptions
    from ditproof.protocol.request import GenerationRequest

    request = GenerationRequest(
        prompt="a red circle moves left", width=64, height=48, num_frames=5, num_inference_steps=6
    )
    frames = generate(request, 1, tiny_model, RuntimeOptions()).frames
    np.save(tmp_path / "frames.npy", frames)
    code = (
        "import sys, hashlib, numpy as np\n"
        "from ditproof.video import encode_video\n"
        "from ditproof.protocol.options import VideoEncoding\n"
        "f = np.load(sys.argv[1])\n"
        "print(' '.join(hashlib.sha256(encode_video(f, 16, VideoEncoding())).hexdigest() for _ in range(5)))\n"
    )
    hashes = set()
    for _ in range(8):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "frames.npy")], capture_output=True, text=True, check=True
        )
        hashes.update(out.stdout.split())
    assert len(hashes) == 1


def test_thread_count_is_part_of_the_output(frames):
    one = encode_video(frames, 16, VideoEncoding(threads=1))
    two = encode_video(frames, 16, VideoEncoding(threads=2))
    assert one != two


def test_lossless_round_trip_is_exact_and_lossy_is_close(frames):
    lossless = decode_video(encode_video(frames, 16, VideoEncoding(codec="h264-lossless")))
    assert np.array_equal(lossless, frames)
    lossy = decode_video(encode_video(frames, 16, VideoEncoding()))
    assert lossy.shape == frames.shape
    assert np.abs(lossy.astype(int) - frames.astype(int)).mean() < 6


def test_bad_frames_and_bad_files_are_refused(frames):
    with pytest.raises(InvalidInputError, match="uint8 of shape"):
        encode_video(frames.astype(np.float32), 16, VideoEncoding())
    with pytest.raises(InvalidInputError, match="even width and height"):
        encode_video(frames[:, :47], 16, VideoEncoding())
    with pytest.raises(InvalidInputError, match="cannot be decoded"):
        decode_video(b"not a video")


def test_encoding_settings_are_checked():
    with pytest.raises(ValueError, match="allowed: ultrafast"):
        VideoEncoding(preset="warp")
    with pytest.raises(ValueError):
        VideoEncoding(crf=60)


def test_frames_to_uint8_clips_and_rounds():
    out = frames_to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0]))
    assert out.tolist() == [0, 0, 128, 255, 255]


def _exact_yuv420p(frame: np.ndarray) -> np.ndarray:
    """BT.601 limited range by exact rational arithmetic (Python's round: half to even)."""
    from fractions import Fraction

    coefficients = [(65481, 128553, 24966, 16), (-37797, -74203, 112000, 128), (112000, -93786, -18214, 128)]
    height, width, _ = frame.shape
    pixels = frame.astype(int).tolist()

    def value(row: int, col: int, k: int) -> Fraction:
        a, b, c, offset = coefficients[k]
        r, g, bl = pixels[row][col]
        return Fraction(a * r + b * g + c * bl, 255000) + offset

    luma = [round(value(i, j, 0)) for i in range(height) for j in range(width)]
    chroma = [
        [
            round(sum(value(2 * i + di, 2 * j + dj, k) for di in (0, 1) for dj in (0, 1)) / 4)
            for i in range(height // 2)
            for j in range(width // 2)
        ]
        for k in (1, 2)
    ]
    planes = np.clip(np.array(luma + chroma[0] + chroma[1]), 0, 255).astype(np.uint8)
    return planes.reshape(height * 3 // 2, width)


def test_integer_colour_conversion_is_exact_on_rounding_ties():
    from ditproof.video import rgb_to_yuv420p

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    # Pixels whose exact luma lies on a .5 tie (65481 R + 128553 G + 24966 B ≡ 127500 mod 255000).
    frame[0, :5] = [[0, 204, 68], [1, 173, 225], [2, 44, 141], [4, 194, 109], [5, 65, 25]]
    assert np.array_equal(rgb_to_yuv420p(frame), _exact_yuv420p(frame))
    # The float64 conversion of older records agrees away from ties.
    assert rgb_to_yuv420p(frame[4:], "bt601-float64").shape == rgb_to_yuv420p(frame[4:]).shape


def test_colour_conversion_does_not_depend_on_the_cpus_blas_kernel():
    # numpy hands a float64 matrix product to OpenBLAS, which picks its kernel per CPU; forcing two
    # kernels (no FMA, FMA) in two processes shows the float64 conversion depends on it (measured
    # on 20 random 832x480 frames) and the integer one does not.
    import subprocess
    import sys

    script = (
        "import hashlib, numpy as np\n"
        "from ditproof.video import rgb_to_yuv420p\n"
        "frames = np.random.default_rng(0).integers(0, 256, size=(20, 480, 832, 3), dtype=np.uint8)\n"
        "for method in ('bt601-integer', 'bt601-float64'):\n"
        "    h = hashlib.sha256()\n"
        "    for f in frames: h.update(rgb_to_yuv420p(f, method).tobytes())\n"
        "    print(h.hexdigest())\n"
    )
    outputs = []
    for kernel in ("Prescott", "Haswell"):
        env = {**__import__("os").environ, "OPENBLAS_CORETYPE": kernel}
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout.split())
    assert outputs[0][0] == outputs[1][0]
    if outputs[0][1] == outputs[1][1]:
        pytest.skip("this numpy's BLAS ignores OPENBLAS_CORETYPE: the float64 dependence cannot be shown here")


def test_records_made_before_the_integer_conversion_keep_theirs(tmp_path, tiny_model, small_request, cpu_options):
    import json

    from ditproof.generation.execute import execute
    from ditproof.protocol.record import InferenceRecord

    record = execute(small_request, tiny_model, cpu_options, tmp_path, request_id="yuv-1", entropy="ab" * 32)
    assert record.video.encoding.yuv == "bt601-integer"
    data = json.loads(record.canonical())
    for part in ("options", "runtime", "video"):
        del data[part]["encoding"]["yuv"]
    old = InferenceRecord.model_validate_json(json.dumps(data))
    assert old.video.encoding.yuv == old.options.encoding.yuv == old.runtime.encoding.yuv == "bt601-float64"


def test_frames_given_a_few_at_a_time_encode_to_the_same_bytes(frames):
    """Mp4Writer and BackgroundEncode (the encode beside the VAE decode) give encode_video's bytes
    however the frames are split, for one and for several x264 threads."""
    for encoding in (VideoEncoding(), VideoEncoding(threads=4), VideoEncoding(codec="h264-lossless")):
        whole = encode_video(frames, 16, encoding)
        writer = Mp4Writer(64, 48, 16, encoding)
        for start, stop in ((0, 1), (1, 5), (5, 9)):  # as the Wan VAE hands them over: 1, then 4 each
            writer.add(frames[start:stop])
        assert writer.finish() == whole and writer.frames == 9
        with BackgroundEncode(16, encoding) as encoder:
            for index in range(9):
                encoder(frames[index : index + 1])
            assert encoder.finish() == whole and encoder.frames == 9


def test_the_background_encode_refuses_bad_frames_without_hanging(frames):
    encoder = BackgroundEncode(16, VideoEncoding())
    with pytest.raises(InvalidInputError, match="got none"):
        encoder.finish()
    with pytest.raises(InvalidInputError, match="uint8"):
        encoder(frames.astype(np.float32))  # refused where it is handed over
    encoder(frames[:2])
    encoder(frames[:2, :32])  # another size: refused by the encode, raised by finish
    encoder(frames[2:4])  # handed over after the error: dropped, and nothing blocks
    with pytest.raises(InvalidInputError, match="allowed: 64x48"):
        encoder.finish()
    # An error of the producer (the decode) stops the thread on the way out.
    with pytest.raises(RuntimeError, match="decode failed"), BackgroundEncode(16, VideoEncoding()) as encoder:
        encoder(frames[:1])
        raise RuntimeError("decode failed")
    assert encoder._thread is not None and not encoder._thread.is_alive()
