"""Run a predictor over an image, a folder, a video file or a camera and write what the user asked for.

Shared by ``tools/infer.py`` (dygraph :class:`~fcos.inference.detector.Detector` or an export) and
``tools/deploy_infer.py`` (:class:`~fcos.deploy.predictor.DeployPredictor`). Outputs:

- annotated images under ``save_dir`` (a folder keeps its sub-folder layout), annotated videos as
  ``save_dir/<name>.mp4`` with the input's frame count, size and FPS;
- ``--save-txt``: ``save_dir/labels/<name>.txt`` per image or frame (``label score x1 y1 x2 y2 name``);
- ``--save-json``: COCO result records (``file_name``, ``category_id``, ``bbox`` [x, y, w, h], ``score``).

Videos stream frame by frame (memory stays flat); outputs are finalized even when the input ends
early, the user presses ESC or Ctrl-C, or a frame fails.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from fcos.inference.display import Display
from fcos.inference.results import Results
from fcos.inference.sources import Source, iter_images
from fcos.inference.timing import StageTimer
from fcos.inference.video import VideoReader, VideoWriter

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the runner needs: ``Detector`` and ``DeployPredictor`` both fit."""

    timer: StageTimer

    def predict(
        self, images: Sequence[np.ndarray], paths: Optional[Sequence[str]] = None, keep_images: bool = True
    ) -> list[Results]: ...


@dataclass
class RunOptions:
    """What to write and show. ``json_threshold`` filters --save-json records (default: everything
    the model returned); ``draw_threshold`` filters drawing and --save-txt."""

    save_dir: str = "output/infer"
    draw_threshold: float = 0.3
    save_images: bool = True
    save_json: Optional[str] = None
    json_threshold: float = 0.0
    save_txt: bool = False
    show: bool = False
    batch_size: int = 1
    max_frames: int = 0  # videos and cameras: stop after this many frames (0: all)
    progress: bool = True


@dataclass
class RunSummary:
    """What happened: images/frames processed, files written, problems (``failed``: (path, reason))."""

    processed: int = 0
    detections: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    json_path: Optional[str] = None
    json_records: int = 0
    video_frames_expected: int = 0
    ended_early: bool = False
    stopped_by_user: bool = False
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0  # the whole run: reading, inference, drawing, writing

    @property
    def exit_code(self) -> int:
        """0: all fine; 1: some inputs failed or a video ended early (partial output was finalized)."""
        return 1 if (self.failed or self.ended_early) else 0


def _progress(total: Optional[int], desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="img" if desc == "images" else "frame", disable=not enabled, dynamic_ncols=True
    )


def _rel_name(path: str, root: Optional[str]) -> str:
    """Output name of an input image: path relative to the folder source (POSIX separators), else the basename."""
    if root:
        rel = os.path.relpath(path, root)
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return os.path.basename(path)


def _write_image(path: str, image: np.ndarray) -> None:
    import cv2

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ext = os.path.splitext(path)[1] or ".jpg"
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise OSError(f"{path}: cannot encode image as {ext}")
    with open(path, "wb") as f:  # through Python, so non-ASCII paths work on every OS
        f.write(buf.tobytes())


class _Outputs:
    """The per-result side effects: drawing, saving, txt, JSON records, display."""

    def __init__(self, opts: RunOptions, summary: RunSummary) -> None:
        self.opts = opts
        self.summary = summary
        self.records: list[dict[str, Any]] = []
        self.display: Optional[Display] = None
        if opts.show:
            try:
                self.display = Display()
            except RuntimeError as e:
                msg = f"{e}; continuing without a window" + (
                    f", results are saved to {opts.save_dir}" if opts.save_images else ""
                )
                logger.warning(msg)
                summary.notes.append(msg)

    def handle(self, res: Results, name: str, wait_ms: int) -> tuple[Optional[np.ndarray], bool]:
        """Record ``res`` (named ``name`` in outputs); returns (annotated image or None, keep going)."""
        opts = self.opts
        self.summary.processed += 1
        self.summary.detections += int((res.scores >= opts.draw_threshold).sum())
        self.records.extend(res.to_coco(threshold=opts.json_threshold, file_name=name))
        if opts.save_txt:
            stem = os.path.splitext(name)[0].replace("#", "_")
            res.save_txt(os.path.join(opts.save_dir, "labels", stem + ".txt"), threshold=opts.draw_threshold)
        annotated = None
        if opts.save_images or self.display is not None:
            annotated = res.plot(opts.draw_threshold)
        keep_going = True
        if self.display is not None and annotated is not None:
            keep_going = self.display.show(annotated, wait_ms)
            if not keep_going:
                self.summary.stopped_by_user = True
        return annotated, keep_going

    def finish(self) -> None:
        if self.display is not None:
            self.display.close()
        if self.opts.save_json:
            path = self.opts.save_json
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.records, f)
            self.summary.json_path = path
            self.summary.json_records = len(self.records)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stream(predictor: Predictor, jobs: Iterator[tuple[list, list, Any]]) -> Iterator[tuple[Any, list[Results]]]:
    """``(tag, results)`` per ``(images, paths, tag)`` job in order: the predictor's ``predict_stream``
    when it has one (an OpenVINO export with ``streams`` > 1 keeps several images in flight), else
    ``predict`` job by job."""
    stream = getattr(predictor, "predict_stream", None)
    if stream is not None:
        yield from stream(jobs, keep_images=True)
        return
    for images, paths, tag in jobs:
        yield tag, predictor.predict(images, paths=paths, keep_images=True) if images else []


def _run_images(predictor: Predictor, source: Source, opts: RunOptions, out: _Outputs) -> None:
    root = source.target if source.kind == "folder" else None
    summary = out.summary

    def jobs() -> Iterator[tuple[list, list, Any]]:
        for chunk in _batches(iter_images(source.images), max(1, opts.batch_size)):
            for item in chunk:
                if item.image is None:
                    summary.failed.append((item.path, item.error or "unreadable"))
                    logger.warning("skipped %s", item.error)
            good = [item for item in chunk if item.image is not None]
            yield [item.image for item in good], [item.path for item in good], (len(chunk), good)

    with _progress(len(source.images), "images", opts.progress) as bar:
        for (size, good), results in _stream(predictor, jobs()):
            for item, res in zip(good, results):
                name = _rel_name(item.path, root)
                annotated, keep_going = out.handle(res, name, wait_ms=0)
                if opts.save_images and annotated is not None:
                    target = os.path.join(opts.save_dir, name)
                    _write_image(target, annotated)
                    summary.outputs.append(target)
                if not keep_going:
                    return
            bar.update(size)


def _video_output_path(source: Source, save_dir: str) -> str:
    if source.kind == "camera":
        return os.path.join(save_dir, f"camera{source.target}.mp4")
    stem, ext = os.path.splitext(os.path.basename(str(source.target)))
    return os.path.join(save_dir, stem + (ext if ext.lower() in (".mp4", ".avi") else ".mp4"))


def _run_stream(predictor: Predictor, source: Source, opts: RunOptions, out: _Outputs) -> None:
    summary = out.summary
    reader = VideoReader(source.target)  # raises VideoError quickly for missing/empty/damaged/absent
    base = reader.name if reader.is_camera else os.path.basename(str(source.target))
    summary.video_frames_expected = reader.frame_count
    writer = VideoWriter(_video_output_path(source, opts.save_dir), reader.fps) if opts.save_images else None
    total = reader.frame_count or None
    if opts.max_frames and total:
        total = min(total, opts.max_frames)
    bar = _progress(total, "frames", opts.progress)
    index = 0

    def frames() -> Iterator[tuple[list, list, Any]]:
        it, i, end = iter(reader), 0, object()
        while not (opts.max_frames and i >= opts.max_frames):  # never reads a frame past --max-frames
            frame = next(it, end)
            if frame is end:
                return
            yield [frame], [f"{base}#frame{i}"], i
            i += 1

    try:
        for i, (res,) in _stream(predictor, frames()):
            annotated, keep_going = out.handle(res, f"{base}#frame{i}", wait_ms=1)
            if writer is not None and annotated is not None:
                writer.write(annotated)
            index += 1
            bar.update(1)
            if not keep_going:
                break
    except KeyboardInterrupt:
        summary.stopped_by_user = True
        summary.notes.append(f"interrupted by the user after {index} frames")
    finally:
        bar.close()
        reader.release()
        if writer is not None:
            writer.close()
            if writer.frames_written:
                summary.outputs.append(writer.path)
                if writer.path != writer.requested_path:
                    summary.notes.append(
                        f"codec for {writer.requested_path} unavailable: wrote MJPG to {writer.path} instead"
                    )
    stopped = summary.stopped_by_user or (opts.max_frames and index >= opts.max_frames)
    if reader.ended_early and not stopped:
        summary.ended_early = True
        summary.notes.append(
            f"{reader.name}: stopped after {reader.frames_read} of the {reader.frame_count} frames the file reports "
            "(damaged or truncated video); the partial output was finalized"
        )


def run_source(predictor: Predictor, source: Source, opts: RunOptions) -> RunSummary:
    """Run ``predictor`` over ``source`` (see module docstring); returns a :class:`RunSummary`.

    Raises :class:`fcos.inference.video.VideoError` when a video or camera cannot be opened at all.
    """
    summary = RunSummary()
    out = _Outputs(opts, summary)
    start = time.perf_counter()
    try:
        if source.kind in ("image", "folder"):
            _run_images(predictor, source, opts, out)
        elif source.kind in ("video", "camera"):
            _run_stream(predictor, source, opts, out)
        else:
            raise ValueError(f"unknown source kind {source.kind!r}")
    finally:
        out.finish()
        summary.wall_seconds = time.perf_counter() - start
    return summary


def format_summary(summary: RunSummary, timer: Optional[StageTimer] = None) -> str:
    """Human-readable report of a run (and the stage timings when ``timer`` has timed calls)."""
    lines = [f"processed {summary.processed} image(s)/frame(s), {summary.detections} detections drawn"]
    if summary.video_frames_expected:
        lines[0] += f" (the video reports {summary.video_frames_expected} frames)"
    for path in summary.outputs[:5]:
        lines.append(f"  wrote {path}")
    if len(summary.outputs) > 5:
        lines.append(f"  ... and {len(summary.outputs) - 5} more under the save directory")
    if summary.json_path:
        lines.append(f"  wrote {summary.json_records} COCO result records to {summary.json_path}")
    for path, reason in summary.failed:
        lines.append(f"  FAILED {path}: {reason}")
    lines.extend(f"  note: {n}" for n in summary.notes)
    if timer is not None and timer.timed_calls:
        lines.append("  speed: " + timer.summary())
    if summary.processed >= 2 and summary.wall_seconds > 0:
        lines.append("  " + throughput_line(summary))
    return "\n".join(lines)


def throughput_line(summary: RunSummary) -> str:
    """Images per second of the whole run by the wall clock: what a folder or video really took, with
    several images in flight (``runtime.streams``) included, unlike the per-call medians."""
    return (
        f"throughput: {summary.processed / summary.wall_seconds:.2f} images/s by the wall clock ({summary.processed} "
        f"in {summary.wall_seconds:.1f} s; reading, first-call warm-up, drawing and writing included)"
    )
