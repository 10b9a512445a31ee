"""What a run wrote for TensorBoard (`<run dir>/tensorboard/`), read back with TensorBoard's own reader.

The tests check a run's metrics here rather than in W&B's offline files (a private protobuf log): these are
the files `make tensorboard` shows. Everything is kept (no reservoir sampling) and nothing is purged, so a
test sees exactly the events that were written, in the order they were written.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from deploy.run.logger import TENSORBOARD_DIR

KEEP_ALL = {ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0, ea.AUDIO: 0, ea.COMPRESSED_HISTOGRAMS: 0}


def event_files(run_dir: str | Path) -> list[Path]:
    """The run's event files, oldest first (one per driver: the first start, then each resume)."""
    return sorted((Path(run_dir) / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def read_events(run_dir: str | Path, file: int | None = None) -> ea.EventAccumulator:
    """Every event of the run (all its files, in order), or of its `file`-th event file (-1: the newest)."""
    files = event_files(run_dir)
    assert files, f"no TensorBoard event files in {Path(run_dir) / TENSORBOARD_DIR}"
    path = Path(run_dir) / TENSORBOARD_DIR if file is None else files[file]
    return ea.EventAccumulator(str(path), size_guidance=KEEP_ALL, purge_orphaned_data=False).Reload()


def scalars(events: ea.EventAccumulator, tag: str) -> list[ea.ScalarEvent]:
    """`tag`'s (wall_time, step, value) events in the order logged; [] when it was never logged."""
    return events.Scalars(tag) if tag in events.Tags()[ea.SCALARS] else []


def values(events: ea.EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in scalars(events, tag)]


def images(events: ea.EventAccumulator, tag: str) -> list[ea.ImageEvent]:
    """`tag`'s images (PNG figures, GIF videos) in the order logged; [] when it was never logged."""
    return events.Images(tag) if tag in events.Tags()[ea.IMAGES] else []


def tensorboard_runs(folder: str | Path) -> dict[str, str]:
    """The runs TensorBoard finds under `folder` (what `tensorboard --logdir folder` lists), name -> path."""
    multiplexer = EventMultiplexer(size_guidance=KEEP_ALL)
    multiplexer.AddRunsFromDirectory(str(folder))
    return multiplexer.RunPaths()
