"""Where the package finds its own files and where it writes its caches.

Everything the package needs at run time ships inside it (package data), so a plain
`pip install .` works from any directory: the Triton repository templates
(`serving/templates/`), the native sources and their build script (`csrc/`) and the sample
wavs (`samples/`). Builds and exports go to the cache, never into the installed package.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Dict, List, Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CSRC_DIR = os.path.join(PACKAGE_DIR, "csrc")
SAMPLES_DIR = os.path.join(PACKAGE_DIR, "samples")
BUILD_SCRIPT = os.path.join(CSRC_DIR, "build.sh")


def cache_root() -> str:
    """Exports, compiled native code and Triton backend copies ($WENET_TRITON_CACHE)."""
    return os.environ.get("WENET_TRITON_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "wenet_triton"))


def templates_dir() -> str:
    """The Triton model-repository templates ($WENET_TRITON_TEMPLATES overrides)."""
    d = os.environ.get("WENET_TRITON_TEMPLATES", os.path.join(PACKAGE_DIR, "serving", "templates"))
    if not os.path.exists(os.path.join(d, "serving.yaml")):
        raise FileNotFoundError(f"model repository templates not found in {d} "
                                "(a broken install? set WENET_TRITON_TEMPLATES)")
    return d


def source_digest(*names: str) -> str:
    """Short hash of native sources in csrc/: a build is named by what it was built from."""
    h = hashlib.sha1()
    for n in names:
        with open(os.path.join(CSRC_DIR, n), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def prebuilt_dir() -> Optional[str]:
    """Native libraries built ahead of time (the Docker image sets $WENET_TRITON_PREBUILT)."""
    return os.environ.get("WENET_TRITON_PREBUILT")


def build_native(target: str, out: str, archs: Optional[List[str]] = None,
                 capture: bool = False, env: Optional[Dict[str, str]] = None) -> str:
    """Run csrc/build.sh (the one build definition) for `search`, `kernels` or `trt`;
    `env` adds variables such as CXX or NVCC."""
    cmd = ["bash", BUILD_SCRIPT, target, out] + list(archs or [])
    subprocess.run(cmd, check=True, capture_output=capture, env={**os.environ, **(env or {})})
    return out


DEMO_MODEL = "demo_zh_synth"


def default_model_dir() -> Optional[str]:
    """$WENET_TRITON_MODEL, else the demo model of a source checkout (beside the package, or
    under ./models of the current directory), first found."""
    for cand in (os.environ.get("WENET_TRITON_MODEL"),
                 os.path.join(os.path.dirname(PACKAGE_DIR), "models", DEMO_MODEL),
                 os.path.join(os.getcwd(), "models", DEMO_MODEL)):
        if cand and os.path.exists(os.path.join(cand, "train.yaml")):
            return os.path.normpath(cand)
    return None
