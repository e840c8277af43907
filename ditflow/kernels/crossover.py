"""Where local attention beats plain SDPA: a measured crossover table and the question the dispatch asks of it.

Local attention saves work by a factor `flop_ratio(grid, radius, text_len)` (the bound), but a kernel realises
only a fraction of that bound, and the fraction depends on the device, the dtype, the head size and the sequence
length: on an H200, flash SDPA in bf16 beat FlexAttention local attention at every grid measured, while the CPU
C kernel realises about a third of the bound from ~1000 tokens up. So the fraction is measured, not guessed:
`ditflow bench attention --store` times local (auto backend) against plain SDPA per grid and writes the points
into `crossover.json` beside this file, one entry per (device type, dtype, head_dim).

    local_pays("cpu", torch.float32, 64, grid=(64, 64), radius=8, text_len=32)   # True on the measured CPU

estimates this call's speed-up as flop_ratio(this call) × the realised fraction interpolated, in log tokens,
from the nearest entry's points (same device type and dtype, nearest head_dim), and says yes only at
≥ MIN_SPEEDUP. Below the smallest measured length, or with no entry for the device type and dtype, it says no.
Given the backend the call would run (`choose_backend`), only points measured with that backend count, and the
backends that do all of full attention's work (masked SDPA, or SDPA itself) never pay: their speed-up does not
grow with the bound, so a fraction measured on them says nothing about a sparser call.

DITFLOW_CROSSOVER_TABLE names another table file (tests, or a machine's own measurements).
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import torch

from ditflow.kernels.local_attention import flop_ratio

TABLE_PATH = Path(__file__).with_name("crossover.json")
MIN_SPEEDUP = 1.1  # the safety margin: a noisy table or a slightly different shape must not turn a win into a loss
FULL_WORK = ("sdpa", "dense")  # local_attention backends that compute every score: never faster than plain SDPA
POINT_FIELDS = ("tokens", "grid", "radius", "text_len", "heads", "backend", "speedup", "flop_ratio")
ENTRY_FIELDS = ("device", "dtype", "head_dim", "points", "machine", "torch", "commit", "date", "command")


def table_path() -> Path:
    return Path(os.environ.get("DITFLOW_CROSSOVER_TABLE") or TABLE_PATH)


def dtype_name(dtype) -> str:
    """'float32' for torch.float32 or 'float32'."""
    return str(dtype).removeprefix("torch.")


def check_table(table: dict, where: str = "crossover table") -> dict:
    """Raise a ValueError naming what is wrong; return the table."""
    entries = table.get("entries") if isinstance(table, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected {{\"entries\": [...]}}")
    for i, e in enumerate(entries):
        missing = [f for f in ENTRY_FIELDS if f not in e]
        if missing:
            raise ValueError(f"{where}: entry {i} lacks {missing}")
        if e["device"] not in ("cpu", "cuda") or not isinstance(e["head_dim"], int) or not e["points"]:
            raise ValueError(f"{where}: entry {i} needs device cpu|cuda, an integer head_dim and some points")
        for p in e["points"]:
            if any(f not in p for f in POINT_FIELDS) or not (p["tokens"] > 0 and p["flop_ratio"] >= 1
                                                             and p["speedup"] > 0):
                raise ValueError(f"{where}: entry {i} has a point without positive {POINT_FIELDS}: {p}")
    return table


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> dict:
    return check_table(json.loads(Path(path).read_text(encoding="utf-8")), path)


def load_table(path: Path | str | None = None) -> dict:
    """The table at `path` (default: table_path()); re-read only when the file changes. A missing file is empty."""
    path = Path(path or table_path())
    if not path.exists():
        return {"entries": []}
    return _load(str(path), path.stat().st_mtime_ns)


def nearest_entry(table: dict, device_type: str, dtype, head_dim: int) -> dict | None:
    """The entry for this device type and dtype with the nearest head_dim (the smaller one on a tie)."""
    same = [e for e in table["entries"] if e["device"] == device_type and e["dtype"] == dtype_name(dtype)]
    return min(same, key=lambda e: (abs(e["head_dim"] - head_dim), e["head_dim"]), default=None)


def realised_fraction(entry: dict, tokens: int, backend: str | None = None) -> float | None:
    """speedup / flop_ratio at `tokens`, linear in log tokens between measured points (those of `backend`, when
    given), held flat past the largest; None below the smallest."""
    pts = sorted((p["tokens"], p["speedup"] / p["flop_ratio"]) for p in entry["points"]
                 if backend is None or p["backend"] == backend)
    if not pts or tokens < pts[0][0]:
        return None
    for (t0, f0), (t1, f1) in zip(pts, pts[1:]):
        if tokens <= t1:
            a = (math.log(tokens) - math.log(t0)) / (math.log(t1) - math.log(t0)) if t1 > t0 else 1.0
            return f0 + a * (f1 - f0)
    return pts[-1][1]


def estimated_speedup(device_type: str, dtype, head_dim: int, grid, radius: float, text_len: int,
                      table: dict | None = None, backend: str | None = None) -> float | None:
    """Local over plain SDPA for this call as the table predicts it; None where the table does not reach."""
    entry = nearest_entry(load_table() if table is None else table, device_type, dtype, head_dim)
    if entry is None:
        return None
    fraction = realised_fraction(entry, text_len + grid[0] * grid[1], backend)
    return None if fraction is None else fraction * flop_ratio(tuple(grid), float(radius), text_len)


def local_pays(device_type: str, dtype, head_dim: int, grid, radius: float, text_len: int,
               table: dict | None = None, backend: str | None = None) -> bool:
    """Whether local attention is worth running for this call: the estimated speed-up ≥ MIN_SPEEDUP.
    `backend`: the one `choose_backend` picks for this call, if known (see the module's docstring)."""
    if backend in FULL_WORK:
        return False
    est = estimated_speedup(device_type, dtype, head_dim, grid, radius, text_len, table, backend)
    return est is not None and est >= MIN_SPEEDUP


def store_entry(entry: dict, path: Path | str | None = None) -> Path:
    """Write `entry` into the table at `path`, replacing the one with the same device, dtype and head_dim;
    atomically, entries kept in a stable order."""
    path = Path(path or table_path())
    table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"entries": []}
    key = lambda e: (e["device"], e["dtype"], e["head_dim"])  # noqa: E731
    entries = [e for e in table["entries"] if key(e) != key(entry)] + [entry]
    table = check_table({**table, "entries": sorted(entries, key=key)}, str(path))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_dumps(table), encoding="utf-8")
    os.replace(tmp, path)
    return path


VECTOR_ISAS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"))  # /proc/cpuinfo flag, widest first


def _dumps(table: dict) -> str:
    """JSON with one line per field and one line per point, so a diff of a re-measured entry reads by grid."""
    def entry(e):
        fields = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in e.items() if k != "points"]
        points = ",\n".join(f"   {json.dumps(p)}" for p in e["points"])
        return "{\n" + ",\n".join(fields + [f'  "points": [\n{points}\n  ]']) + "\n }"
    rest = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in table.items() if k != "entries"]
    return "\n".join(["{", *rest, ' "entries": [', ",\n".join(" " + entry(e) for e in table["entries"]), " ]",
                      "}"]) + "\n"


def machine(device: str = "cpu") -> str:
    """The GPU's name, or the CPU's model as lscpu names it, with its family/model, widest vector ISA and cores."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    info = {}
    for line in _read("/proc/cpuinfo").splitlines():  # lscpu reads the same fields from here
        name, _, value = line.partition(":")
        info.setdefault(name.strip(), value.strip())
    flags = info.get("flags", "").split()
    isa = next((name for flag, name in VECTOR_ISAS if flag in flags), "")
    family = f"family {info['cpu family']} model {info['model']}" if "model" in info else ""
    about = ", ".join(x for x in (family, isa, f"{os.cpu_count()} cores") if x)
    return f"{info.get('model name', 'unknown CPU')} ({about})"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
