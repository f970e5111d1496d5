"""The Scorer: float32 waveforms [B, N] at 32 kHz in, [B, 527] AudioSet scores out, on one of two engines.

* ``inference`` (default): the model, log-mel front end included, is exported once to a static graph with
  ``paddle.jit.save`` and run by a Paddle Inference predictor: oneDNN on the CPU, the CUDA predictor (TensorRT and
  fp16 when available) on a GPU. One predictor call scores a whole batch. The predictor runs oneDNN kernels with
  conv+relu fused and no per-op Python dispatch: on a 2-core Xeon, CNN14 48 ms per 2 s window against eager's 103.
* ``eager``: the plain ``paddle.nn.Layer`` under ``paddle.no_grad()``: the reference the predictor is tested against,
  and a fallback that needs no export.

Exported graphs are cached in ``streamtag_home()/exported/<arch>-<weights>-paddle<ver>-m<models.py>/``. An entry is
built in a temp directory beside its final place and renamed into it (a rename is atomic, so two processes starting
at once never see half an entry; the loser of the race uses the winner's), and a manifest of file sha256s is checked
at every load, so a truncated or garbled entry is rebuilt without the user doing anything.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np

from streamtag import paddlecore
from streamtag.errors import StreamtagError
from streamtag.utils import file_sha256, streamtag_home


# A state dict (Paddle names), or a function reading it: a warm start whose export is cached never calls it.
State = Union[dict, Callable[[], dict]]
ENGINES = ("inference", "eager")
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "bf16")
NUM_CLASSES = 527
MANIFEST = "manifest.json"
EXPORT_FORMAT = 3  # bump when the export recipe changes, so old cache entries are not reused
GPU_MEMORY_POOL_MB = 512
TRT_MAX_BATCH = 16  # TensorRT engines are built for batches up to this; bigger batches are scored in chunks
TRT_MAX_SECONDS = 10  # and windows up to this long (the optimisation profile's max shape)
ONEDNN_SHAPE_CACHE = 16  # oneDNN primitives kept per input shape; shapes vary with batch size and window length


def notice(message: str) -> None:
    """One line on stderr for things the user asked for that we adapted (fp16 on a CPU, TensorRT missing...)."""
    print(f"streamtag: {message}", file=sys.stderr, flush=True)


def default_threads() -> int:
    """The CPU cores this process may run on (affinity-aware), the default for --threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_available() -> bool:
    """True when this Paddle build has CUDA and a GPU is visible."""
    core = paddlecore.core()
    return bool(core.is_compiled_with_cuda()) and core.get_cuda_device_count() > 0


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AMX or AVX512-BF16), where --precision bf16 pays off."""
    return bool(paddlecore.core().supports_bfloat16_fast_performance())


def resolve_device(device: str) -> str:
    """'auto' → 'gpu' when one is usable, else 'cpu'; 'gpu' without CUDA is a user error."""
    if device not in DEVICES:
        raise StreamtagError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        raise StreamtagError("--device gpu: this Paddle has no CUDA or no GPU is visible; use --device cpu, or "
                             "install paddlepaddle-gpu (`make install DEVICE=gpu`)")
    return "cpu"


# ---------------------------------------------------------------------------------------------- scorers
class Scorer:
    """Scores batches of waveforms. Subclasses implement `_run`; this class checks the input and holds the identity.

    Not thread-safe by nature (a predictor owns its buffers), so calls are serialised with a lock.
    """

    engine = ""
    max_batch: int | None = None  # a backend that cannot take any batch size scores in chunks of this many
    max_samples: int | None = None  # and the longest window it takes

    def __init__(self, arch: str, device: str, threads: int, precision: str):
        self.arch = arch
        self.device = device
        self.threads = threads
        self.precision = precision
        self._lock = threading.Lock()
        from streamtag.archs import min_samples

        self._min_samples = min_samples(arch)

    def score(self, waveforms: np.ndarray) -> np.ndarray:
        """[B, N] float32 waveforms at 32 kHz → [B, 527] float32 clip-level scores (sigmoid)."""
        return self.embed(waveforms)[0]

    def embed(self, waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, N] waveforms → (scores [B, 527], embeddings [B, D]) float32."""
        batch = np.ascontiguousarray(waveforms, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[0] == 0:
            raise ValueError(f"waveforms must be [batch, samples] with batch >= 1, got shape {batch.shape}")
        minimum = self._min_samples
        if batch.shape[1] < minimum:
            raise StreamtagError(f"a window of {batch.shape[1]} samples is too short for {self.arch}: it needs at "
                                 f"least {minimum} ({minimum / 32000:.2f} s); raise --sample-duration")
        if self.max_samples and batch.shape[1] > self.max_samples:
            raise StreamtagError(f"windows of {batch.shape[1] / 32000:g} s are longer than the {self.describe()} "
                                 f"engine was built for ({self.max_samples / 32000:g} s); use a shorter "
                                 "--sample-duration or --engine eager")
        step = self.max_batch or len(batch)
        with self._lock:
            parts = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
        scores = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        embeddings = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return scores.astype(np.float32, copy=False), embeddings.astype(np.float32, copy=False)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs and the dashboard, e.g. 'cnn14 · paddle-inference oneDNN · cpu ×2'."""
        raise NotImplementedError


class EagerScorer(Scorer):
    """Plain Paddle: the model layer called under no_grad."""

    engine = "eager"

    def __init__(self, arch: str, state: dict[str, np.ndarray], device: str, threads: int, precision: str):
        super().__init__(arch, device, threads, precision)
        import paddle
        from paddle.base import core

        from streamtag.models import build_model, load_weights

        # Eager Paddle's CPU kernels otherwise use one thread; --threads applies to both engines (process-wide).
        core.set_num_threads(threads)
        self._paddle = paddle
        self._place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
        model = build_model(arch)
        load_weights(model, state)
        model.to(device="gpu:0" if device == "gpu" else "cpu")
        model.eval()
        self.model = model

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        paddle = self._paddle
        with paddle.no_grad():
            scores, embeddings = self.model(paddle.to_tensor(batch, place=self._place))
        return scores.numpy(), embeddings.numpy()

    def describe(self) -> str:
        return f"{self.arch} · eager paddle · {self.device}"


def _base_config(prefix: Path) -> Any:
    """A predictor config for the exported graph `prefix`.json/.pdiparams: PIR, new executor, passes, quiet."""
    config = paddlecore.core().AnalysisConfig(str(prefix) + ".json", str(prefix) + ".pdiparams")  # = inference.Config
    config.enable_new_ir(True)
    config.enable_new_executor(True)
    config.switch_ir_optim(True)
    config.enable_memory_optim()
    config.disable_glog_info()
    return config


def cpu_config(prefix: Path, threads: int, precision: str = "fp32") -> tuple[Any, str]:
    """The CPU predictor config every CPU Scorer runs (and scripts/profile_graph.py profiles), with its backend's
    name: oneDNN with `threads` threads, bf16 kernels when asked (make_scorer checks the CPU has them)."""
    config = _base_config(prefix)
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_mkldnn_cache_capacity(ONEDNN_SHAPE_CACHE)
    # This pass folds BatchNorm into conv weights at every predictor creation (3-4 s for CNN14 on two cores); the
    # export has folded them once already (graph.fold_batch_norms).
    config.delete_pass("conv2d_bn_onednn_fuse_pass")
    config.set_cpu_math_library_num_threads(threads)
    if precision != "bf16":
        return config, "oneDNN"
    sys.stderr.flush()
    with open(os.devnull, "wb") as devnull, _fd_redirected(2, devnull.fileno()):
        config.enable_mkldnn_bfloat16()  # logs an INFO line past disable_glog_info()
    return config, "oneDNN bf16"


class PredictorScorer(Scorer):
    """A Paddle Inference predictor over an exported graph; inputs and outputs go through zero-copy handles."""

    engine = "inference"

    def __init__(self, arch: str, model_dir: Path, device: str, threads: int, precision: str):
        super().__init__(arch, device, threads, precision)
        self.model_dir = model_dir
        self.backend = ""
        self._first_run = True
        # Every call runs on this one thread, whoever calls: oneDNN keeps its primitives and reordered weights per
        # thread (~320 MB for CNN14), so a warm-up in the main thread and hops in the pipeline thread would hold
        # two copies.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="streamtag-predictor")
        self.predictor = self._thread.submit(self._create).result()
        self._input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self._outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]

    def _config(self, tensorrt: bool) -> Any:
        core = paddlecore.core()

        # Paddle 3's graphs are PIR (.json): TensorRT comes from converting the graph once (PIR-TRT), not from
        # Config.enable_tensorrt_engine, which only applies to old .pdmodel graphs.
        prefix = self._tensorrt_graph() if tensorrt else self.model_dir / "model"
        if self.device == "cpu":
            config, self.backend = cpu_config(prefix, self.threads, self.precision)
            return config
        config = _base_config(prefix)
        kinds = core.AnalysisConfig.Precision  # = paddle.inference.PrecisionType
        precision = {"fp32": kinds.Float32, "fp16": kinds.Half, "bf16": kinds.Bfloat16}[self.precision]
        config.enable_use_gpu(GPU_MEMORY_POOL_MB, 0, precision)
        suffix = "" if self.precision == "fp32" else f" {self.precision}"
        self.backend = ("TensorRT" if tensorrt else "CUDA") + suffix
        if tensorrt:
            self.max_batch, self.max_samples = TRT_MAX_BATCH, TRT_MAX_SECONDS * 32000
        return config

    def _tensorrt_graph(self) -> Path:
        """The export converted by PIR-TRT for this precision, built once beside it (temp names, then renamed).

        One profile covers every window the Scorer accepts (its minimum up to TRT_MAX_SECONDS) and batches up to
        TRT_MAX_BATCH; embed() scores bigger batches in chunks.
        """
        prefix = self.model_dir / f"tensorrt-{self.precision}"
        if Path(str(prefix) + ".json").exists() and Path(str(prefix) + ".pdiparams").exists():
            return prefix
        import paddle.tensorrt
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig

        shapes = Input(min_input_shape=(1, self._min_samples), optim_input_shape=(8, 64000),
                       max_input_shape=(TRT_MAX_BATCH, TRT_MAX_SECONDS * 32000), input_data_type="float32")
        config = TensorRTConfig(inputs=[shapes])
        config.precision_mode = {"fp32": PrecisionMode.FP32, "fp16": PrecisionMode.FP16,
                                 "bf16": PrecisionMode.BF16}[self.precision]
        building = self.model_dir / f".{prefix.name}-{uuid.uuid4().hex}"
        config.save_model_dir = str(building)
        notice(f"building a TensorRT engine for {self.arch} ({self.precision}; once per model and precision)...")
        try:
            paddle.tensorrt.convert(str(self.model_dir / "model"), config)
            for ext in (".pdiparams", ".json"):  # the .json last: its presence marks a complete conversion
                os.replace(str(building) + ext, str(prefix) + ext)
        finally:
            for ext in (".pdiparams", ".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(building) + ext)
        return prefix

    def _create(self) -> Any:
        create = paddlecore.core().create_predictor

        tensorrt = self.device == "gpu" and tensorrt_available()
        if self.device == "gpu" and not tensorrt:
            notice("TensorRT is not available to this Paddle; using the plain CUDA predictor")
        try:
            predictor = create(self._config(tensorrt))
        except Exception as e:  # noqa: BLE001 - TensorRT setups fail in many ways; the CUDA predictor still works
            if not tensorrt:
                raise
            notice(f"TensorRT predictor failed ({e.__class__.__name__}); using the plain CUDA predictor")
            self.max_batch = self.max_samples = None
            predictor = create(self._config(False))
        return predictor

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._thread.submit(self._run_here, batch).result()

    def _run_here(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._input.reshape(list(batch.shape))
        self._input._copy_from_cpu_bind(batch)  # what paddle.inference's copy_from_cpu calls after its type check
        if self._first_run:
            # The first run selects kernels, and a oneDNN pass prints a stray diagnostic on the C++ stdout there
            # ("ReduceMeanCheckIfOneDNNSupport"): stdout points at /dev/null meanwhile, so `--json` lines stay
            # clean. Done on the caller's first real batch, not on a warm-up batch of another shape: each input
            # shape costs oneDNN its own copy of the reordered weights (~320 MB for CNN14).
            sys.stdout.flush()
            with open(os.devnull, "wb") as devnull, _fd_redirected(1, devnull.fileno()):
                self.predictor.run()
            self._first_run = False
            if self.device == "cpu":
                paddlecore.release_cold_library_pages()
        else:
            self.predictor.run()
        outputs = [h.copy_to_cpu() for h in self._outputs]
        # The graph's fetch names are generated; the scores are the output with 527 columns.
        scores = next(o for o in outputs if o.shape[-1] == NUM_CLASSES)
        embeddings = next((o for o in outputs if o is not scores), scores)
        return scores, embeddings

    def describe(self) -> str:
        where = f"cpu ×{self.threads}" if self.device == "cpu" else "gpu:0"
        return f"{self.arch} · paddle-inference {self.backend} · {where}"


def tensorrt_available() -> bool:
    """True when Paddle was built with TensorRT and its runtime library loads."""
    core = paddlecore.core()
    try:
        return (tuple(core.get_trt_compile_version()) > (0, 0, 0)
                and tuple(core.get_trt_runtime_version()) > (0, 0, 0))
    except Exception:  # noqa: BLE001 - older builds lack the query or fail to dlopen libnvinfer
        return False


# ---------------------------------------------------------------------------------------------- export cache
def _models_digest() -> str:
    """The model code is part of the export key: a change to models.py or graph.py must not reuse an old graph."""
    here = Path(__file__).parent  # read, not imported: importing models.py imports Paddle
    sources = ("archs.py", "models.py", "graph.py")
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in sources)).hexdigest()


def export_key(arch: str, weights_sha256: str) -> str:
    """The cache entry name: one per (arch, weights, Paddle version, model code, export recipe)."""
    return (f"{arch}-{weights_sha256[:16]}-paddle{paddlecore.version()}-m{_models_digest()[:12]}"
            f"-v{EXPORT_FORMAT}")


def verify_export(entry: Path) -> bool:
    """True when `entry` holds a complete export whose files match its manifest's sha256s."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if set(files) != {"model.json", "model.pdiparams"}:
            return False
        return all(file_sha256(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@contextlib.contextmanager
def _fd_redirected(fd: int, target: int) -> Iterator[None]:
    """Point OS-level file descriptor `fd` at `target` for a while: Paddle's C++ side prints past sys.stdout."""
    saved = os.dup(fd)
    try:
        os.dup2(target, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _export(arch: str, state: State, weights_sha256: str, dest: Path) -> None:
    """Trace build_model(arch) with `state` to a static graph in `dest` (model.json + model.pdiparams + manifest)."""
    import paddle

    from streamtag.graph import optimise_for_export
    from streamtag.models import build_model, load_weights

    model = build_model(arch)
    load_weights(model, _state(state))
    model.eval()
    optimise_for_export(model)  # the same function, in the form oneDNN runs fastest (graph.py)
    spec = [paddle.static.InputSpec([None, None], "float32", name="waveform")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    log = tempfile.TemporaryFile()
    try:
        sys.stderr.flush()
        # Tracing warns (Python and glog) about things that do not matter for inference: shown only on failure.
        with warnings.catch_warnings(), _fd_redirected(2, log.fileno()):
            warnings.simplefilter("ignore")
            paddle.jit.save(static, str(dest / "model"))
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode("utf-8", "replace")[-4000:])
        raise
    finally:
        log.close()
    files = {name: file_sha256(dest / name, remember=False) for name in ("model.json", "model.pdiparams")}
    manifest = {"arch": arch, "weights_sha256": weights_sha256, "paddle": paddle.__version__,
                "format": EXPORT_FORMAT, "files": files}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _install(built: Path, final: Path) -> None:
    """Rename the freshly built `built` onto `final`; if another process got there first with a good entry, keep it."""
    try:
        os.rename(built, final)
        return
    except OSError:
        if verify_export(final):
            return  # lost the race to an equally good entry
    # `final` is stale or corrupt: move it aside (atomic), then put ours in.
    _discard(final)
    try:
        os.rename(built, final)
    except OSError:
        if not verify_export(final):  # a third process installed a good one meanwhile: fine
            raise


def _state(state: State) -> dict[str, np.ndarray]:
    return state() if callable(state) else state


def _export_here_or_aside(arch: str, state: State, weights_sha256: str, dest: Path) -> None:
    """Export in this process when it has imported Paddle already (the eager engine, tests), else in a child.

    Exporting needs all of Paddle (its import alone is ~300 MB), reads the weights and builds the eager model, and
    Paddle's allocator keeps what it took: a live session whose first start exported in-process held ~1.2 GB
    against ~0.78 GB after a warm start (CNN14, 2-core EPYC). A child process (a plain `python -c`, so that no
    caller's main module is re-run) reads the weights file, exports and takes that memory with it when it exits;
    this process then loads the graph with libpaddle alone, as a warm start does. A state given as a dict (tests,
    the eager engine's callers) is exported here.
    """
    from streamtag.checkpoints import WeightsFile

    weights = getattr(state, "__self__", None)
    if "paddle" in sys.modules or not isinstance(weights, WeightsFile):
        _export(arch, state, weights_sha256, dest)
        return
    import subprocess

    job = {"arch": arch, "path": str(weights.path), "sha256": weights_sha256, "dest": str(dest)}
    code = "import sys; from streamtag.engine import _export_child; _export_child(sys.argv[1])"
    here = str(Path(__file__).resolve().parent.parent)  # the streamtag this process runs, whatever the cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", code, json.dumps(job)], stdout=subprocess.PIPE, env=env)
    if child.returncode == 0:
        return
    try:
        error = json.loads(child.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        message, exit_code = str(error["error"]), int(error["exit_code"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise StreamtagError(f"exporting {arch} failed in its child process (exit status {child.returncode}; "
                             "out of memory?); free some memory, or use --engine eager") from None
    raise StreamtagError(message, exit_code)


def _export_child(job_json: str) -> None:
    """The child side of _export_here_or_aside: export, or print a StreamtagError as one JSON line and exit 1."""
    from streamtag.checkpoints import WeightsFile

    job = json.loads(job_json)
    try:
        weights = WeightsFile(job["arch"], Path(job["path"]), job["sha256"])
        _export(job["arch"], weights.state, job["sha256"], Path(job["dest"]))
    except StreamtagError as e:
        print(json.dumps({"error": str(e), "exit_code": e.exit_code}), flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, quietly here
        raise SystemExit(130) from None


def exported_model(arch: str, state: State, weights_sha256: str, broken: str | None = None) -> Path:
    """The cache directory holding the exported graph of (arch, weights), built as needed.

    A corrupt entry (or one the caller found `broken`, with that reason) is rebuilt with one line of notice.
    """
    root = streamtag_home() / "exported"
    final = root / export_key(arch, weights_sha256)
    if broken is None and verify_export(final):
        return final
    if broken is None and final.exists():
        broken = "incomplete or corrupt"
    if broken:
        notice(f"the cached export {final} is {broken}; rebuilding it")
    else:
        notice(f"exporting {arch} for Paddle Inference (once per model and Paddle version)...")
    try:
        root.mkdir(parents=True, exist_ok=True)
        built = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
        try:
            _export_here_or_aside(arch, state, weights_sha256, built)
            built.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the rest of the home
            if broken and verify_export(final):
                # It verifies but failed to load: move it aside so that _install does not keep it.
                _discard(final)
            _install(built, final)
        finally:
            shutil.rmtree(built, ignore_errors=True)
    except OSError as e:
        from streamtag.paths import os_reason

        fix = "free some space, or " if e.errno == errno.ENOSPC else ""
        raise StreamtagError(f"cannot write the export cache in {root} ({os_reason(e)}); {fix}point "
                             "STREAMTAG_HOME at a writable directory, or use --engine eager") from None
    return final


def _discard(entry: Path) -> None:
    """Remove a cache entry without ever leaving a half-deleted one in place: rename it away first."""
    trash = entry.with_name(f".trash-{entry.name}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _predictor_scorer(arch: str, state: State, weights_sha256: str, device: str, threads: int,
                      precision: str) -> PredictorScorer:
    """Load the cached export; an entry that verifies but still fails to load is rebuilt once."""
    entry = exported_model(arch, state, weights_sha256)
    try:
        scorer = PredictorScorer(arch, entry, device, threads, precision)
    except Exception as e:  # noqa: BLE001 - any load failure of a cache entry means: rebuild it
        entry = exported_model(arch, state, weights_sha256, broken=f"unloadable ({e.__class__.__name__})")
        scorer = PredictorScorer(arch, entry, device, threads, precision)
    return scorer


# ---------------------------------------------------------------------------------------------- entry points
def make_scorer(arch: str, state: State, weights_sha256: str, device: str = "auto",
                engine: str = "inference", threads: int | None = None, precision: str = "fp32") -> Scorer:
    """A Scorer over a state dict (Paddle names) or a function reading one; `weights_sha256` keys the export cache.

    With the inference engine and a cached export the state is never read: the predictor loads the exported
    graph's own parameters, and no Paddle layer is built."""
    if engine not in ENGINES:
        raise StreamtagError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise StreamtagError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise StreamtagError(f"--threads must be 1 or more, got {threads}")
    device = resolve_device(device)
    threads = threads or default_threads()
    if precision == "fp16" and device == "cpu":
        notice("fp16 needs a GPU; scoring in fp32 on the CPU (a CPU with AMX or AVX512-BF16 can use --precision bf16)")
        precision = "fp32"
    if precision == "bf16" and device == "cpu" and not cpu_has_fast_bf16():
        notice("bf16 needs a CPU with AMX or AVX512-BF16 and this one has neither; scoring in fp32")
        precision = "fp32"
    if precision != "fp32" and engine == "eager":
        notice(f"{precision} is for the inference engine; the eager engine scores in fp32")
        precision = "fp32"
    if engine == "eager":
        return EagerScorer(arch, _state(state), device, threads, precision)
    return _predictor_scorer(arch, state, weights_sha256, device, threads, precision)


def load_scorer(model: str = "cnn14", weights: str | None = None, device: str = "auto", engine: str = "inference",
                threads: int | None = None, precision: str = "fp32") -> Scorer:
    """The Scorer every command uses: resolves the checkpoint (registry default or `weights`), then the engine.

    The checkpoint is only hashed here (the hash is remembered by file stamp); it is read only to export or for the
    eager engine."""
    from streamtag.checkpoints import locate_weights

    found = locate_weights(model, weights)
    return make_scorer(model, found.state, found.sha256, device, engine, threads, precision)
