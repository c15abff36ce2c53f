"""Decoding images and videos from real files: content, sampling, and every refusal."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from ur.data import media as M
from ur.data.media import (
    frame_indices,
    load_image,
    load_media,
    load_video,
    probe_video,
    write_frames,
    write_video,
)
from ur.data.records import Media, RecordError

H, W = 48, 64
BITS = 6  # frame index coded in vertical stripes: enough for 64 frames


def grey_clip(n: int) -> np.ndarray:
    """Frame i is filled with grey level 10 * i."""
    return np.stack([np.full((H, W, 3), 10 * i, np.uint8) for i in range(n)])


def coded_clip(n: int) -> np.ndarray:
    """Frame i shows the bits of i as black/white stripes (robust to compression)."""
    frames = np.zeros((n, H, W, 3), np.uint8)
    for i in range(n):
        for b in range(BITS):
            if i >> b & 1:
                frames[i, :, b * 8:(b + 1) * 8] = 255
    return frames


def decode_index(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[:, b * 8:(b + 1) * 8].mean() > 128)


def video(path, frames, **kw) -> Media:
    return Media(kind="video", path=str(write_video(path, frames, **kw)), field="video")


def refused(media: Media, *match: str, call=None) -> RecordError:
    """The RecordError that loading ``media`` raises; it names the field and says ``match``."""
    with pytest.raises(RecordError) as info:
        if call is None:
            load_media(media, 4)
        else:
            call(media)
    err = info.value
    assert err.field == media.field
    for text in match:
        assert text in err.message, err.message
    return err


# ---------------------------------------------------------------------------- images


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed=0, size=(W, H), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), np.uint8), mode)


def test_image_from_path_and_from_bytes(tmp_path):
    image = noise_image(mode="RGBA")
    image.save(tmp_path / "a.png")
    from_path = load_image(Media(kind="image", path=str(tmp_path / "a.png"), field="jpg_0"))
    from_bytes = load_image(Media(kind="image", data=png_bytes(image), field="jpg_0"))
    want = np.asarray(image.convert("RGB"))
    for got in (from_path, from_bytes):
        assert got.mode == "RGB" and got.size == (W, H)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_image_refusals(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    refused(Media(kind="image", path=str(tmp_path / "nope.jpg"), field="jpg_0"), "not found")
    refused(Media(kind="image", path=str(tmp_path / "empty.jpg"), field="jpg_0"),
            "image file is empty (0 bytes)", str(tmp_path / "empty.jpg"))
    refused(Media(kind="image", data=b"", field="image"), "empty")
    refused(Media(kind="image", path=str(tmp_path / "junk.jpg"), field="jpg_1"),
            "not a readable image")
    refused(Media(kind="image", path=str(tmp_path), field="jpg_1"), "folder")


def test_truncated_jpeg_is_an_error_even_if_pil_is_told_to_pad(tmp_path, monkeypatch):
    buf = io.BytesIO()
    noise_image(size=(128, 128)).save(buf, format="JPEG", quality=90)
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    (tmp_path / "cut.jpg").write_bytes(cut)
    # Some library in the process may have switched on PIL's silent padding.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for m in (Media(kind="image", path=str(tmp_path / "cut.jpg"), field="jpg_0"),
              Media(kind="image", data=cut, field="jpg_0")):
        refused(m, "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (CRC fixed up)."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    small = png_bytes(Image.new("P", (8, 8)))
    # 25M pixels: over our 16.8M default, under PIL's own threshold.
    (tmp_path / "bomb.png").write_bytes(with_declared_size(small, 5000, 5000))
    err = refused(Media(kind="image", path=str(tmp_path / "bomb.png"), field="jpg_0"),
                  "5000x5000 = 25.0M pixels", "16.8M-pixel limit", "decompression bomb")
    assert str(tmp_path / "bomb.png") in err.message
    # 400M pixels: PIL itself refuses in Image.open; still a RecordError.
    refused(Media(kind="image", data=with_declared_size(small, 20000, 20000), field="jpg_0"),
            "decompression bomb")
    # An ordinary image over a caller's lower limit.
    ok = Media(kind="image", data=png_bytes(noise_image()), field="jpg_0")
    refused(ok, "over the", call=lambda m: load_image(m, max_pixels=1000))
    assert load_image(ok, max_pixels=W * H).size == (W, H)


# ---------------------------------------------------------------------------- sampling


def test_frame_indices():
    assert frame_indices(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert frame_indices(5, 3) == [0, 2, 4]
    assert frame_indices(4, 3) == [0, 2, 3]  # 1.5 rounds up
    assert frame_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]  # short clips repeat frames
    assert frame_indices(10, 1) == [0]
    assert frame_indices(1, 4) == [0, 0, 0, 0]
    for n in range(1, 40):
        for k in range(1, 12):
            got = frame_indices(n, k)
            want = np.floor(np.linspace(0, n - 1, k) + 0.5).astype(int).tolist()
            assert got == want
    with pytest.raises(ValueError):
        frame_indices(0, 4)


# ---------------------------------------------------------------------------- videos


@pytest.mark.parametrize("seek", [True, False])
def test_video_frames_are_sampled_uniformly(tmp_path, seek):
    m = video(tmp_path / "grey.mp4", grey_clip(20))
    got = load_video(m, 5, seek=seek)
    assert got.shape == (5, H, W, 3) and got.dtype == np.uint8
    levels = got.reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [10 * i for i in frame_indices(20, 5)], atol=3)


@pytest.mark.parametrize("seek", [True, False])
def test_short_clip_repeats_frames(tmp_path, seek):
    m = video(tmp_path / "short.mp4", grey_clip(3))
    got = load_video(m, 8, seek=seek)
    assert got.shape == (8, H, W, 3)
    np.testing.assert_allclose(got.reshape(8, -1).mean(axis=1),
                               [10 * i for i in frame_indices(3, 8)], atol=3)


@pytest.mark.parametrize(("n", "gop", "num_frames", "ext", "codec"), [
    (64, 8, 8, "mp4", "libx264"),    # every target in a new GOP: seek each time
    (64, 8, 32, "mp4", "libx264"),   # targets closer than the GOP: decode forward
    (50, None, 16, "mp4", "libx264"),  # one long GOP
    (37, 5, 37, "mov", "libx264"),   # every frame
    (40, 6, 9, "avi", "mpeg4"),
])
def test_seeking_returns_the_same_frames_as_decoding_everything(tmp_path, n, gop, num_frames,
                                                                ext, codec):
    m = video(tmp_path / f"coded.{ext}", coded_clip(n), gop=gop, codec=codec)
    with av.open(m.path) as container:
        stream = container.streams.video[0]
        keyframes = sum(p.is_keyframe for p in container.demux(stream))
        assert gop is None or keyframes >= n // gop  # several GOPs really were written
    with av.open(m.path) as container:  # the fast path itself must succeed, not fall back
        stream = container.streams.video[0]
        assert M._decode_seeking(container, stream, stream.frames, num_frames) is not None
    seeking, everything = load_video(m, num_frames), load_video(m, num_frames, seek=False)
    np.testing.assert_array_equal(seeking, everything)
    assert [decode_index(f) for f in seeking] == frame_indices(n, num_frames)


def test_container_without_a_frame_count_falls_back(tmp_path):
    m = video(tmp_path / "coded.mkv", coded_clip(30), gop=4)
    with av.open(m.path) as container:
        assert container.streams.video[0].frames == 0  # matroska does not say
    got = load_video(m, 7)
    np.testing.assert_array_equal(got, load_video(m, 7, seek=False))
    assert [decode_index(f) for f in got] == frame_indices(30, 7)


def test_variable_frame_rate_falls_back_to_decode_order(tmp_path):
    """A clip with a hole in its timestamps: seeking arithmetic would be off, so the
    result must still be the sampled frames in decode order."""
    path = tmp_path / "vfr.mp4"
    frames = coded_clip(24)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = 4
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i + 5 * (i >= 12)  # five frame slots missing after frame 11
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    m = Media(kind="video", path=str(path), field="video")
    got = load_video(m, 6)
    np.testing.assert_array_equal(got, load_video(m, 6, seek=False))
    assert [decode_index(f) for f in got] == frame_indices(24, 6)


def write_container(path, *, audio: bool):
    """A real container with no video frames: an audio-only mp4, or an AVI whose
    video stream was declared and never written to."""
    with av.open(str(path), mode="w") as container:
        if audio:
            stream = container.add_stream("aac", rate=16000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 16000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        else:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            container.start_encoding()


def test_video_refusals(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video " * 100)
    write_container(tmp_path / "audio.mp4", audio=True)
    write_container(tmp_path / "zero.avi", audio=False)
    with av.open(str(tmp_path / "zero.avi")) as container:
        assert len(container.streams.video) == 1  # a video stream, but nothing in it

    def vid(name):
        return Media(kind="video", path=str(tmp_path / name), field="video_0")

    for seek in (True, False):
        def call(m, seek=seek):
            return load_video(m, 4, seek=seek)

        refused(vid("missing.mp4"), "video file not found", call=call)
        refused(vid("empty.mp4"), "video file is empty (0 bytes)", call=call)
        refused(vid("junk.mp4"), "cannot be opened", call=call)
        refused(vid("audio.mp4"), "no video stream", call=call)
        refused(vid("zero.avi"), "no decodable frames", call=call)
    refused(vid("zero.avi"), "no frames", call=probe_video)
    refused(vid("audio.mp4"), "no video stream", call=probe_video)


def test_truncated_video_is_refused(tmp_path):
    path = tmp_path / "cut.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)  # index first, so it still opens
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in coded_clip(40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])  # cuts through a packet
    for seek in (True, False):
        refused(Media(kind="video", path=str(path), field="video"), "cannot be decoded",
                call=lambda m, seek=seek: load_video(m, 8, seek=seek))


def jpeg(side: int) -> bytes:
    """One ``side`` x ``side`` black frame as a JPEG, encoded by FFmpeg's MJPEG encoder: a
    few hundred KB, ``side * side * 3`` bytes once decoded to RGB."""
    context = av.CodecContext.create("mjpeg", "w")
    context.width = context.height = side
    context.pix_fmt, context.time_base, context.thread_count = "yuvj420p", Fraction(1, 1), 1
    frame = av.VideoFrame(side, side, "yuvj420p")
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    return b"".join(bytes(p) for p in [*context.encode(frame), *context.encode()])


def test_a_huge_mjpeg_clip_is_refused_before_it_becomes_rgb(tmp_path):
    huge = jpeg(6000)
    # An MJPEG clip (a raw MJPEG stream: JPEGs one after another) of one 6000 x 6000
    # frame is refused by its header; one whose first frame is small and whose second
    # is huge, by the decoded frame's size, before it becomes RGB.
    (tmp_path / "huge.mjpeg").write_bytes(huge)
    (tmp_path / "grows.mjpeg").write_bytes(jpeg(16) + huge)
    for name in ("huge.mjpeg", "grows.mjpeg"):
        for seek in (True, False):
            refused(Media(kind="video", path=str(tmp_path / name), field="video_0"),
                    "video frame is 6000x6000 = 36.0M pixels", "16.8M-pixel limit",
                    str(tmp_path / name), call=lambda m, seek=seek: load_video(m, 2, seek=seek))


def test_video_frames_have_the_image_pixel_limit(tmp_path):
    small = video(tmp_path / "grey.mp4", grey_clip(4))
    refused(small, "over the", call=lambda m: load_media(m, 4, max_pixels=W * H - 1))
    assert load_media(small, 4, max_pixels=W * H).shape == (4, H, W, 3)
    write_frames(tmp_path / "clip", grey_clip(4), ext="png")
    frames = Media(kind="frames", path=str(tmp_path / "clip"), field="frames")
    refused(frames, "over the", call=lambda m: load_video(m, 4, max_pixels=W * H - 1))
    # A frame file whose header claims 25M pixels is refused before it is decoded.
    (tmp_path / "clip" / "frame_0003.png").write_bytes(
        with_declared_size(png_bytes(Image.new("RGB", (8, 8))), 5000, 5000))
    refused(frames, "frame 3 of 4", "25.0M pixels")


# ---------------------------------------------------------------------------- frames


def test_frames_folder_in_natural_order(tmp_path):
    clip = grey_clip(12)
    for i, f in enumerate(clip):  # unpadded names: frame_10 must come after frame_2
        Image.fromarray(f).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    m = Media(kind="frames", path=str(tmp_path), field="video")
    got = load_video(m, 4)
    np.testing.assert_array_equal(got, clip[frame_indices(12, 4)])
    assert probe_video(m) == {"frames": 12, "fps": None, "width": W, "height": H,
                              "duration_s": None}


def test_write_frames_and_an_explicit_frame_list(tmp_path):
    clip = grey_clip(10)
    paths = write_frames(tmp_path / "clip", clip)
    assert [p.name for p in paths] == [f"frame_{i:04d}.jpg" for i in range(10)]
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [p.name for p in paths]
    m = Media(kind="frames", frames=tuple(str(p) for p in paths[::-1]), field="video")
    got = load_video(m, 3)  # a list is played in the order given
    np.testing.assert_allclose(got.reshape(3, -1).mean(axis=1), [90, 40, 0], atol=2)
    folder = load_video(Media(kind="frames", path=str(tmp_path / "clip")), 10)
    np.testing.assert_allclose(folder.reshape(10, -1).mean(axis=1), 10 * np.arange(10),
                               atol=2)


def test_frames_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(Media(kind="frames", path=str(tmp_path / "empty"), field="frames"),
            "no jpg/jpeg/png/webp files")
    refused(Media(kind="frames", path=str(tmp_path / "missing"), field="frames"),
            "frames folder not found")
    paths = write_frames(tmp_path / "clip", grey_clip(5), ext="png")
    paths[4].write_bytes(b"")  # the last frame is always sampled
    refused(Media(kind="frames", path=str(tmp_path / "clip"), field="frames"),
            "frame 4 of 5 is unreadable", "empty (0 bytes)")
    listed = (str(paths[0]), str(tmp_path / "clip" / "gone.png"))
    refused(Media(kind="frames", frames=listed, field="frames"), "frame 1 of 2", "not found")


def test_frame_files_linking_outside_their_folder_are_refused(tmp_path):
    outside = tmp_path / "secret.png"
    Image.fromarray(grey_clip(1)[0]).save(outside)
    clip = tmp_path / "clip"
    write_frames(clip, grey_clip(3), ext="png")
    frames = Media(kind="frames", path=str(clip), field="frames")
    (clip / "frame_0000.png").unlink()
    (clip / "frame_0000.png").symlink_to("frame_0002.png")  # a link inside the folder: fine
    assert load_video(frames, 3).shape == (3, H, W, 3)
    (clip / "frame_0001.png").unlink()
    (clip / "frame_0001.png").symlink_to(outside)
    for call in (lambda m: load_video(m, 3), probe_video):
        refused(frames, "link to outside its frames folder", "frame_0001.png", call=call)


# ---------------------------------------------------------------------------- the rest


def test_load_media_and_probe(tmp_path):
    image = Media(kind="image", data=png_bytes(noise_image()), field="image")
    assert isinstance(load_media(image, 8), Image.Image)
    m = video(tmp_path / "grey.mp4", grey_clip(16), fps=8)
    assert load_media(m, 8).shape == (8, H, W, 3)
    info = probe_video(m)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (16, 8.0, W, H)
    assert info["duration_s"] == pytest.approx(2.0)
    with pytest.raises(RecordError, match="expected a video"):
        load_video(image, 4)
