"""Sizing the python backend's shared memory for a repository, at tritonserver's start.

Each python-backend model instance talks to tritonserver through one /dev/shm region: the
inputs of the batches it holds, its outputs and its BLS calls live there. Triton 2.51 starts
every region at `shm-default-byte-size` (1 MB unless told) and grows it under load, and the
growth is where it crashed on an H200 (session 21: SIGSEGV in libtriton_python.so and a stub's
boost::interprocess::lock_exception as 64-row batches of 10 s requests arrived; the region
is remapped while other threads of the stub and of the server use it,
triton-inference-server/server#4035, #8882). The region is committed at its full size when it
is made (boost's truncate fallocates: an instance of 256 MB takes 256 MB of /dev/shm at once),
so it cannot simply be made huge either.

`plan()` reads the repository's python models (instances, max batch, the longest request,
the tensors per second of audio in and out, batches in flight, BLS calls) and gives every
region the most one instance can hold at once, within 80 % of the free /dev/shm shared by all
instances (the backend setting is one for all python models). When /dev/shm is too small for
that, the regions get their share and the log says how much more /dev/shm would avoid growth
at the largest batches (docker `--shm-size` / compose `shm_size`, the k8s `dshm` volume).
"""
import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

from wenet_triton.contract import CONFIG_NAME, TRITON_DTYPE_BYTES, EngineSettings
from wenet_triton.serving.repo_json import repo_config

MB = 1 << 20
SHM_DIR = "/dev/shm"
BUDGET_SHARE = 0.8           # of the free /dev/shm at start, for all regions together
MIN_REGION = 4 * MB          # the backend needs >= 1 MB per instance; below 4 MB nothing fits
HEADROOM = 4 * MB            # per region: small tensors, strings; plus 10 % for the allocator
GROWTH = 64 * MB             # growth step when a batch still does not fit (rare by design)

_TENSOR = re.compile(r'\{\s*name:\s*"([^"]+)"\s+data_type:\s*TYPE_(\w+)\s+dims:\s*\[([^\]]*)\]')
_PARAM = re.compile(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"')


class ShmError(RuntimeError):
    """/dev/shm cannot hold the repository's python-backend regions."""


@dataclasses.dataclass
class ModelNeed:
    name: str
    instances: int
    bytes_per_instance: int   # the most one instance holds in its region at once
    why: str                  # how that was counted, for the log


@dataclasses.dataclass
class ShmPlan:
    default_bytes: int        # shm-default-byte-size: every region starts at this
    growth_bytes: int         # shm-growth-byte-size
    free_bytes: int           # /dev/shm free at planning time
    models: List[ModelNeed]

    @property
    def instances(self) -> int:
        """python-backend instances (regions) in the repository"""
        return sum(m.instances for m in self.models)

    @property
    def need_bytes(self) -> int:
        """the hungriest instance's need"""
        return self.hungriest().bytes_per_instance

    @property
    def fits(self) -> bool:
        return self.default_bytes >= self.need_bytes

    def args(self) -> List[str]:
        return [f"--backend-config=python,shm-default-byte-size={self.default_bytes}",
                f"--backend-config=python,shm-growth-byte-size={self.growth_bytes}"]

    def summary(self) -> str:
        top = self.hungriest()
        s = (f"python backend shared memory: {self.instances} regions x {self.default_bytes / MB:.0f} MB "
             f"(= {self.instances * self.default_bytes / MB:.0f} MB of /dev/shm, {self.free_bytes / MB:.0f} MB free); "
             f"largest need {top.bytes_per_instance / MB:.0f} MB ({top.name}: {top.why})")
        if not self.fits:
            more = self.instances * self.need_bytes / BUDGET_SHARE - self.free_bytes
            s += (f"; /dev/shm is short of it by {more / MB:.0f} MB, so the largest batches grow their "
                  "regions under load (where Triton 2.51's python backend has crashed): give the "
                  "container more (docker --shm-size, compose shm_size, the k8s dshm volume) or lower "
                  "max_batch_size / max_audio_seconds")
        return s

    def hungriest(self) -> ModelNeed:
        return max(self.models, key=lambda m: m.bytes_per_instance)


def _config_texts(repo: str) -> Dict[str, str]:
    """model -> its config.pbtxt text, for every model directory of the repository."""
    out = {}
    for model in sorted(os.listdir(repo)):
        p = os.path.join(repo, model, "config.pbtxt")
        if os.path.isfile(p):
            with open(p) as f:
                out[model] = f.read()
    return out


def _config(text: str) -> Optional[Dict]:
    """A python-backend model's batch, instances, tensors and parameters; None for others."""
    if not re.search(r'^backend:\s*"python"', text, re.M):
        return None
    m = re.search(r"^max_batch_size:\s*(\d+)", text, re.M)
    count = 0
    for g in re.finditer(r"\{\s*count:\s*(\d+)([^}]*)\}", text):
        gpus = re.search(r"gpus:\s*\[([^\]]*)\]", g.group(2))
        count += int(g.group(1)) * (len([x for x in gpus.group(1).split(",") if x.strip()]) if gpus else 1)
    head = text.split("output [", 1)[0]
    return {"max_batch": int(m.group(1)) if m else 1, "instances": count or 1,
            "inputs": {n for n, _, _ in _TENSOR.findall(head)},
            "tensors": [(n, t, [int(d) for d in dims.replace(" ", "").split(",") if d])
                        for n, t, dims in _TENSOR.findall(text)],
            "params": dict(_PARAM.findall(text))}


def _rates(repo: str) -> Tuple[float, float, float, int]:
    """(samples, fbank frames, encoder frames) per second and the fbank dim, from the engine
    settings shipped in the repository (16 kHz, 10 ms, 4x, 80 when none is there)."""
    for model in sorted(os.listdir(repo)):
        vdir = os.path.join(repo, model, "1")
        if os.path.isfile(os.path.join(vdir, CONFIG_NAME)):
            st = EngineSettings.load(vdir)
            fps = 1000.0 / st.fbank.frame_shift_ms
            return float(st.fbank.sample_rate), fps, fps / st.subsampling_rate, int(st.input_dim)
    return 16000.0, 100.0, 25.0, 80


def _per_second(tensors, rates) -> Tuple[float, str]:
    """Bytes per second of audio through these tensors: 1-D tensors are samples, [-1, fbank
    dim] fbank frames, any other variable dim counts at the encoder's frame rate (the most a
    per-frame or per-token dim can grow); fixed-size and string tensors are in HEADROOM."""
    samples, fbank, enc, feat_dim = rates
    total, parts = 0.0, []
    for name, dtype, dims in tensors:
        if -1 not in dims or dtype not in TRITON_DTYPE_BYTES:
            continue
        fixed = 1
        for d in dims:
            fixed *= d if d > 0 else 1
        rate = samples if dims == [-1] else fbank if dims == [-1, feat_dim] else enc
        b = rate * fixed * TRITON_DTYPE_BYTES[dtype]
        total += b
        parts.append(f"{name} {b / 1000:.0f} kB/s")
    return total, ", ".join(parts)


def _ensemble_outputs(texts: Dict[str, str]) -> Dict[str, set]:
    """model -> the outputs some ensemble step maps (Triton asks a step for those only)."""
    out: Dict[str, set] = {}
    for text in texts.values():
        if 'platform: "ensemble"' not in text:
            continue
        for step in re.split(r"\bmodel_name:", text)[1:]:
            name = re.match(r'\s*"([^"]+)"', step).group(1)
            out.setdefault(name, set()).update(re.findall(r'output_map\s*\{\s*key:\s*"([^"]+)"', step))
    return out


def model_needs(repo: str) -> List[ModelNeed]:
    rates = _rates(repo)
    cfg = repo_config(repo)
    texts = _config_texts(repo)
    configs = {m: c for m, c in ((m, _config(t)) for m, t in texts.items()) if c is not None}
    mapped = _ensemble_outputs(texts)
    max_audio = float(cfg.get("max_audio_seconds") or 60)
    out = []
    for name, c in configs.items():
        p = c["params"]
        longest = float(p.get("max_chunk_seconds") or p.get("max_audio_seconds") or max_audio)
        per_batch = float(p.get("max_batch_audio_seconds") or cfg.get("max_batch_audio_seconds") or 0)
        batch_seconds = c["max_batch"] * longest
        if per_batch > 0:  # a request carries at most this; a batch of them can hold more
            batch_seconds = c["max_batch"] * min(longest, per_batch)
        tensors = c["tensors"]
        if name in mapped:  # a step of an ensemble: its unmapped outputs are never sent
            inputs = c["inputs"]
            tensors = [t for t in tensors if t[0] in inputs or t[0] in mapped[name]]
        bps, parts = _per_second(tensors, rates)
        # batches held at once: those past the device stage (max_inflight) + the one arriving
        slots = int(p.get("max_inflight", "0") or 0) + 1
        need = slots * batch_seconds * bps
        why = f"{slots} x {c['max_batch']} rows x {batch_seconds / c['max_batch']:g} s x ({parts})"
        dec = p.get("decoder_model") or ("decoder" if "decoder_max_batch_size" in p else "")
        if dec in configs and p.get("rescore", "bls") == "bls":
            # its BLS calls to the decoder put the decoder's inputs in this region as well
            rows = int(p.get("decoder_max_batch_size") or configs[dec]["max_batch"])
            dec_seconds = float(p.get("max_audio_seconds") or max_audio)
            dbps, _ = _per_second(configs[dec]["tensors"], rates)
            need += rows * dec_seconds * dbps
            why += f" + BLS to {dec}: {rows} rows x {dec_seconds:g} s"
        out.append(ModelNeed(name, c["instances"], int(need * 1.1) + HEADROOM, why))
    return out


def free_bytes(shm_dir: str = SHM_DIR) -> int:
    st = os.statvfs(shm_dir)
    return st.f_bavail * st.f_frsize


def plan(repo: str, free: Optional[int] = None, override_mb: Optional[float] = None) -> Optional[ShmPlan]:
    """The regions' size for `repo` (None: no python models). override_mb: the serving
    config's `python_shm_mb` (a fixed size per region instead of the plan)."""
    models = model_needs(repo)
    if not models:
        return None
    free = free_bytes() if free is None else free
    p = ShmPlan(0, 0, free, models)
    n, need = p.instances, p.need_bytes
    if override_mb:
        size = int(float(override_mb) * MB)
        if size * n > free:
            raise ShmError(f"python_shm_mb {override_mb:g} x {n} python instances = {size * n / MB:.0f} MB, "
                           f"but /dev/shm has {free / MB:.0f} MB free: lower python_shm_mb or give the "
                           "container more /dev/shm (docker --shm-size, compose shm_size, k8s dshm)")
    else:
        share = int(free * BUDGET_SHARE / n) // MB * MB
        if share < MIN_REGION:
            least = n * MIN_REGION / BUDGET_SHARE / MB
            raise ShmError(f"/dev/shm has {free / MB:.0f} MB free; the repository's {n} python-backend "
                           f"instances need at least {MIN_REGION / MB:.0f} MB each ({least:.0f} "
                           "MB of /dev/shm): give the container more (docker --shm-size, compose "
                           "shm_size, the k8s dshm volume) or serve fewer instances")
        size = max(MIN_REGION, min(-(-need // MB) * MB, share))
    return dataclasses.replace(p, default_bytes=size, growth_bytes=min(GROWTH, max(MB, size)))


def serving_override(repo: str) -> Optional[float]:
    """`python_shm_mb` from the repository's serving.json (the serving config), if set."""
    v = repo_config(repo).get("python_shm_mb")
    size = None if v in (None, "", "auto") else _number(v)
    if v not in (None, "", "auto") and (size is None or size < 1):
        raise ShmError(f"python_shm_mb {v!r}: use auto or a size in MB per python instance "
                       "(the python backend needs at least 1 MB)")
    return size


def _number(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
