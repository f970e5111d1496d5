"""Tagging a corpus on a Ray cluster: one actor per worker slot holds a Scorer, the driver hands out the files.

`streamtag tag --ray [ADDRESS]` plans the jobs exactly as the local executor does (the same file list, output
names and resume rule: `streamtag.corpus`) and only swaps the executor, so a cluster run and a plain run write the
same files with the same scores.

Why this shape:

* **Actors, not tasks.** Loading a Scorer costs seconds (weights, graph export); an actor loads it once and tags
  file after file. On GPUs, several actors share each GPU (`num_gpus=1/k`, one CPU each), because one process
  decoding and resampling cannot keep a GPU busy; on CPUs there is one actor per `--threads` CPUs (1 by default:
  processes scale better than oneDNN threads over small batches).
* **Weights travel through the object store.** The driver reads the checkpoint once and `ray.put`s the arrays; no
  worker needs the registry cache, a `--weights` path or the internet, and an actor fetches them only when its node
  has no exported graph of them yet (each node exports into its own `$STREAMTAG_HOME`; atomic, so actors may race).
* **The driver schedules, file by file.** Each ready actor has at most `IN_FLIGHT` files queued, so a fast node
  takes more files and the queue empties evenly. A worker that dies (process killed, node lost, out of memory) has
  its in-flight files put back in the queue for any other actor, and a fresh actor takes its place; a file whose
  worker dies `MAX_ATTEMPTS` times fails alone (it is probably what kills the worker). A file that fails to decode
  fails alone, as in a local run.
* **`--output-dir` must be a path every worker can reach** (NFS, CephFS, a FUSE mount of object storage): workers
  write results there themselves, atomically (temp file + rename), so nothing travels back to the driver but a
  one-line outcome. The driver drops a marker file in it and every actor checks it sees the marker, so a directory
  that is not shared is one clear error instead of results scattered over the nodes' local disks. The inputs too
  must be reachable under the same path on every node; paths are made absolute on the driver.

Ray is an optional extra (`pip install 'streamtag[ray]'`) and imported only when `--ray` is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import threading
import time as clock
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from streamtag.errors import StreamtagError

INSTALL_HINT = "pip install 'streamtag[ray]'"
IN_FLIGHT = 2          # files queued per actor: the next file is already there when one finishes
MAX_ATTEMPTS = 3       # a file whose worker died this many times fails (it is likely the cause)
GPU_ACTORS = 16        # actors sharing one GPU at most (each decodes on its own CPU; docs/archives.md)
START_TIMEOUT = 600    # seconds to wait for a first worker (an autoscaler may be adding nodes) before giving up
LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|ray://\S+|[\w.\-\[\]:]+:\d+)$")


def import_ray() -> Any:
    """`ray`, or the one-line error naming the extra to install (exit 2)."""
    try:
        import ray
    except ImportError:
        raise StreamtagError(f"--ray needs ray; install it with: {INSTALL_HINT}", exit_code=2) from None
    return ray


def check_address(address: str) -> str:
    """`local`, `auto`, `HOST:PORT` or `ray://HOST:PORT`; anything else is most likely a file swallowed by --ray."""
    if address == LOCAL or _ADDRESS.match(address):
        return address
    raise StreamtagError(f"--ray {address!r} is not a Ray address (local, auto, HOST:PORT or ray://HOST:PORT); "
                         "put the files before --ray, or write --ray local", exit_code=2)


@dataclass(frozen=True)
class WorkerSpec:
    """How every actor builds its Scorer and what it reserves on the cluster."""

    model: str
    weights_sha256: str
    engine: str = "inference"
    device: str = "cpu"         # "cpu" or "gpu": decided by the driver from the cluster's resources
    threads: int | None = None  # CPU threads of the Scorer, and the CPUs a CPU actor reserves (None: 1)
    precision: str = "fp32"
    batch_size: int | str = "auto"
    gpu_share: float = 1.0      # the part of a GPU one actor reserves (several actors keep one GPU fed)

    def resources(self) -> dict[str, float]:
        """Ray resources of one actor: a share of a GPU and one CPU (its decoding), or `threads` CPUs."""
        if self.device == "gpu":
            return {"num_gpus": self.gpu_share, "num_cpus": 1}
        return {"num_gpus": 0, "num_cpus": self.threads or 1}


def plan_workers(resources: dict[str, float], device: str, threads: int | None,
                 workers: int | None) -> tuple[str, int, int, float]:
    """(device, threads per actor, actor count, GPU share per actor) for a cluster offering `resources`.

    `device` auto uses GPUs when the cluster has any. On GPUs, each GPU gets up to GPU_ACTORS actors (as many as
    the cluster has CPUs per GPU): a GPU scores a window in well under a millisecond at archive batch sizes, so one
    process decoding and resampling cannot keep it busy (docs/archives.md). On CPUs, one actor per `threads` CPUs.
    Without `workers`, the count is what the cluster offers now (at least 1; an autoscaling cluster grows to meet a
    larger --ray-workers).
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    threads = threads or 1
    if device == "gpu" or (device == "auto" and gpus > 0):
        if workers:  # as many actors per GPU as it takes to place `workers` on the GPUs there are
            per_gpu = max(1, min(GPU_ACTORS, -(-workers // gpus))) if gpus else 1
        else:
            per_gpu = max(1, min(GPU_ACTORS, cpus // gpus)) if gpus else 1
        return "gpu", threads, workers or max(gpus, 1) * per_gpu, 1 / per_gpu
    return "cpu", threads, workers or max(cpus // threads, 1), 0.0


def connect(address: str) -> Any:
    """Start a local Ray (`local`) or join the cluster at `address`; returns the `ray` module, initialised."""
    ray = import_ray()
    address = check_address(address)
    # A command-line tool does not report usage on its user's behalf; an explicit setting still wins.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address == LOCAL:
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise StreamtagError(f"--ray {address}: cannot connect ({str(e).splitlines()[0]}); start the cluster "
                             "(`ray start --head`) or check the address", exit_code=2) from None
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)  # ray.init replaces it; the caller's way of stopping stands
    return ray


# ---------------------------------------------------------------------------------------------- the worker
class TagWorker:
    """What runs inside each Ray actor: one Scorer, then `tag(job)` for file after file.

    A plain class (ray.remote wraps it in `_actor_class`), so this module imports without Ray. A problem building
    the Scorer or reaching the output directory is kept and reported by `ready()` rather than raised, so the driver
    can print it as one line instead of Ray's actor-creation traceback.
    """

    def __init__(self, spec: WorkerSpec, state: list, marker: str | None):
        import ray

        self.spec = spec
        self.node = socket.gethostname()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.scorer = None
        self.batch_size: int | None = None
        self.error: str | None = None
        try:
            if marker is not None and not os.path.exists(marker):
                raise StreamtagError(f"the output directory {os.path.dirname(marker)} is not visible on node "
                                     f"{self.node}; --output-dir must be a path every worker can reach "
                                     "(a shared disk)")
            from streamtag.engine import make_scorer

            self.scorer = make_scorer(spec.model, lambda: ray.get(state[0]), spec.weights_sha256, spec.device,
                                      spec.engine, spec.threads or 1, spec.precision)
        except StreamtagError as e:
            self.error = f"{e} (on node {self.node})"

    def ready(self) -> dict:
        """Who this actor is and whether its Scorer loaded (the driver sends files only to ready actors)."""
        return {"node": self.node, "node_id": self.node_id, "pid": os.getpid(), "error": self.error}

    def tag(self, job: Any) -> Any:
        """Tag one job and save its result; a failure of this file comes back as an Outcome, never an exception."""
        from streamtag.corpus import Outcome, tag_job
        from streamtag.tuning import resolve_batch_size

        try:
            if self.batch_size is None:  # `auto`: what was measured on this node's device, else its default
                self.batch_size = resolve_batch_size(self.spec.batch_size, self.scorer, job.options.sample_duration)
            return tag_job(job, self.scorer, self.batch_size)
        except StreamtagError as e:
            return Outcome(job, error=str(e) if job.input in str(e) else f"{job.input}: {e}")
        except Exception as e:  # noqa: BLE001 - one file's bug must not kill the actor and its queue
            return Outcome(job, error=f"{job.input}: tagging failed on node {self.node} ({type(e).__name__}: {e})")


def _actor_class(ray: Any) -> Any:
    # max_restarts=0: the driver replaces a dead actor itself, so it knows which files to hand out again.
    return ray.remote(max_restarts=0, max_task_retries=0)(TagWorker)


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class _Slot:
    """One actor as the driver sees it: its handle, whether it is ready, the files it holds."""

    actor: Any
    ready_ref: Any
    info: dict | None = None
    busy: int = 0


class RayExecutor:
    """Runs jobs on `workers` actors; `run(jobs)` yields one Outcome per job as results are saved.

    `say(text)` gets a line when the pool is complete, and one for each worker that died or could not start.
    `replacements` bounds how many dead actors are replaced (by default twice the pool), so a cluster that keeps
    losing workers ends the run with errors instead of looping.
    """

    def __init__(self, ray: Any, spec: WorkerSpec, state: dict, workers: int, output_dir: str | os.PathLike,
                 say: Callable[[str], None] | None = None, replacements: int | None = None):
        self.ray = ray
        self.spec = spec
        self.workers = workers
        self.output_dir = Path(output_dir).resolve()
        self.say = say or (lambda text: None)
        self.replacements_left = 2 * workers if replacements is None else replacements
        self.state_ref = ray.put(state)
        self.slots: list[_Slot] = []
        self.marker: Path | None = None
        self.deaths = 0  # workers that died during the run
        self._announced = False
        self._sent: dict[int, Any] = {}  # id(job) → the job as workers see it (absolute paths)
        self._queue: deque[tuple[Any, int]] = deque()  # (job, attempts used)
        self._inflight: dict[Any, tuple[_Slot, Any, int]] = {}  # call ref → (actor, job, attempts), in sent order
        self._starting: dict[Any, _Slot] = {}  # ready() ref → actor still starting

    # -- actors
    def _ready(self) -> list[_Slot]:
        return [s for s in self.slots if s.info is not None]

    def pids(self) -> list[int]:
        """Process ids of the ready actors (tests kill one to check that its files are redone elsewhere)."""
        return [s.info["pid"] for s in self._ready()]

    def _notify(self) -> None:
        ready = self._ready()
        if len(ready) == self.workers and not self._announced:
            self._announced = True
            nodes = len({s.info["node_id"] for s in ready})
            what = (f"{self.spec.gpu_share:g} GPU" if self.spec.device == "gpu"
                    else f"{self.spec.threads or 1} CPU thread{'s' if (self.spec.threads or 1) > 1 else ''}")
            self.say(f"Ray: {len(ready)} workers on {nodes} node{'s' if nodes > 1 else ''}, {what} each")

    def _drop(self, slot: _Slot) -> None:
        self.slots.remove(slot)
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor)

    # -- the run
    def run(self, jobs: Sequence[Any]) -> Iterator[Any]:
        """Tag `jobs` (corpus.Job) on the cluster; yield each one's Outcome (its `job` is the one passed in)."""
        ray = self.ray
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.marker = self.output_dir / f".streamtag-ray-{uuid.uuid4().hex}"
        self.marker.touch()
        # Workers run elsewhere, in another directory: every path they see is absolute.
        self._sent = {id(j): dataclasses.replace(j, input=os.path.abspath(j.input), output=os.path.abspath(j.output))
                      for j in jobs}
        self._queue = deque((j, 0) for j in jobs)
        try:
            self.workers = min(self.workers, max(len(jobs), 1))
            for _ in range(self.workers):
                self._start()
            remaining = len(jobs)
            waited_since = clock.monotonic()
            while remaining:
                self._dispatch()
                if not self._inflight and not self._starting:
                    raise StreamtagError("no Ray worker is left to tag the remaining files; check the cluster "
                                         "(`ray status`) and run the same command again to resume")
                done, _ = ray.wait(list(self._inflight) + list(self._starting), num_returns=1, timeout=10)
                if not done:
                    if not self._ready() and clock.monotonic() - waited_since > START_TIMEOUT:
                        raise StreamtagError(f"no Ray worker started in {START_TIMEOUT // 60} minutes: no node "
                                             f"offers {self.spec.resources()}; check `ray status`, or pass "
                                             "--device cpu / fewer --threads")
                    continue
                ref = done[0]
                if ref in self._starting:
                    self._started(self._starting.pop(ref))
                    continue
                waited_since = clock.monotonic()
                slot, job, attempt = self._inflight[ref]
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:  # the actor died (killed, node lost, out of memory)
                    for failed in self._died(slot, e):
                        remaining -= 1
                        yield failed
                    continue
                del self._inflight[ref]
                slot.busy -= 1
                outcome.job = job
                remaining -= 1
                yield outcome
        finally:
            for slot in list(self.slots):
                self._drop(slot)
            for _, job, _ in self._inflight.values():  # interrupted: no half-written temp file stays behind
                _remove_temp_files(self._sent[id(job)].output)
            with contextlib.suppress(OSError):
                self.marker.unlink()

    def _start(self) -> None:
        # The weights go as [ref]: a bare ref would be fetched at start, and a warm node never needs them.
        actor = _actor_class(self.ray).options(**self.spec.resources()).remote(
            self.spec, [self.state_ref], str(self.marker))
        slot = _Slot(actor, actor.ready.remote())
        self.slots.append(slot)
        self._starting[slot.ready_ref] = slot

    def _dispatch(self) -> None:
        """Fill every ready actor up to IN_FLIGHT files, in queue order."""
        for slot in self._ready():
            while self._queue and slot.busy < IN_FLIGHT:
                job, attempt = self._queue.popleft()
                self._inflight[slot.actor.tag.remote(self._sent[id(job)])] = (slot, job, attempt)
                slot.busy += 1

    def _started(self, slot: _Slot) -> None:
        try:
            info = self.ray.get(slot.ready_ref)
        except self.ray.exceptions.RayError as e:  # the actor process died while starting
            self._drop(slot)
            self._replace(f"a Ray worker died while starting ({_first_line(e)})")
            return
        if info["error"]:
            self._drop(slot)
            if not self._ready() and not self._starting:
                raise StreamtagError(info["error"])
            self.say(f"a Ray worker could not start: {info['error']}")
            return
        slot.info = info
        self._notify()

    def _died(self, slot: _Slot, error: BaseException) -> list[Any]:
        """`slot`'s actor is gone: its files go back to the front of the queue and a new actor is started.

        An actor tags its files in the order they were sent, so the oldest one was running when it died: that one
        counts an attempt, and fails once it has used MAX_ATTEMPTS; the ones waiting behind it go back as they were.
        Returns the Outcomes of the files that failed for good."""
        from streamtag.corpus import Outcome

        self.deaths += 1
        self._drop(slot)
        held = [(ref, job, attempt) for ref, (other, job, attempt) in self._inflight.items() if other is slot]
        failed, requeue = [], []
        for position, (ref, job, attempt) in enumerate(held):
            del self._inflight[ref]
            _remove_temp_files(self._sent[id(job)].output)
            attempt += position == 0
            if attempt >= MAX_ATTEMPTS:
                failed.append(Outcome(job, error=f"{job.input}: the Ray worker tagging it died {attempt} times "
                                                 f"({_first_line(error)}); the file may exhaust its memory"))
            else:
                requeue.append((job, attempt))
        self._queue.extendleft(reversed(requeue))
        self._replace(f"a Ray worker died ({_first_line(error)}); its files go to the others")
        return failed

    def _replace(self, why: str) -> None:
        self.say(why)
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._start()


def _remove_temp_files(output: str) -> None:
    """Temp files a killed worker left beside `output` (utils.atomic_path names them `.<name>.*.tmp*`)."""
    path = Path(output)
    for tmp in path.parent.glob(f".{path.name}.*.tmp*"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def run_on_ray(jobs: Sequence[Any], state: dict, spec: WorkerSpec, address: str, device: str,
               workers: int | None, output_dir: str | os.PathLike,
               say: Callable[[str], None] | None = None) -> Iterator[Any]:
    """Connect (or start a local Ray), size the pool, tag `jobs`, disconnect: one Outcome per job, as they finish.

    `spec.device` and `spec.threads` are settled here from the cluster's resources (`plan_workers`); `device` is
    what the user asked for (auto, cpu or gpu).
    """
    ray = connect(address)
    try:
        chosen, threads, count, share = plan_workers(ray.cluster_resources(), device, spec.threads, workers)
        spec = dataclasses.replace(spec, device=chosen, threads=threads, gpu_share=share or 1.0)
        executor = RayExecutor(ray, spec, state, count, output_dir, say=say)
        yield from executor.run(jobs)
    finally:
        ray.shutdown()
