"""Weight files for the checkpoint tests, written without torch: PyTorch zip and legacy checkpoints from a
hand-rolled pickle writer, PaddleSpeech-like archives, and a real HTTP server on 127.0.0.1 to fetch them from."""

from __future__ import annotations

import http.server
import io
import socket
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np


def torch_pickle(state: dict[str, np.ndarray], wrap_model: bool = False, transposed: tuple[str, ...] = (),
                 shared_storage: bool = False, legacy: bool = False) -> tuple[bytes, dict[str, bytes]]:
    """A hand-rolled protocol-2 pickle of a PyTorch state dict as `torch.save` writes it: an OrderedDict of
    `torch._utils._rebuild_tensor_v2((storage pid), offset, size, stride, False, OrderedDict())`, the storages
    returned separately as `data/<key>` records. `transposed` keys are stored column-major (non-trivial strides);
    `shared_storage` puts every tensor in one storage at successive offsets; `legacy` writes the pre-1.6 persistent
    id (with a trailing view_metadata None)."""
    out = io.BytesIO()
    w = out.write

    def glob(module: str, name: str) -> None:
        w(b"c" + f"{module}\n{name}\n".encode())

    def string(text: str) -> None:
        raw = text.encode()
        w(b"X" + struct.pack("<I", len(raw)) + raw)

    def integer(n: int) -> None:
        w(b"J" + struct.pack("<i", n))

    def ints(values: tuple[int, ...]) -> None:
        w(b"(")
        for v in values:
            integer(v)
        w(b"t")

    records: dict[str, bytearray] = {}
    w(b"\x80\x02")
    if wrap_model:
        w(b"}(")  # {"model": <state>, "iteration": 0}
        string("model")
    glob("collections", "OrderedDict")
    w(b")R(")
    shared_numel = sum(np.asarray(v).size for v in state.values())
    for i, (key, value) in enumerate(state.items()):
        value = np.asarray(value, dtype="<f4")
        if key in transposed and value.ndim == 2:
            data, stride = value.T.tobytes(), (1, value.shape[0])
        else:
            data = value.tobytes()
            stride = tuple(int(np.prod(value.shape[d + 1:])) for d in range(value.ndim))
        storage_key = "0" if shared_storage else str(i)
        record = records.setdefault(storage_key, bytearray())
        start = len(record) // 4
        record += data
        string(key)
        glob("torch._utils", "_rebuild_tensor_v2")
        w(b"((")
        string("storage")
        glob("torch", "FloatStorage")
        string(storage_key)
        string("cpu")
        integer(shared_numel if shared_storage else value.size)  # a storage's numel, the same in every pid
        if legacy:
            w(b"N")
        w(b"tQ")  # the persistent id tuple, BINPERSID
        integer(start)
        ints(value.shape)
        ints(stride)
        w(b"\x89")
        glob("collections", "OrderedDict")
        w(b")Rt")
        w(b"R")
    w(b"u")
    if wrap_model:
        string("iteration")
        integer(0)
        w(b"u")
    w(b".")
    return out.getvalue(), {k: bytes(v) for k, v in records.items()}


def write_torch_zip(path: Path, pickle_bytes: bytes, records: dict[str, bytes], folder: str = "archive") -> Path:
    """PyTorch's zip layout: `<folder>/data.pkl`, `<folder>/data/<key>`, `<folder>/byteorder`, `.../version`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", pickle_bytes)
        zf.writestr(f"{folder}/byteorder", "little")
        for key, data in records.items():
            zf.writestr(f"{folder}/data/{key}", data)
        zf.writestr(f"{folder}/version", "3\n")
    return path


def write_legacy_torch(path: Path, state: dict[str, np.ndarray]) -> Path:
    """PyTorch's pre-1.6 format: magic, protocol version, sys_info, the object pickle, the sorted storage keys,
    then each storage as a little-endian int64 element count and its bytes."""
    import pickle

    pkl, records = torch_pickle(state, wrap_model=True, legacy=True)
    keys = sorted(records)
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(obj, protocol=2))
        f.write(pkl)
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            f.write(struct.pack("<q", len(records[key]) // 4) + records[key])
    return path


def paddlespeech_archive(arch: str, pdparams: Path, top: str | None = None) -> bytes:
    """A `.tar.gz` laid out like PaddleSpeech's: `<top>/<arch>.pdparams`, `panns.yaml`, `audioset_labels.txt`."""
    top = top or f"panns_{arch}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(pdparams, arcname=f"{top}/{arch}.pdparams")
        for name, text in (("panns.yaml", "sample_rate: 32000\n"), ("audioset_labels.txt", "Speech\nMusic\n")):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not Python warnings printed by third-party imports (paddle's ccache notice)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if "Warning:" not in line and not line.lstrip().startswith("warnings.warn")]


class Server:
    """A real HTTP server on 127.0.0.1 serving `files`; names in `cut` are sent half, then the socket closes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/").split("?", 1)[0]
                server.requests.append(name)
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if name in server.cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
