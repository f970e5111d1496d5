"""`streamtag tag --ray`: the CLI's checks here, the cluster itself in a private network namespace.

Every test that starts Ray runs in tests/ray_cluster_checks.py, launched by `test_ray_in_a_private_network` under
`unshare -n -p -f --mount-proc` (as root): a network namespace with only loopback, so nothing Ray sends can reach any
address but 127.0.0.1, and a PID namespace, so no raylet or gcs_server outlives the run. With CI=true a missing
`unshare`, `ip`, root or ray fails the test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import need
from streamtag.cluster import check_address, plan_workers
from streamtag.errors import StreamtagError

HERE = Path(__file__).resolve().parent


def run_cli(*args, hide_ray=False, timeout=120):
    code = "import sys\n"
    if hide_ray:
        code += "sys.modules['ray'] = None  # as if the extra were not installed\n"
    code += "from streamtag.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, STREAMTAG_HOME="/nonexistent"))


def one_line_error(proc, code, *words):
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("streamtag: error: "), proc.stderr
    for word in words:
        assert word in lines[0]


def test_without_ray_the_flag_is_one_line_naming_the_extra(tmp_path, cnn6_weights):
    wav = HERE.parent / "samples" / "sample.wav"
    proc = run_cli("tag", wav, "--ray", "--model", "cnn6", "--weights", cnn6_weights, "--output-dir", tmp_path,
                   hide_ray=True)
    one_line_error(proc, 2, "needs ray", "pip install 'streamtag[ray]'")
    assert not list(tmp_path.iterdir())


def test_a_file_swallowed_by_the_flag_is_named(tmp_path):
    proc = run_cli("tag", "a.wav", "--ray", "b.wav", "--output-dir", tmp_path)
    one_line_error(proc, 2, "'b.wav' is not a Ray address", "--ray local")


def test_ray_workers_without_ray_is_an_error(tmp_path):
    proc = run_cli("tag", "a.wav", "--ray-workers", "2", "--output-dir", tmp_path)
    one_line_error(proc, 2, "--ray-workers", "--ray")


@pytest.mark.parametrize("address", ["local", "auto", "10.0.0.5:6379", "head.example:6379", "ray://head:10001"])
def test_addresses(address):
    assert check_address(address) == address


def test_worker_plan_follows_the_cluster():
    cpus, gpus, few = {"CPU": 16.0}, {"CPU": 64.0, "GPU": 4.0}, {"CPU": 6.0, "GPU": 4.0}
    assert plan_workers(cpus, "auto", None, None) == ("cpu", 1, 16, 0.0)
    assert plan_workers(cpus, "auto", 4, None) == ("cpu", 4, 4, 0.0)
    assert plan_workers(cpus, "cpu", 3, 2) == ("cpu", 3, 2, 0.0)
    assert plan_workers(gpus, "auto", None, None) == ("gpu", 1, 64, 1 / 16)  # 16 decoding actors feed each GPU
    assert plan_workers(few, "auto", None, None) == ("gpu", 1, 4, 1.0)  # but never more than the CPUs allow
    assert plan_workers(gpus, "auto", None, 2) == ("gpu", 1, 2, 1.0)  # one GPU each
    assert plan_workers(gpus, "auto", None, 8) == ("gpu", 1, 8, 0.5)
    assert plan_workers(gpus, "cpu", 2, None) == ("cpu", 2, 32, 0.0)
    assert plan_workers({"CPU": 256.0, "GPU": 2.0}, "auto", None, None) == ("gpu", 1, 32, 1 / 16)  # at most 16
    assert plan_workers(cpus, "gpu", None, None) == ("gpu", 1, 1, 1.0)  # an autoscaler may add the GPU node
    with pytest.raises(StreamtagError):
        check_address("recordings/")


def test_ray_in_a_private_network(tmp_path):
    """Runs tests/ray_cluster_checks.py on a real Ray (local, then a head and two workers) in namespaces."""
    if importlib.util.find_spec("ray") is None:
        need("ray is not installed (pip install 'streamtag[ray]')")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            need(f"`{tool}` is missing (util-linux / iproute2): Ray tests run in a private network namespace")
    if os.geteuid() != 0:
        need("Ray tests need root for `unshare -n` (a private network namespace)")
    root = Path(tempfile.mkdtemp(prefix="strt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = root / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), STREAMTAG_HOME=str(root / "streamtag"), RAY_TMPDIR=str(root),
               STREAMTAG_RAY_TEST_TMP=str(root), RAY_USAGE_STATS_ENABLED="0", PYTHONDONTWRITEBYTECODE="1")
    child = (f"ip link set lo up && exec {sys.executable} -m pytest {HERE / 'ray_cluster_checks.py'} "
             f"-q -x -p no:cacheprovider --basetemp={root / 'pytest'}")
    try:
        proc = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", child], env=env,
                              cwd=HERE.parent, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"Ray tests failed (exit {proc.returncode}):\n{proc.stdout[-8000:]}\n" \
                                     f"{proc.stderr[-4000:]}"
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]
        left = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
        assert left.stdout == "", f"Ray processes outlived the namespace: {left.stdout}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
