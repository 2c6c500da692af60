"""Batch deblurring on a Ray cluster: ``reblur-run INPUTS -o OUT --ray [ADDRESS]``.

The driver plans the jobs as a local run does (``runner.plan_jobs``: the same outputs, checks
and ``--skip-existing``), then Ray Data runs them: a dataset of jobs, longest first (frames ×
pixels), mapped by a pool of actors (``JobWorker``), each loading one ``Deblurrer`` once and
running whole jobs as ``reblur-run`` does (every output written atomically, beside the
inputs or into ``-o``, which every node must see: a shared file system). A video is one job,
so TTA's carried weights see its frames in order. The driver merges what the jobs return into
one summary and one ``--report``, with one progress bar over the items and frames.

Faults: an actor whose process dies (a killed worker, a lost node) is restarted by Ray Data
(its actors restart and retry their tasks by default) and its job run again; an output is
renamed into place only when complete, so a job that died before the rename left nothing under
the final name (its temporary file is named after the dead process, and removed when the job
runs again), and one that died after it is found complete and not written twice. A bad input
fails its own job with the usual one-line reason.

``deblur_dataset`` is the entry for programs that already hold a Ray Dataset of images.
Ray is an optional dependency (``pip install 'reblur-deploy[ray]'``), imported only here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DependencyError
from .runner import Job, RunOptions, Summary, _Runner, count_frames, write_report

RAY_HINT = "pip install 'reblur-deploy[ray]' (Ray Data)"


def import_ray():
    import os

    # Ray's core logs an error-level line at every actor pool (its constructor arguments live in
    # the object store; ray-project/ray#53727), alarming and not ours to act on; a user's own
    # setting wins. (Ray then says in one info line that the level was set.)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
        import ray.data
    except ImportError:
        raise DependencyError(f"--ray needs Ray Data: {RAY_HINT}") from None
    return ray


def _encode(job: Job) -> str:
    return json.dumps({"kind": job.kind, "sources": [str(p) for p in job.sources],
                       "target": str(job.target), "frames": job.frames})  # fmt: skip


def _decode(text: str) -> Job:
    data = json.loads(text)
    return Job(data["kind"], [Path(p) for p in data["sources"]], Path(data["target"]),
               data["frames"])  # fmt: skip


class JobWorker:
    """A Ray Data actor: one Deblurrer for its life, whole jobs one at a time. ``run_on_ray``
    subclasses it with ``settings`` (the Deblurrer's keywords, the RunOptions) as class data:
    constructor arguments would go through Ray's object store, where a restarted actor may no
    longer find them (Ray warns about that on every run)."""

    settings: tuple[dict[str, Any], RunOptions]

    def __init__(self):
        from .pipeline import Deblurrer

        deblurrer, self.options = self.settings
        self.deblurrer = Deblurrer(**deblurrer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {"job": [], "items": [], "frames": [], "failed": [], "report": [],
                                 "said": []}  # fmt: skip
        for text in batch["job"]:
            job = _decode(str(text))
            said: list[str] = []
            runner = _Runner(self.deblurrer, self.options, lambda n: None, said.append)
            if job.target.exists():  # written by an earlier try whose worker then died
                runner.summary.items, runner.summary.frames = 1, job.frames
            else:
                runner.run_one(job)
            summary = runner.summary
            rows["job"].append(str(text))
            rows["items"].append(summary.items)
            rows["frames"].append(summary.frames)
            rows["failed"].append(json.dumps(summary.failed))
            rows["report"].append(json.dumps(summary.report))
            rows["said"].append(json.dumps(said))  # its warnings and error line, for the driver
        return rows


def run_on_ray(
    jobs: list[Job],
    options: RunOptions,
    deblurrer: dict[str, Any],
    address: str | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = print,
) -> Summary:
    """Run ``jobs`` (from ``runner.plan_jobs``) on Ray: the cluster at ``address``, or a local
    one started for the run. ``deblurrer``: the ``Deblurrer`` keywords every worker builds its
    own from (weights as a path or bundled name). ``workers``: actors in the pool (default: one
    per CPU of the cluster). Returns the merged summary; ``options.report`` is written here."""
    import time

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")  # fmt: skip
    _quiet(ray)
    try:
        start = time.perf_counter()
        size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        counts = [count_frames(job, options) or 1 for job in jobs]
        order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i], counts[i]))
        items = [{"job": _encode(dataclasses.replace(jobs[i], frames=counts[i]))} for i in order]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        worker_options = dataclasses.replace(options, shard=(0, 1))
        worker = type("JobWorker", (JobWorker,), {"settings": (deblurrer, worker_options)})
        results = dataset.map_batches(
            worker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(size, len(items)))),
            num_cpus=1,
        )
        summary = Summary()
        for row in results.iter_rows():
            summary.items += row["items"]
            summary.frames += row["frames"]
            summary.failed += [tuple(failure) for failure in json.loads(row["failed"])]
            summary.report += json.loads(row["report"])
            for line in json.loads(row["said"]):
                log(line)
            progress(row["frames"])
        summary.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    if options.report:
        write_report(Path(options.report), summary)
    return summary


def _quiet(ray) -> None:
    """Ray Data's own progress bars and execution log: the run has its own progress line."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _cost(job: Job, frames: int) -> int:
    """A job's work, for the order: frames × pixels (videos by their first frame's size)."""
    from .runner import _frame_pixels

    return frames * (_frame_pixels(job) or 1)


class _ArrayWorker:
    """A Ray Data actor for ``deblur_dataset``: one Deblurrer, image columns in and out."""

    def __init__(self, deblurrer: dict[str, Any], column: str):
        from .pipeline import Deblurrer

        self.deblurrer, self.column = Deblurrer(**deblurrer), column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(batch[self.column])
        batch[self.column] = np.stack(self.deblurrer.run_arrays(images)) if images else []
        return batch


def deblur_dataset(dataset, column: str = "image", workers: int = 1, num_gpus: float = 0,
                   batch_size: int = 4, **deblurrer):  # fmt: skip
    """A Ray Dataset whose ``column`` of H×W×3 images (equal sizes within a batch) is deblurred
    by a pool of ``workers`` actors, each holding one ``Deblurrer(**deblurrer)`` (``num_gpus``
    per actor where the cluster has GPUs). Lazy, as every Ray Data transform."""
    ray = import_ray()
    return dataset.map_batches(
        _ArrayWorker,
        fn_constructor_kwargs={"deblurrer": deblurrer, "column": column},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=num_gpus,
    )
