"""streamtag: real-time audio tagging with PANNs (CNN14/CNN10/CNN6) on PaddlePaddle."""

import warnings

__version__ = "0.1.0"

# Importing paddle warns that ccache is missing; that only matters for compiling C++ extensions, never for us,
# and it would turn every one-line error into three lines.
warnings.filterwarnings("ignore", message="No ccache found")
