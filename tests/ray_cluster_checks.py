"""The Ray tests proper, on a real Ray: run only by tests/test_ray.py, inside a private network namespace.

Ray binds the machine's interface address (and probes a public DNS server for it) even when told 127.0.0.1, so these
tests never run in the machine's own network: tests/test_ray.py starts this file under `unshare -n -p -f
--mount-proc` (a network namespace with only loopback, and a PID namespace, so every Ray process dies with it). The
file name does not match `test_*.py`, so a plain `pytest` never collects it outside the namespace.

The cluster is the real thing, started as an operator would: `ray start --head` (no CPUs, so no actor lands on it)
and two `ray start --address` workers with one CPU each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.results import load_result

RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6379
ADDRESS = f"127.0.0.1:{PORT}"
TMP_ROOT = Path(os.environ.get("STREAMTAG_RAY_TEST_TMP", "/tmp"))


def streamtag(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "streamtag", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def ray_cli(*args):
    proc = subprocess.run([RAY, *map(str, args)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"ray {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Short files of different lengths, rates and channel counts (2 to 4.5 s: 7 to 15 windows each)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    for i in range(8):
        rate = (16000, 22050, 32000, 44100)[i % 4]
        seconds = 2 + 0.5 * (i % 6)
        t = np.arange(int(rate * seconds)) / rate
        tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(len(t))
        audio = tone if i % 3 else np.stack([tone, -tone * 0.5], axis=1)
        sf.write(folder / f"clip{i}.{'flac' if i % 2 else 'wav'}", audio.astype(np.float32), rate)
    return folder


@pytest.fixture(scope="module")
def model(cnn6_weights):
    return ["--model", "cnn6", "--weights", cnn6_weights, "--device", "cpu", "--batch-size", "4"]


@pytest.fixture(scope="module")
def plain(corpus, model, tmp_path_factory) -> Path:
    """What plain `streamtag tag` writes for the corpus: the reference every Ray run must match."""
    out = tmp_path_factory.mktemp("plain")
    proc = streamtag("tag", *sorted(corpus.iterdir()), "--output-dir", out, *model)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def cluster():
    """A head node without CPUs and two one-CPU worker nodes, started with the `ray` command; stopped after."""
    temp = TMP_ROOT / "ray"  # short: Ray's unix sockets live below it (a socket path must fit in 107 bytes)
    small = ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    # Token authentication, as Ray recommends: one token (in $HOME/.ray, a temp dir here) shared by every node.
    os.environ["RAY_AUTH_MODE"] = "token"
    ray_cli("get-auth-token", "--generate")
    try:
        ray_cli("start", "--head", "--port", PORT, "--node-ip-address", "127.0.0.1", "--num-cpus", 0,
                "--include-dashboard", "false", "--temp-dir", temp, *small)
        for _ in range(2):
            ray_cli("start", "--address", ADDRESS, "--node-ip-address", "127.0.0.1", "--num-cpus", 1, *small)
        yield ADDRESS
    finally:
        # Only this PID namespace's Ray processes are visible here, so `ray stop` cannot touch anyone else's.
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def assert_same_results(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.npz"))
    assert names and names == sorted(p.name for p in b.glob("*.npz"))
    for name in names:
        x, y = load_result(a / name), load_result(b / name)
        np.testing.assert_array_equal(x.time, y.time)
        np.testing.assert_allclose(x.scores, y.scores, rtol=0, atol=1e-5, err_msg=name)
        assert (x.duration, x.sample_rate, x.model, x.labels) == (y.duration, y.sample_rate, y.model, y.labels)


def assert_no_leftovers(out: Path) -> None:
    """No temp file of a killed or interrupted worker, no marker of the driver."""
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def corrupt_flac(path: Path) -> Path:
    """A FLAC whose header reads but whose frames do not: it passes the driver's check and fails in a worker."""
    sf.write(path, (np.random.default_rng(0).standard_normal(32000 * 4) * 0.1).astype(np.float32), 32000)
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + 3000] = b"\xff" * 3000
    path.write_bytes(bytes(data))
    return path


def test_local_ray_matches_plain_tag_and_bad_files_fail_alone(corpus, model, plain, tmp_path):
    broken = tmp_path / "broken.wav"  # caught on the driver, from its header
    broken.write_bytes(b"RIFF" + os.urandom(200))
    corrupt = corrupt_flac(tmp_path / "corrupt.flac")  # caught by the worker that decodes it
    out = tmp_path / "out"
    proc = streamtag("tag", *sorted(corpus.iterdir()), broken, corrupt, "--ray", "--output-dir", out, *model)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("streamtag: error:")]
    assert len(errors) == 2 and "broken.wav" in errors[0] and "corrupt.flac" in errors[1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert_same_results(plain, out)  # every good file, and nothing for the bad ones
    assert_no_leftovers(out)


def test_sigterm_stops_the_run_cleanly_and_the_next_run_resumes(model, tmp_path):
    import queue
    import threading

    corpus = tmp_path / "long"  # 6 × 30 s: seconds of work per file, so the signal lands mid-run
    corpus.mkdir()
    t = np.arange(30 * 16000) / 16000
    for i in range(6):
        sf.write(corpus / f"long{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t)).astype(np.float32), 16000)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "streamtag", "tag", corpus, "--ray", "--output-dir", out, *model]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=300)  # the first file is done: the others are being tagged
        assert "→" in first, first
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert_no_leftovers(out)  # no temp file of a killed actor, no marker
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert 1 <= len(done) < 6, done
    left = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # the local Ray went with the driver
    again = streamtag("tag", corpus, "--ray", "--output-dir", out, *model)
    assert again.returncode == 0, again.stderr
    assert f"{len(done)} file(s) already tagged" in again.stderr, again.stderr
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in done.items())  # not redone
    assert sorted(p.name for p in out.glob("*.npz")) == [f"long{i}.npz" for i in range(6)]
    assert all(load_result(p).scores.shape == (100, 527) for p in out.glob("*.npz"))


def test_cluster_run_matches_plain_tag_and_resumes(cluster, corpus, model, plain, tmp_path):
    out = tmp_path / "out"
    proc = streamtag("tag", corpus, "--ray", cluster, "--ray-workers", 2, "--output-dir", out, *model)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers on 2 nodes" in proc.stderr, proc.stderr  # one actor on each worker node
    assert_same_results(plain, out)
    assert_no_leftovers(out)
    # The same resume rule as a plain run: one result removed, only that file is tagged again.
    (out / "clip3.npz").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    again = streamtag("tag", corpus, "--ray", cluster, "--ray-workers", 2, "--output-dir", out, *model)
    assert again.returncode == 0, again.stderr
    assert "7 file(s) already tagged" in again.stderr and again.stdout.count("→") == 1, again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz") if p.name != "clip3.npz"} == before
    assert_same_results(plain, out)


def test_a_killed_worker_has_its_files_done_elsewhere_exactly_once(cluster, corpus, cnn6_weights, plain, tmp_path):
    import ray

    from streamtag import corpus as files
    from streamtag.checkpoints import load_state
    from streamtag.cluster import RayExecutor, WorkerSpec, connect

    state, sha = load_state("cnn6", str(cnn6_weights))
    out = tmp_path / "out"
    sources, errors = files.collect_sources([corpus])
    jobs = files.plan_jobs(sources, out, files.TagOptions("cnn6", sha, 2.0, 0.3)).todo
    assert len(jobs) == 8 and not errors
    said: list[str] = []
    connect(cluster)
    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
        assert len(nodes) == 2, ray.nodes()
        executor = RayExecutor(ray, WorkerSpec("cnn6", sha, batch_size=4), state, 2, out, say=said.append)
        outcomes, victim = [], None
        for outcome in executor.run(jobs):
            outcomes.append(outcome)
            if victim is None:  # mid-run: one file done, both workers holding files
                victim = executor.pids()[0]
                os.kill(victim, signal.SIGKILL)
        assert victim is not None and executor.deaths == 1, said
    finally:
        ray.shutdown()
    assert sorted(o.job.input for o in outcomes) == sorted(j.input for j in jobs)  # each file reported once
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert any("died" in line for line in said), said
    assert_same_results(plain, out)  # each file's result is there, complete and right
    assert_no_leftovers(out)

