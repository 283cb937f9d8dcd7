"""The serving config a rendered repository was built with (`build-repo` keeps it in the
repository's serving.json under "config"): read by the server, the guard and the
python backend's shared-memory plan without importing the renderer."""
import json
import os
from typing import Dict, Optional


def repo_config(repo: Optional[str]) -> Dict:
    """serving.json's "config"; {} without a repository or that file."""
    path = os.path.join(repo, "serving.json") if repo else ""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("config") or {}
