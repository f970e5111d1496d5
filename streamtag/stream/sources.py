"""Where live audio comes from: a microphone (PortAudio via sounddevice) or a file replayed in real time.

Both put mono float32 at 32 kHz into a RingBuffer (`source.ring`) and say when no more will come (`finished`,
`error`). The pipeline only ever talks to that interface, so replaying a file exercises the same path as a
microphone. Anything slow (resampling a 44.1/48 kHz device) happens in `pump()`, which the consumer calls: the
PortAudio callback only copies.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.stream.ring import Overrun, RingBuffer

SAMPLE_RATE = 32000  # what the models take (models.SAMPLE_RATE); kept here so listing devices needs no Paddle
RING_SECONDS = 30.0  # how far the consumer may fall behind before samples are lost (overrun)
MAX_CHANNELS = 2  # capture at most stereo: ALSA's `pulse` device claims 32 channels it only upmixes


def ring_seconds(sample_duration: float, hop_duration: float, history: float = 0.0) -> float:
    """Ring length for a window/hop: RING_SECONDS, or more for windows so long that 30 s would not hold a few, plus
    `history` seconds of older audio someone reads back (event clips' pre-roll)."""
    return max(RING_SECONDS, 4.0 * (sample_duration + hop_duration)) + history


# ------------------------------------------------------------------------------------------------ devices
def import_sounddevice() -> Any:
    """The sounddevice module, or a one-line error when PortAudio itself is missing."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise StreamtagError(f"PortAudio is not available ({e}); install it (Debian/Ubuntu: "
                             "apt-get install libportaudio2, macOS: brew install portaudio)") from None
    return sounddevice


def input_devices(sd: Any | None = None) -> list[dict[str, Any]]:
    """Every device with input channels: index, name, channels, default rate, host API, is-default."""
    sd = sd or import_sounddevice()
    try:
        devices = sd.query_devices()
        default = sd.default.device[0]
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise StreamtagError(f"PortAudio cannot list devices ({e}); check the audio system (ALSA/PulseAudio)") \
            from None
    return [{"index": d["index"], "name": d["name"], "channels": d["max_input_channels"],
             "rate": d["default_samplerate"], "hostapi": hostapis[d["hostapi"]]["name"],
             "default": d["index"] == default}
            for d in devices if d["max_input_channels"] > 0]


def _device_list(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "PortAudio sees no input device"
    return "inputs: " + ", ".join(f"{d['index']}: {d['name']}" for d in devices)


def resolve_input_device(device: str | int | None, sd: Any | None = None) -> dict[str, Any]:
    """The input device `device` names (index, or name substring as sounddevice matches it; None = default)."""
    sd = sd or import_sounddevice()
    devices = input_devices(sd)
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    if device is None:
        default = sd.default.device[0]
        if default is None or default < 0:
            if not devices:
                raise StreamtagError("no audio input device found (PortAudio sees none); connect a microphone, "
                                     "or start PulseAudio/PipeWire, then see `streamtag devices`")
            raise StreamtagError(f"no default input device; pick one with --input-device ({_device_list(devices)})")
        device = default
    if isinstance(device, int) and device not in {d["index"] for d in devices}:
        raise StreamtagError(f"no input device with index {device}; {_device_list(devices)}")
    try:
        info = sd.query_devices(device, kind="input") if isinstance(device, str) else sd.query_devices(device)
    except (ValueError, sd.PortAudioError) as e:
        reason = str(e).splitlines()[0].rstrip(":")
        raise StreamtagError(f"input device {device!r}: {reason}; {_device_list(devices)}") from None
    if info["max_input_channels"] < 1:
        raise StreamtagError(f"device {info['index']} ({info['name']}) has no input channels; "
                             f"{_device_list(devices)}")
    return {"index": info["index"], "name": info["name"], "channels": info["max_input_channels"],
            "rate": info["default_samplerate"]}


# ------------------------------------------------------------------------------------------------ sources
class MicSource:
    """Capture from an input device. The callback mixes to mono into `capture` and returns; nothing else.

    If the device cannot run at 32 kHz it runs at its default rate and `pump()` (the consumer's thread) resamples
    into `ring`. `finished`/`error` turn on when the stream dies under us (device unplugged, server gone).
    """

    catch_up = True  # real time: when inference falls behind, skip to the newest window

    def __init__(self, device: str | int | None = None, ring_seconds: float = RING_SECONDS,
                 capture_rate: int | None = None):
        sd = import_sounddevice()
        self._sd = sd
        info = resolve_input_device(device, sd)
        self.device = info
        self.name = f"{info['index']}: {info['name']}"
        self.channels = max(1, min(info["channels"], MAX_CHANNELS))
        # The device's rate (recorded in the npz); `capture_rate` forces one (tests of the resampling path).
        self.sample_rate = int(capture_rate) if capture_rate else self._pick_rate(info)
        self.rate = float(SAMPLE_RATE)  # ring samples per wall-clock second
        self.capture = RingBuffer(int(ring_seconds * self.sample_rate), self.sample_rate)
        if self.sample_rate == SAMPLE_RATE:
            self.ring = self.capture
            self._resampler = None
        else:
            from streamtag.audio import StreamResampler

            self.ring = RingBuffer(int(ring_seconds * SAMPLE_RATE), SAMPLE_RATE)
            self._resampler = StreamResampler(self.sample_rate, SAMPLE_RATE)
        self._pumped = 0  # capture samples already resampled into ring
        # POSIX time of the stream's first sample (set by the first callback): events' wall_start/wall_end
        self.wall_clock: float | None = None
        self.overflows = 0
        self.finished = False
        self.error: str | None = None
        self._stopping = False
        self._stream = None
        self._last_progress = (0, 0.0)

    def _pick_rate(self, info: dict[str, Any]) -> int:
        try:
            self._sd.check_input_settings(device=info["index"], channels=self.channels, dtype="float32",
                                          samplerate=SAMPLE_RATE)
            return SAMPLE_RATE
        except Exception:  # sounddevice raises PortAudioError or ValueError for an unsupported rate
            return int(info["rate"])

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Real-time thread: count, copy, return. No allocation beyond what Python does for the call itself.
        if status.input_overflow:
            self.overflows += 1
        if self.wall_clock is None:
            self.wall_clock = time.time() - frames / self.sample_rate
        self.capture.write(indata)

    def _finished_callback(self) -> None:
        if not self._stopping:
            self.error = self.error or f"input device {self.name} stopped delivering audio (unplugged or lost)"
        self.finished = True

    def start(self) -> None:
        sd = self._sd
        try:
            self._stream = sd.InputStream(device=self.device["index"], channels=self.channels, dtype="float32",
                                          samplerate=self.sample_rate, callback=self._callback,
                                          finished_callback=self._finished_callback)
            self._stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise StreamtagError(f"cannot open input device {self.name} at {self.sample_rate} Hz: {e}; "
                                 "see `streamtag devices`") from None
        self._last_progress = (0, time.monotonic())

    def stop(self) -> None:
        self._stopping = True
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception:  # a stream whose device vanished may refuse even to close; we are done with it
                pass
        self.finished = True

    def pump(self) -> None:
        """Consumer-side work: resample what the callback captured; notice a stream that died or stalled."""
        if self._resampler is not None:
            total = self.capture.total
            if total > self._pumped:
                # Behind by a whole ring (cannot happen unless this thread stalls for RING_SECONDS): drop the gap.
                start = self._pumped
                if start < self.capture.oldest():
                    start = min(total, self.capture.oldest() + self.capture.capacity // 10)
                    self.ring.overruns += 1  # audio lost before resampling: counted where the dashboard looks
                try:
                    block = self.capture.read(start, total)
                except Overrun:  # lapped by the callback while copying: the same loss, counted the same way
                    self.ring.overruns += 1
                    block = np.zeros(0, np.float32)
                arrival = self.capture.arrival_time(total - 1)
                self._pumped = total
                self.ring.write(self._resampler.process(block), arrival)
        stream = self._stream
        if stream is not None and not self._stopping and not self.finished:
            now = time.monotonic()
            total = self.capture.total
            if total != self._last_progress[0]:
                self._last_progress = (total, now)
            elif now - self._last_progress[1] > 5.0 or not stream.active:
                # No callback for 5 s: PortAudio has not told us, but the device is gone all the same.
                self.error = f"input device {self.name} stopped delivering audio (no data for 5 s)"
                self.finished = True

    def wait(self, count: int, timeout: float) -> bool:
        """Sleep until `ring` may hold `count` samples (or `timeout`)."""
        if self._resampler is None:
            return self.ring.wait_for(count, timeout, self.rate)
        need = math.ceil((count - self.ring.total) * self.sample_rate / SAMPLE_RATE)
        return self.capture.wait_for(self.capture.total + max(1, need), timeout, self.sample_rate)


class FileSource:
    """Replay a file into the ring at `speed` x real time, or with `fast` as fast as the consumer takes it.

    Paced replay writes each 50 ms piece when its last sample would have arrived from a microphone, so delay and
    skipping behave as live. Fast replay never drops a hop: it waits while the ring holds `capacity` samples the
    consumer has not used yet (backpressure on `ring.consumer_position`) and the pipeline does not catch up.
    """

    PIECE = 1600  # 50 ms at 32 kHz

    def __init__(self, path: str, speed: float = 1.0, fast: bool = False, limit_seconds: float | None = None,
                 ring_seconds: float = RING_SECONDS):
        from streamtag.audio import AudioReader

        self.reader = AudioReader(path)
        self.name = str(path)
        self.sample_rate = int(self.reader.sample_rate)
        self.fast = fast
        self.catch_up = not fast
        self.rate = math.inf if fast else SAMPLE_RATE * speed
        self.speed = speed
        self.wall_clock = None  # a file has no wall-clock time (events from a replay carry stream time only)
        self.ring = RingBuffer(int(ring_seconds * SAMPLE_RATE), SAMPLE_RATE)
        self.limit = None if limit_seconds is None else int(round(limit_seconds * SAMPLE_RATE))
        self.overflows = 0
        self.finished = False
        self.error: str | None = None
        self.exception: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamtag-replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def pump(self) -> None:
        pass

    def wait(self, count: int, timeout: float) -> bool:
        return self.ring.wait_for(count, timeout, None if self.fast else self.rate)

    def _run(self) -> None:
        try:
            self._feed()
        except StreamtagError as e:
            self.error = str(e)
        except BaseException as e:  # a bug: keep it for the pipeline to re-raise with its traceback
            self.exception = e
            self.error = f"replay of {self.name} failed: {e!r}"
        finally:
            self.finished = True

    def _feed(self) -> None:
        ring = self.ring
        written = 0
        t0 = time.monotonic()
        for block in self.reader.blocks(seconds=1.0):
            for i in range(0, len(block), self.PIECE):
                piece = block[i:i + self.PIECE]
                if self.limit is not None:
                    piece = piece[:max(0, self.limit - written)]
                if self._stop.is_set() or len(piece) == 0:
                    return
                if self.fast:
                    while written + len(piece) - ring.consumer_position > ring.capacity:
                        if self._stop.wait(0.001):
                            return
                else:
                    due = t0 + (written + len(piece)) / self.rate
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                ring.write(piece)
                written += len(piece)
