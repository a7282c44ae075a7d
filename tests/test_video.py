import numpy as np
import pytest

from ditproof.errors import InvalidInputError
from ditproof.protocol.options import VideoEncoding
from ditproof.video import decode_video, encode_video, frames_to_uint8


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
