# Triton python-backend entry point; the logic lives in wenet_triton.triton_models.
from wenet_triton.serving.triton_models import FusedAsr as TritonPythonModel  # noqa: F401
