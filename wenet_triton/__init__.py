"""Serve WeNet U2/U2++ models with Triton: model math, front-end, search, engines."""
__version__ = "0.1.0"
