#!/usr/bin/env python3
"""Write perf_analyzer --input-data JSON files with real audio: one file per utterance
length (wavs tiled/cropped to N seconds), WAV + WAV_LENS per request.

    python3 -m loadtest.perf_analyzer_inputs --wav-dir wavs/ --seconds 2,5,10,20 --out pa/
    perf_analyzer -m attention_rescoring -i grpc -u 127.0.0.1:8001 --input-data pa/wav_5s.json \
        --shape WAV:80000 --concurrency-range 1:64:2 -f pa/perf_5s.csv
"""
import argparse
import glob
import json
import os

from loadtest.sweep import fixed_length
from wenet_triton.audio.frontend import read_audio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wav-dir", required=True)
    p.add_argument("--seconds", default="2,5,10,20")
    p.add_argument("--count", type=int, default=8, help="distinct utterances per file")
    p.add_argument("--out", default="pa_inputs")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    base = [read_audio(f) for f in sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[: a.count]]
    for sec in [float(s) for s in a.seconds.split(",")]:
        data = [{"WAV": {"content": w.round(6).tolist(), "shape": [len(w)]},
                 "WAV_LENS": {"content": [len(w)], "shape": [1]}} for w in fixed_length(base, sec)]
        path = os.path.join(a.out, f"wav_{sec:g}s.json")
        with open(path, "w") as f:
            json.dump({"data": data}, f)
        print(f"{path}: {len(data)} requests of {sec:g} s (use --shape WAV:{int(sec * 16000)})")


if __name__ == "__main__":
    main()
