# Triton python-backend entry point; the logic lives in wenet_triton.serving.stream_model.
from wenet_triton.serving.stream_model import Streaming as TritonPythonModel  # noqa: F401
