"""The live path: sources fill a RingBuffer, the Pipeline thread scores audio-clock windows, sinks keep results.

    MicSource / FileSource ──► RingBuffer ──► Pipeline (window k ends at k·hop + window) ──► Recorder, JsonLines
                                                   └──► PipelineState snapshot ──► dashboard.render
"""

from streamtag.stream.pipeline import HopResult, Pipeline, PipelineState
from streamtag.stream.ring import Overrun, RingBuffer

__all__ = ["HopResult", "Overrun", "Pipeline", "PipelineState", "RingBuffer"]
