"""Using a trained model: the Python API (VSE), and the encode, search, export and eval stages."""

from retrieval.api import VSE, SplitEmbeddings  # noqa: F401  (the stable names of the Python API)
