"""Images and videos: decoding what a record references, and writing clips.

What it assumes:

- Images are anything Pillow opens; they come back as RGB (alpha is dropped, EXIF
  orientation is not applied, the first frame of an animation is used), as the
  UnifiedReward / LLaVA code does with ``Image.open(p).convert("RGB")``.
- Videos are either container files PyAV reads (``kind="video"``) or pre-extracted
  frames (``kind="frames"``: a folder of jpg/png/webp files in natural name order, or
  an explicit list of frame files in the given order), the way UnifiedReward stored
  its training videos.
- A video is sampled at fixed, uniformly spread frame indices (:func:`frame_indices`).
  Seeking decode maps an index to a timestamp through the stream's average frame rate,
  so it assumes constant frame rate; it checks every frame it lands on and falls back
  to decoding everything when the stream does not behave (unknown frame count, no pts,
  a gap, a failed seek), so both paths return the same frames.
- Nothing that cannot be decoded passes silently: every failure is a
  :class:`~ur.data.records.RecordError` naming the media's source field.
- Sizes are bounded before pixels are materialised: an image, and every video frame,
  over ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`) is refused, so a small file that
  decodes to gigabytes (a decompression bomb, a 6000 x 6000 MJPEG clip) is an error.
- The files of a frames folder stay inside it: a frame that is a symbolic link to a
  file elsewhere is refused, as the data set's paths themselves are
  (:func:`ur.io.safe_join`).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ur.data.records import Media, RecordError
from ur.io import UnsafePathError, safe_join

FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MAX_PIXELS = 4096 * 4096


# ---------------------------------------------------------------------------- images


@contextmanager
def _strict_pil() -> Iterator[None]:
    # Another library may have set LOAD_TRUNCATED_IMAGES, which makes PIL pad a
    # truncated JPEG with grey instead of failing; a reward model must not see that.
    # (A process-wide flag: restored afterwards, best effort under threads.)
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _existing_file(path: str, what: str, field: str | None) -> str:
    if not os.path.exists(path):
        raise RecordError(f"{what} file not found: {path}", field=field)
    if os.path.isdir(path):
        raise RecordError(f"{what} path is a folder, not a file: {path}", field=field)
    if os.path.getsize(path) == 0:
        raise RecordError(f"{what} file is empty (0 bytes): {path}", field=field)
    return path


def _refuse_over(width: int, height: int, max_pixels: int, what: str, where: str,
                 field: str | None) -> None:
    """Refuse a ``what`` (an image, a video frame) of more than ``max_pixels``."""
    if width * height > max_pixels:
        raise RecordError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f}M pixels, over the "
            f"{max_pixels / 1e6:.1f}M-pixel limit (a decompression bomb?): {where}",
            field=field)


def load_image(media: Media, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image reference (a path or inline bytes) fully into an RGB PIL image.

    The size from the header is checked against ``max_pixels`` before any pixel is
    decoded; the whole image is then loaded, so a truncated or corrupt file fails here
    rather than later inside a collate function.
    """
    if media.kind != "image" or media.frames is not None:
        raise RecordError(f"expected an image, got {media!r}", field=media.field)
    if media.data is not None:
        if len(media.data) == 0:
            raise RecordError("image bytes are empty (0 bytes)", field=media.field)
        source, where = io.BytesIO(media.data), f"<{len(media.data)} bytes>"
    else:
        source = where = _existing_file(media.path, "image", media.field)
    try:
        with _strict_pil(), Image.open(source) as im:
            _refuse_over(*im.size, max_pixels, "image", where, media.field)
            im.load()
            return im.convert("RGB")
    except (RecordError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RecordError(f"image refused as a decompression bomb: {where} ({e})",
                          field=media.field) from e
    except UnidentifiedImageError as e:
        raise RecordError(f"not a readable image (unknown format or corrupt): {where}",
                          field=media.field) from e
    except Exception as e:  # PIL's decoders raise OSError, SyntaxError, zlib.error, ...
        raise RecordError(f"image is truncated or corrupt: {where} ({e})",
                          field=media.field) from e


# ---------------------------------------------------------------------------- sampling


def frame_indices(n: int, num_frames: int) -> list[int]:
    """The ``num_frames`` frame indices sampled from a clip of ``n`` frames.

    ``i_k = floor(k * (n - 1) / (num_frames - 1) + 1/2)`` for ``k = 0 .. num_frames-1``,
    i.e. ``round(linspace(0, n - 1, num_frames))`` with halves rounded up, computed in
    integers. First and last frame are always included; a clip shorter than
    ``num_frames`` repeats frames, so the result always has ``num_frames`` entries.
    ``num_frames == 1`` takes the first frame.
    """
    if n < 1 or num_frames < 1:
        raise ValueError(f"need n >= 1 and num_frames >= 1, got n={n}, num_frames={num_frames}")
    if num_frames == 1:
        return [0]
    m = num_frames - 1
    return [(2 * k * (n - 1) + m) // (2 * m) for k in range(num_frames)]


# ---------------------------------------------------------------------------- videos


def load_video(media: Media, num_frames: int, *, seek: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``num_frames`` uniformly sampled frames: (num_frames, H, W, 3) uint8 RGB.

    Frame ``k`` of the result is frame ``frame_indices(n, num_frames)[k]`` of the clip,
    counting decoded frames in presentation order (``n`` = number of frames). With
    ``seek=True`` a container that knows its frame count is read by seeking to the
    keyframe before each sampled frame and decoding forward to it; otherwise (or if
    that fails) every frame is decoded and the sampled ones kept. Both give the same
    frames. For ``kind="frames"`` only the sampled frame files are read.

    A frame over ``max_pixels`` is refused, as an image is: by the size in the
    container's header before anything is decoded, and by each decoded frame's own
    size (a header can lie) before it is converted to RGB.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if media.kind == "frames" or media.frames is not None:
        return _load_frame_files(media, num_frames, max_pixels)
    if media.kind != "video":
        raise RecordError(f"expected a video, got {media.kind} media", field=media.field)
    path = _existing_file(media.path, "video", media.field)
    try:
        frames = _read_video(path, num_frames, seek, media.field, max_pixels)
    except (RecordError, MemoryError):
        raise
    except Exception as e:  # av.FFmpegError and friends
        raise RecordError(f"video cannot be decoded: {path} ({e})", field=media.field) from e
    return _stack(frames, path, media.field)


def _open(path: str, field: str | None):
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise RecordError(f"video cannot be opened (not a video, or corrupt): {path} ({e})",
                          field=field) from e
    if not container.streams.video:
        container.close()
        raise RecordError(f"file has no video stream: {path}", field=field)
    return container


def _read_video(path: str, num_frames: int, seek: bool, field: str | None,
                max_pixels: int) -> list[np.ndarray]:
    def rgb(frame) -> np.ndarray:
        _refuse_over(frame.width, frame.height, max_pixels, "video frame", path, field)
        return _rgb(frame)

    with _open(path, field) as container:
        stream = container.streams.video[0]
        _refuse_over(stream.codec_context.width, stream.codec_context.height, max_pixels,
                     "video frame", path, field)
        n = stream.frames  # from the header; 0 when the container does not say (mkv, webm)
        if n > 0:
            if seek and stream.average_rate and stream.time_base:
                frames = _decode_seeking(container, stream, n, num_frames, rgb)
            else:
                frames, n = _decode_all(container, stream, n, num_frames, rgb)
            if frames is not None:
                return frames
        else:  # count packets instead: demuxing reads the file but decodes nothing
            n = sum(1 for packet in container.demux(stream) if packet.size > 0)
    # Start again from the top: seeking missed, the header's count was wrong, or the
    # count came from the packets. A second pass knows the true count.
    for _ in range(2):
        with _open(path, field) as container:
            frames, n = _decode_all(container, container.streams.video[0], n, num_frames, rgb)
        if frames is not None:
            return frames
        if n == 0:
            raise RecordError(f"video has no decodable frames: {path}", field=field)
    raise RecordError(f"video decodes to a different number of frames each time: {path}",
                      field=field)


def _rgb(frame) -> np.ndarray:
    # PyAV >= 17 converts with a thread pool set up afresh for every frame, several
    # times slower than one thread on the small frames a judge samples.
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:  # PyAV < 17 has no threads argument
        return frame.to_ndarray(format="rgb24")


def _decode_all(container, stream, n: int, num_frames: int,
                rgb=_rgb) -> tuple[list | None, int]:
    """Decode every frame, converting to RGB (with ``rgb``) only those sampled from an
    ``n``-frame clip (memory stays bounded). Returns (frames, n), or (None, true count)
    if the clip did not have ``n`` frames."""
    keep = set(frame_indices(n, num_frames)) if n > 0 else set()
    picked: dict[int, np.ndarray] = {}
    count = 0
    for count, frame in enumerate(container.decode(stream), 1):
        if count - 1 in keep:
            picked[count - 1] = rgb(frame)
    if count != n or n == 0:
        return None, count
    return [picked[i] for i in frame_indices(n, num_frames)], n


class _SeekMiss(Exception):
    """Decoding did not land where the constant-frame-rate arithmetic said it would."""


def _decode_seeking(container, stream, n: int, num_frames: int,
                    rgb=_rgb) -> list[np.ndarray] | None:
    """Seek to the keyframe before each sampled frame and decode forward to it
    (converting it with ``rgb``); None when the stream does not behave as a
    constant-frame-rate stream of ``n`` frames.

    Seeking flushes the decoder, so it only pays when a keyframe lies between the last
    decoded frame and the target. The keyframe spacing is not known up front: it is
    learnt from seeks that landed behind the last decoded frame (``gop`` is a lower
    bound on it), after which nearer targets are reached by decoding forward.
    """
    import av

    start = stream.start_time or 0
    # frames per time_base tick as num/den, so pts <-> index stays in integers
    per_tick = Fraction(stream.average_rate) * Fraction(stream.time_base)
    num, den = per_tick.numerator, per_tick.denominator
    wanted = frame_indices(n, num_frames)
    picked: dict[int, np.ndarray] = {}
    decoded = container.decode(stream)
    pos, gop = -1, 1  # index of the last decoded frame; least keyframe spacing seen
    try:
        for target in sorted(set(wanted)):
            seeked = target - pos > gop
            if seeked:
                # Aim half a frame after the target's nominal pts, so the keyframe at or
                # before that is at or before the target, whatever the pts rounding.
                ts = start + (2 * target + 1) * den // (2 * num)
                container.seek(ts, stream=stream, backward=True, any_frame=False)
                decoded = container.decode(stream)
            for frame in decoded:
                if frame.pts is None:
                    raise _SeekMiss
                i = (2 * (frame.pts - start) * num + den) // (2 * den)  # nearest frame
                if seeked:  # the keyframe we landed on
                    if i > target:
                        raise _SeekMiss
                    if i <= pos:
                        gop = max(gop, target - i)
                    seeked = False
                elif i != pos + 1:  # a gap or a jump: not constant frame rate
                    raise _SeekMiss
                pos = i
                if i == target:
                    picked[i] = rgb(frame)
                    break
            else:
                raise _SeekMiss  # the stream ended before the target
    except (_SeekMiss, av.FFmpegError):
        return None
    return [picked[i] for i in wanted]


def _stack(frames: list[np.ndarray], where: str, field: str | None) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise RecordError(f"frames differ in size {sorted(shapes)}: {where}", field=field)
    return np.stack(frames)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(media: Media) -> list[str]:
    """The frame files of a ``kind="frames"`` reference, in playback order.

    The files of a folder must stay inside it: one that is a symbolic link to a file
    elsewhere is refused (the folder itself was checked against the data set's root
    when the reference was read; its files are only listed now).
    """
    if media.frames is not None:
        if not media.frames:
            raise RecordError("frame list is empty", field=media.field)
        return list(media.frames)
    folder = media.path
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "not found"
        raise RecordError(f"frames folder {what}: {folder}", field=media.field)
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(FRAME_SUFFIXES)),
                   key=_natural_key)
    if not names:
        raise RecordError(f"frames folder has no {'/'.join(s[1:] for s in FRAME_SUFFIXES)} "
                          f"files: {folder}", field=media.field)
    try:
        return [str(safe_join(folder, n)) for n in names]
    except UnsafePathError as e:
        raise RecordError(f"a frame file is a link to outside its frames folder ({e})",
                          field=media.field) from None


def _load_frame_files(media: Media, num_frames: int, max_pixels: int) -> np.ndarray:
    files = frame_files(media)
    wanted = frame_indices(len(files), num_frames)
    picked: dict[int, np.ndarray] = {}
    for i in sorted(set(wanted)):
        try:
            image = load_image(Media(kind="image", path=files[i], field=media.field),
                               max_pixels=max_pixels)
        except RecordError as e:
            raise RecordError(f"frame {i} of {len(files)} is unreadable: {e.message}",
                              field=media.field) from e
        picked[i] = np.asarray(image)
    return _stack([picked[i] for i in wanted], media.describe(), media.field)


def load_media(media: Media, num_frames: int, *, seek: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image | np.ndarray:
    """An image as an RGB PIL image; a video or frames as (num_frames, H, W, 3) uint8.
    An image or a frame over ``max_pixels`` is refused."""
    if media.kind == "image":
        return load_image(media, max_pixels=max_pixels)
    return load_video(media, num_frames, seek=seek, max_pixels=max_pixels)


def probe_video(media: Media) -> dict:
    """What a video's header says, without decoding pixels: frames, fps, width, height,
    duration_s (fps and duration_s are None for pre-extracted frames)."""
    if media.kind == "frames" or media.frames is not None:
        files = frame_files(media)
        first = load_image(Media(kind="image", path=files[0], field=media.field))
        return {"frames": len(files), "fps": None, "width": first.width,
                "height": first.height, "duration_s": None}
    if media.kind != "video":
        raise RecordError(f"expected a video, got {media.kind} media", field=media.field)
    path = _existing_file(media.path, "video", media.field)
    with _open(path, media.field) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size > 0)
        if frames == 0:
            raise RecordError(f"video has no frames: {path}", field=media.field)
        fps = float(stream.average_rate) if stream.average_rate else None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = frames / fps if fps else None
        return {"frames": frames, "fps": fps, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "duration_s": duration}


# ---------------------------------------------------------------------------- writing


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, *, codec: str = "libx264",
                crf: int = 18, gop: int | None = None) -> Path:
    """Write ``frames`` (T, H, W, 3 uint8; H and W even) as a video file with PyAV.

    ``gop`` sets the maximum keyframe interval (the encoder's default if None).
    """
    import av

    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: str | Path, frames: np.ndarray | Sequence[np.ndarray],
                 ext: str = "jpg") -> list[Path]:
    """Write frames (T, H, W, 3 uint8) as ``frame_0000.<ext>``, ``frame_0001.<ext>``, ...

    Each file is written under a temporary name and renamed, so a reader never sees a
    half-written frame.
    """
    ext = ext.lower().lstrip(".")
    if f".{ext}" not in FRAME_SUFFIXES:
        raise ValueError(f"frame format must be one of {FRAME_SUFFIXES}, got {ext!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    paths = []
    for i, frame in enumerate(frames):
        array = np.asarray(frame, dtype=np.uint8)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (H, W, 3), got {array.shape}")
        final = folder / f"frame_{i:04d}.{ext}"
        tmp = folder / f".{final.name}.tmp"
        Image.fromarray(array).save(tmp, format=fmt, **options)
        os.replace(tmp, final)
        paths.append(final)
    return paths
