"""Character error rate over Kaldi-style `text` files (`<utt-id> <text>` per line)."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple


def read_text(path: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.replace("\t", " ").split(" ", 1)
            out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def _chars(s: str):
    return [c for c in s if not c.isspace()]


def edit_distance(ref, hyp) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def cer(pairs: Iterable[Tuple[str, str]]) -> Tuple[float, int, int]:
    """-> (CER, errors, reference characters) over (ref, hyp) pairs."""
    errors = chars = 0
    for ref, hyp in pairs:
        r = _chars(ref)
        errors += edit_distance(r, _chars(hyp))
        chars += len(r)
    return (errors / chars if chars else 0.0), errors, chars


def _report(ref: Dict[str, str], hyps: Dict[str, str]) -> Dict:
    common = [u for u in hyps if u in ref]
    rate, errors, chars = cer((ref[u], hyps[u]) for u in common)
    return {"cer": rate, "errors": errors, "chars": chars, "utts": len(common)}


def cer_files(ref_path: str, hyp_path: str) -> Dict:
    ref, hyp = read_text(ref_path), read_text(hyp_path)
    return {**_report(ref, hyp), "missing_in_hyp": sorted(set(ref) - set(hyp))}


def cer_report(ref_path: str, hyps: Dict[str, str]) -> Dict:
    """CER of `hyps` (utt -> text) against a Kaldi `text` file, over the utts in both."""
    return _report(read_text(ref_path), hyps)


def cer_summary(ref_path: str, hyps: Dict[str, str]) -> str:
    """One line: CER of `hyps` (utt -> text) against a Kaldi `text` file."""
    r = cer_report(ref_path, hyps)
    return f"# CER {r['cer'] * 100:.2f}% ({r['errors']}/{r['chars']} chars, {r['utts']} utts)"
