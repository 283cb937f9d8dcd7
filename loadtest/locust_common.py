"""What the locust files share: the wav options and loader, a clean exit, the transcript
check. Imported as `locust_common` (locust puts a locustfile's folder on sys.path) after the
locustfile has made grpc cooperate with gevent."""
import glob
import os
import sys

from wenet_triton.audio.frontend import read_audio
from wenet_triton.paths import SAMPLES_DIR


def add_wav_args(parser, what: str = "send"):
    parser.add_argument("--wav-dir", default=SAMPLES_DIR, help=f"directory of 16 kHz wavs to {what}")
    parser.add_argument("--max-wavs", type=int, default=200, help="wavs loaded per worker")


def wav_loader(store: list):
    """An `events.init` listener filling `store` with (name, waveform) from --wav-dir."""
    def load(environment, **_kw):
        opts = environment.parsed_options
        files = sorted(glob.glob(os.path.join(opts.wav_dir, "*.wav")))[: opts.max_wavs]
        if not files:
            raise SystemExit(f"no wavs in {opts.wav_dir}")
        store.extend((os.path.basename(f), read_audio(f)) for f in files)
    return load


def quit_now(exit_code, **_kw):
    """An `events.quit` listener: grpc's gevent integration leaves threads that keep the
    interpreter alive; locust has written its stats and CSVs when `quit` fires, so leave now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def well_formed(text: str) -> bool:
    return bool(text.strip()) and all(c.isprintable() or c == " " for c in text)
