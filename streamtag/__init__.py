"""streamtag: real-time audio tagging with PANNs (CNN14/CNN10/CNN6) on PaddlePaddle."""

__version__ = "0.1.0"
