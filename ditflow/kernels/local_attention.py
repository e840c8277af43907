"""CLEAR local-window attention on a joint `[T text tokens | H×W image tokens]` sequence.

CLEAR (Liu et al. 2024, https://arxiv.org/abs/2412.16112): text queries attend to everything; an image query
attends to every text token plus the image tokens inside a circle of radius r around it, dy² + dx² < r² in the
token grid, clipped at the borders. The rule lives in one place, `allowed()`; every backend below computes
exactly it (tests compare each against the dense masked reference).

Backends, a small registry like diffusers' `attention_dispatch` (`backend=None` picks one):
    sdpa   plain SDPA: used when the circle covers the whole grid, where local = full attention
    dense  SDPA with a cached (L, L) boolean mask: the reference; differentiable; fine for short sequences
    tiled  2-D query tiles, each with its halo of K/V (+ text K/V) and one batched masked SDPA; pure torch,
           differentiable: the training path for long sequences and the fallback when no C compiler exists
    cpu    a C kernel (local_attention_cpu.c, compiled with the system gcc at first use, about a second) that
           walks the circle row by row, so it never computes a masked score; inference, fp32 inside
    flex   FlexAttention with a BlockMask built analytically over a 2-D tile ordering of the tokens (CUDA)
Geometry (masks, index tensors, block masks) is cached per (grid, radius, text_len, ...), so a new resolution
costs one cache miss and nothing is rebuilt by hand.

Every backend also takes a `TextRouting`: which TEXT keys each query reads (clause routing, pipelines/routing.py),
on top of the window. Image keys stay as the window says. Image queries fall into a few classes, each reading its own
subset of the text keys; text queries may read a subset of the text keys too. It is compact, (B, N) classes and
(B, C, T) text sets, so it never needs the (L, L) mask that FLUX's L = 16896 would make 285 MB per image.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "dense", "tiled", "cpu", "flex")
DENSE_MAX_TOKENS = 4096  # above this the (L, L) mask costs more than the tiles' gathers
# Where the C kernel beats masked SDPA (measured on a 2-core AVX2 EPYC, 4 heads, D 64/128, r 4-16): it realizes
# about a third of the FLOP bound, and has a fixed cost of ~0.5 ms, so it needs both a sparse mask and some size.
CPU_KERNEL_MIN_TOKENS = 384
CPU_KERNEL_MIN_FLOP_RATIO = 2.5
MASK_BLOCK_PAIRS = 1 << 22  # local_mask: image pairs per pass (32 MB per int64 temporary)
TILE = 8  # tiled backend: query tile side, tokens
FLEX_BLOCK = 128  # FlexAttention's default block; tiles of 8×16 tokens fill one block
# The compiled flex path compiles once per shape (dynamic=False); past dynamo's own recompile limit (8) it would
# run unfused and eager. So it compiles at most this many shapes per process, and a new shape after that runs an
# exact SDPA path (dense masked, or tiled when long) instead of another compile.
FLEX_MAX_SHAPES = 8
_flex_shapes: set[tuple] = set()  # the shapes compiled so far
LANES = 16  # what the C kernel needs D, T and W padded by (keep in sync with PAD in local_attention_cpu.c)


# ----------------------------------------------------------------------------- the rule and its geometry
def allowed(dy, dx, radius: float):
    """CLEAR's window: an image key at offset (dy, dx) from an image query is visible iff dy² + dx² < r²."""
    return dy * dy + dx * dx < radius * radius


def reach(radius: float) -> int:
    """R = the largest |dy| with a visible key (dy² < r²)."""
    return max(0, math.ceil(radius) - 1)


@functools.lru_cache(maxsize=64)
def half_widths(radius: float) -> tuple[int, ...]:
    """w(dy) for dy = -R..R: the visible keys of grid row y+dy are x-w(dy) .. x+w(dy)."""
    out = []
    for dy in range(-reach(radius), reach(radius) + 1):
        w = 0
        while allowed(dy, w + 1, radius):
            w += 1
        out.append(w)
    return tuple(out)


def covers_grid(grid: tuple[int, int], radius: float) -> bool:
    """True when every image pair is visible: local attention is then exactly full attention."""
    return allowed(grid[0] - 1, grid[1] - 1, radius)


@functools.lru_cache(maxsize=256)  # the dispatch asks on every call
def visible_pairs(grid: tuple[int, int], radius: float, text_len: int) -> int:
    """(query, key) pairs the rule keeps: the exact work of local attention, for FLOP ratios."""
    h, w = grid
    n, t = h * w, text_len
    img = sum((h - abs(dy)) * max(0, w - abs(dx))
              for dy, hw in zip(range(-reach(radius), reach(radius) + 1), half_widths(radius))
              for dx in range(-hw, hw + 1) if abs(dy) < h)
    return t * (t + n) + n * t + img


def flop_ratio(grid: tuple[int, int], radius: float, text_len: int) -> float:
    """Full attention's score/value work over local attention's: the speedup bound."""
    length = text_len + grid[0] * grid[1]
    return length * length / visible_pairs(grid, radius, text_len)


@functools.lru_cache(maxsize=8)
def local_mask(grid: tuple[int, int], radius: float, text_len: int, device: str = "cpu") -> torch.Tensor:
    """(L, L) bool, True = attend; L = text_len + H·W. The dense reference; O(L²) memory, one byte per pair.

    The rule is evaluated a block of query rows at a time: over all N² pairs at once its int64 offsets took
    10 GB at a 128² grid (FLUX at 2048²) for a 272 MB mask."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    n, length = h * w, text_len + h * w
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    rows = max(1, MASK_BLOCK_PAIRS // n)
    for a in range(0, n, rows):  # (rows, N) image pairs per pass
        mask[text_len + a:text_len + a + rows, text_len:] = allowed(ys[a:a + rows, None] - ys[None],
                                                                    xs[a:a + rows, None] - xs[None], radius)
    return mask


# ----------------------------------------------------------------------------- routing: the text keys a query reads
@dataclass(frozen=True)
class TextRouting:
    """Which text keys each query reads; image keys are untouched.

    Image query i of batch item b is in class `image_class[b, i]` and reads the text keys `class_text[b, class]`;
    text query j reads the text keys `text_text[b, j]` (None: all of them). Which image keys a query reads does not
    change: the window for an image query, all of them for a text query, so no query ever reads nothing. A batch of
    1 serves every batch item. Made by clause routing (`pipelines/routing.py`) or from a dense mask (`from_dense`).
    """

    image_class: torch.Tensor  # (B, N) int64: each image query's class
    class_text: torch.Tensor  # (B, C, T) bool: the text keys each class reads
    text_text: torch.Tensor | None = None  # (B, T, T) bool: the text keys each text query reads; None = all

    def __post_init__(self):
        cls, ct, tt = self.image_class, self.class_text, self.text_text
        if cls.ndim != 2 or cls.dtype.is_floating_point or cls.dtype.is_complex or cls.dtype == torch.bool:
            raise ValueError(f"image_class must be a (batch, image tokens) integer tensor; got {cls.dtype} "
                             f"{tuple(cls.shape)}")
        if ct.ndim != 3 or ct.dtype != torch.bool or ct.shape[0] != cls.shape[0] or ct.shape[1] < 1:
            raise ValueError(f"class_text must be a (batch {cls.shape[0]}, classes ≥ 1, text tokens) bool tensor; "
                             f"got {ct.dtype} {tuple(ct.shape)}")
        if ct.shape[2] < 1:
            raise ValueError("a text routing needs text tokens: with text_len 0 there is nothing to route")
        if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= ct.shape[1]):
            raise ValueError(f"image_class holds classes outside 0..{ct.shape[1] - 1}")
        if tt is not None and (tt.dtype != torch.bool or tuple(tt.shape) != (ct.shape[0], ct.shape[2], ct.shape[2])):
            raise ValueError(f"text_text must be a (batch, T, T) = {(ct.shape[0], ct.shape[2], ct.shape[2])} bool "
                             f"tensor or None; got {tt.dtype} {tuple(tt.shape)}")

    @property
    def text_len(self) -> int:
        return self.class_text.shape[2]

    @property
    def image_len(self) -> int:
        return self.image_class.shape[1]

    def image_text(self) -> torch.Tensor:
        """(B, N, T) bool: the text keys each image query reads."""
        idx = self.image_class.long()[..., None].expand(-1, -1, self.text_len)
        return torch.gather(self.class_text, 1, idx)

    def text_rows(self) -> torch.Tensor | None:
        """(B, 1, T, L) bool mask of the text queries' rows (every image key), or None when they read everything."""
        if self.text_text is None:
            return None
        b, t, n = self.class_text.shape[0], self.text_len, self.image_len
        return torch.cat([self.text_text, self.text_text.new_ones(b, t, n)], dim=2)[:, None]

    def dense(self, image_image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, L, L) bool, True = attend, L = T + N: this routing with `image_image` ((N, N) bool, default all
        True) as the image → image part; text → image is all True. O(L²): for references and short sequences."""
        b, t, n = self.class_text.shape[0], self.text_len, self.image_len
        if image_image is not None and tuple(image_image.shape) != (n, n):
            raise ValueError(f"image_image must be ({n}, {n}); got {tuple(image_image.shape)}")
        mask = torch.ones(b, 1, t + n, t + n, dtype=torch.bool, device=self.class_text.device)
        if self.text_text is not None:
            mask[:, 0, :t, :t] = self.text_text
        mask[:, 0, t:, :t] = self.image_text()
        if image_image is not None:
            mask[:, 0, t:, t:] = image_image.to(mask.device)
        return mask

    @classmethod
    def from_dense(cls, mask: torch.Tensor, text_len: int) -> "TextRouting":
        """The routing a dense bool mask (True = attend) makes: (B|1, 1|heads, L, L), or (L, L), or (B, L, L),
        text first. Its image → image and text → image parts must be all True, and every head must agree;
        anything else is not a routing of text keys (ValueError)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"a text routing is read from a boolean mask (True = attend); got {got}")
        if mask.ndim not in (2, 3, 4) or mask.shape[-1] != mask.shape[-2]:
            raise ValueError(f"a text routing is read from a (batch, 1 or heads, L, L) mask; got {tuple(mask.shape)}")
        m = mask.reshape((-1, 1) + tuple(mask.shape[-2:])) if mask.ndim < 4 else mask  # (B, heads, L, L)
        length, t = m.shape[-1], int(text_len)
        if not 0 < t < length:
            raise ValueError(f"text_len {text_len} must leave text and image tokens in a mask of {length}: with "
                             "no text there is nothing to route")
        if m.shape[1] > 1:
            if not bool((m == m[:, :1]).all()):
                raise ValueError("the mask differs between heads; a text routing is one per query")
            m = m[:, :1]
        m = m[:, 0]  # (B, L, L)
        if not bool(m[:, :, t:].all()):
            raise ValueError("the mask hides image keys; a text routing only chooses which text keys each query "
                             "reads (image → image and text → image must be all True)")
        text_text = None if bool(m[:, :t, :t].all()) else m[:, :t, :t].clone()
        rows = m[:, t:, :t]  # (B, N, T)
        per = [torch.unique(r, dim=0, return_inverse=True) for r in rows]
        classes = max(c.shape[0] for c, _ in per)
        class_text = rows.new_ones(m.shape[0], classes, t)
        for i, (c, _) in enumerate(per):
            class_text[i, :c.shape[0]] = c
        image_class = torch.stack([inv.reshape(-1) for _, inv in per]).long()
        return cls(image_class, class_text, text_text)

    def for_batch(self, batch: int, device) -> "TextRouting":
        """This routing for `batch` items on `device` (a batch of 1 repeated)."""
        if self.class_text.shape[0] not in (1, batch):
            raise ValueError(f"the routing is for a batch of {self.class_text.shape[0]}, the attention's is {batch}")
        out = self
        if self.class_text.shape[0] != batch:
            out = TextRouting(self.image_class.expand(batch, -1), self.class_text.expand(batch, -1, -1),
                              None if self.text_text is None else self.text_text.expand(batch, -1, -1))
        if out.class_text.device != torch.device(device):
            out = TextRouting(out.image_class.to(device), out.class_text.to(device),
                              None if out.text_text is None else out.text_text.to(device))
        return out


def _check(q, k, v, grid, radius, text_len) -> tuple[int, int]:
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (batch, heads, tokens, head_dim) shape; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (rows, cols) of image tokens, both ≥ 1; got {grid}")
    h, w = int(grid[0]), int(grid[1])
    if text_len < 0 or q.shape[2] != text_len + h * w:
        raise ValueError(f"sequence length {q.shape[2]} != text_len {text_len} + {h}×{w} image tokens; "
                         f"pass the grid and text length of this joint sequence")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 tokens; got {radius}")
    return h, w


def _check_routing(routing: TextRouting | None, q, grid, text_len) -> TextRouting | None:
    if routing is None:
        return None
    if not isinstance(routing, TextRouting):
        raise ValueError(f"routing must be a TextRouting or None; got {type(routing).__name__}")
    if text_len == 0:
        raise ValueError("a text routing needs text tokens: with text_len 0 there is nothing to route")
    if routing.text_len != text_len or routing.image_len != grid[0] * grid[1]:
        raise ValueError(f"the routing is for {routing.text_len} text and {routing.image_len} image tokens; this "
                         f"sequence has {text_len} and {grid[0]}×{grid[1]}")
    return routing.for_batch(q.shape[0], q.device)


# ----------------------------------------------------------------------------- backend: dense (reference)
def dense_attention(q, k, v, *, grid, radius, text_len=0, scale=None, routing: TextRouting | None = None):
    """Masked SDPA with the full (L, L) mask (with a routing, (B, 1, L, L)): the oracle the other backends are
    tested against."""
    mask = local_mask(tuple(grid), float(radius), text_len, str(q.device))
    if routing is not None:
        mask = routing.dense(image_image=mask[text_len:, text_len:])  # the window AND the routing
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# ----------------------------------------------------------------------------- backend: tiled (pure torch)
@functools.lru_cache(maxsize=16)
def _tile_mask(grid, radius, text_len, tile, device) -> torch.Tensor:
    """(tiles, tile², T + halo²) bool for the tiled backend; halo = tile + 2R keys per side."""
    h, w = grid
    r, t = reach(radius), tile
    halo = t + 2 * r
    nty, ntx = -(-h // t), -(-w // t)
    qy, qx = (a.flatten() for a in torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij"))
    ky, kx = (a.flatten() - r for a in torch.meshgrid(torch.arange(halo), torch.arange(halo), indexing="ij"))
    near = allowed(ky[None] - qy[:, None], kx[None] - qx[:, None], radius)  # (t², halo²), same for every tile
    oy = (torch.arange(nty) * t).repeat_interleave(ntx)[:, None]  # tile origins, (tiles, 1)
    ox = (torch.arange(ntx) * t).repeat(nty)[:, None]
    key_in = ((oy + ky >= 0) & (oy + ky < h) & (ox + kx >= 0) & (ox + kx < w))[:, None]  # (tiles, 1, halo²)
    query_pad = ((oy + qy >= h) | (ox + qx >= w))[:, :, None]  # (tiles, t², 1): outputs dropped later
    img = (near[None] & key_in) | query_pad  # padded queries see everything, so no row is empty (no NaN)
    txt = torch.ones(img.shape[0], t * t, text_len, dtype=torch.bool)
    return torch.cat([txt, img], dim=2).to(device)


def tiled_attention(q, k, v, *, grid, radius, text_len=0, scale=None, tile: int = TILE,
                    routing: TextRouting | None = None):
    """Image queries in tile×tile blocks; each block attends to its halo plus the text in one batched SDPA.
    A routing replaces the tile mask's text columns with each query's own (one mask per batch item)."""
    b, heads, length, d = q.shape
    h, w = grid
    r, t, n_txt = reach(radius), tile, text_len
    nty, ntx = -(-h // t), -(-w // t)
    halo = t + 2 * r
    mask = _tile_mask((h, w), float(radius), n_txt, t, str(q.device))

    def image(x):  # (B, heads, L, D) → (B, heads, H, W, D)
        return x[:, :, n_txt:].reshape(b, heads, h, w, d)

    qi = F.pad(image(q), (0, 0, 0, ntx * t - w, 0, nty * t - h))
    qi = qi.reshape(b, heads, nty, t, ntx, t, d).permute(0, 1, 2, 4, 3, 5, 6)  # (B, heads, ty, tx, t, t, D)
    qi = qi.reshape(b * heads, nty * ntx, t * t, d)

    def halos(x):  # (B·heads, tiles, T + halo², D): text first, then the halo in raster order
        xi = F.pad(image(x), (0, 0, r, ntx * t - w + r, r, nty * t - h + r))
        xi = xi.unfold(2, halo, t).unfold(3, halo, t)  # (B, heads, ty, tx, D, halo, halo)
        xi = xi.permute(0, 1, 2, 3, 5, 6, 4).reshape(b * heads, nty * ntx, halo * halo, d)
        txt = x[:, :, :n_txt].reshape(b * heads, 1, n_txt, d).expand(-1, nty * ntx, -1, -1)
        return torch.cat([txt, xi], dim=2)

    if routing is None:
        out = F.scaled_dot_product_attention(qi, halos(k), halos(v), attn_mask=mask, scale=scale)
    else:  # (B, heads, tiles, t², ·): the mask varies per batch item, not per head
        reads = routing.image_text()  # (B, N, T)
        txt = reads.new_ones(b, nty * t, ntx * t, n_txt)  # padded queries read all: no NaN
        txt[:, :h, :w] = reads.reshape(b, h, w, n_txt)
        txt = txt.reshape(b, nty, t, ntx, t, n_txt).permute(0, 1, 3, 2, 4, 5).reshape(b, 1, nty * ntx, t * t, n_txt)
        mask = torch.cat([txt, mask[None, None, :, :, n_txt:].expand(b, -1, -1, -1, -1)], dim=-1)
        split = lambda x: x.reshape(b, heads, *x.shape[1:])  # noqa: E731
        out = F.scaled_dot_product_attention(split(qi), split(halos(k)), split(halos(v)), attn_mask=mask,
                                             scale=scale)
    out = out.reshape(b, heads, nty, ntx, t, t, d).permute(0, 1, 2, 4, 3, 5, 6)
    out = out.reshape(b, heads, nty * t, ntx * t, d)[:, :, :h, :w].reshape(b, heads, h * w, d)
    if n_txt == 0:
        return out
    text_rows = None if routing is None else routing.text_rows()  # text reads every image key
    out_txt = F.scaled_dot_product_attention(q[:, :, :n_txt], k, v, attn_mask=text_rows, scale=scale)
    return torch.cat([out_txt, out], dim=2)


# ----------------------------------------------------------------------------- backend: cpu (C kernel)
def _cache_dir() -> Path:
    root = os.environ.get("DITFLOW_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "ditflow")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: a cached build is reused only on the same kind of CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


@functools.lru_cache(maxsize=8)
def cpu_kernel(defines: tuple[str, ...] = ()):
    """The compiled kernel as a ctypes function, or None (no compiler, build failed, DITFLOW_NO_CKERNEL=1).

    `defines` (for example `("-DVL=4",)`) overrides the vector width the kernel picks for this CPU.

    Built once per source/compiler/CPU into ~/.cache/ditflow/kernels with plain gcc (about a second; a torch
    C++ extension would take a minute to compile its headers), written atomically so parallel first uses agree.
    Flag sets the compiler rejects (no OpenMP, no -march=native) leave a `.failed` note there and are skipped
    after; delete the folder to retry them.
    """
    if os.environ.get("DITFLOW_NO_CKERNEL"):
        return None
    src = Path(__file__).with_name("local_attention_cpu.c")
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None or not src.exists():
        warnings.warn("local attention: no C compiler found; using the slower pure-torch tiled path", stacklevel=2)
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    base = ["-O3", "-fPIC", "-shared", "-pthread", "-std=gnu11"]
    errors = []
    ladder = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])  # x86, other, any
    for extra in [["-fopenmp", *x] for x in ladder] + list(ladder):  # OpenMP: torch's own thread pool
        flags = base + extra + list(defines)
        key = hashlib.sha256(src.read_bytes() + " ".join(flags + [version, _cpu_signature()]).encode())
        lib_path = _cache_dir() / f"local_attention_{key.hexdigest()[:16]}.so"
        failed = lib_path.with_suffix(".failed")  # a rung this compiler cannot build is not retried per process
        try:
            if failed.exists():
                errors.append([failed.read_text()])
                continue
            if not lib_path.exists():
                lib_path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
                os.close(fd)
                res = subprocess.run([cc, *flags, str(src), "-o", tmp, "-lm"], capture_output=True, text=True,
                                     timeout=300)
                if res.returncode != 0:
                    os.unlink(tmp)
                    errors.append((res.stderr.strip().splitlines() or ["?"])[-1:])
                    failed.write_text(errors[-1][0])
                    continue
                os.replace(tmp, lib_path)
            fn = ctypes.CDLL(str(lib_path)).local_attention_f32
        except (OSError, subprocess.SubprocessError) as e:
            errors.append([str(e)])
            continue
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        fn.argtypes = [p] * 9 + [i64] * 10 + [ctypes.c_float, i64, ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    warnings.warn(f"local attention: could not build the C kernel ({errors[-1][0] if errors else '?'}); "
                  "using the slower pure-torch tiled path", stacklevel=2)
    return None


@functools.lru_cache(maxsize=64)
def _half_widths_i32(radius: float) -> torch.Tensor:
    return torch.tensor(half_widths(radius), dtype=torch.int32)


def cpu_attention(q, k, v, *, grid, radius, text_len=0, scale=None, pair: bool = True,
                  routing: TextRouting | None = None):
    """The C kernel for image queries, one SDPA call for the text queries. No autograd.

    `pair=False` scores one query per pass instead of two adjacent ones (a benchmark lever only). A routing gives
    the kernel each image query's class and each class's text keys as lane masks (int32 -1 = read, 0 = not): a key
    a query's class does not read gets probability exactly 0; the text queries' SDPA gets the text_text rows.
    """
    fn = cpu_kernel()
    b, heads, length, d = q.shape
    if fn is None or d > 256:
        return tiled_attention(q, k, v, grid=grid, radius=radius, text_len=text_len, scale=scale, routing=routing)
    h, w = grid
    n_txt, bh, dp = text_len, b * heads, -(-d // LANES) * LANES  # head dim padded with zeros to 16 lanes
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    half = _half_widths_i32(float(radius))
    with torch.no_grad():
        def f32(x):  # the caller's tensor itself when it already is fp32 with unit stride over a padded D
            x = x.detach()
            if x.dtype == torch.float32 and d == dp and x.stride(-1) == 1:
                return x
            return F.pad(x.to(torch.float32), (0, dp - d)) if dp > d else x.to(torch.float32).contiguous()

        q32, v32 = f32(q), f32(v)
        out = torch.empty(b, heads, length, dp, dtype=torch.float32)
        # the one copy the kernel needs: keys with each grid row transposed (16 keys = 1 load), zero-padded
        k_img = k.detach()[:, :, n_txt:]
        k_img = F.pad(k_img, (0, dp - d)) if dp > d else k_img
        kt = torch.empty(bh, h, dp, w + LANES, dtype=torch.float32)
        kt[..., :w].copy_(k_img.reshape(bh, h, w, dp).transpose(-1, -2))
        kt[..., w:] = 0
        ktxt = F.pad(f32(k[:, :, :n_txt]).reshape(bh, n_txt, dp).transpose(-1, -2), (0, LANES)).contiguous()
        strides = torch.tensor([*q32.stride()[:3], *v32.stride()[:3], *out.stride()[:3]], dtype=torch.int64)
        classes, cls_ptr, tmask_ptr = 0, None, None
        if routing is not None:
            cls = routing.image_class.to(torch.int32).contiguous()  # (B, N)
            classes = routing.class_text.shape[1]
            tmask = torch.zeros(b, classes, n_txt + LANES, dtype=torch.int32)  # (B, C, Tp); padding lanes unread
            tmask[..., :n_txt] = -routing.class_text.to(torch.int32)
            cls_ptr, tmask_ptr = cls.data_ptr(), tmask.data_ptr()
        rc = fn(q32.data_ptr(), v32.data_ptr(), out.data_ptr(), strides.data_ptr(), kt.data_ptr(), ktxt.data_ptr(),
                half.data_ptr(), cls_ptr, tmask_ptr, b, heads, h, w, dp, n_txt, n_txt + LANES, w + LANES,
                reach(radius), classes, scale, int(pair), torch.get_num_threads())
        if rc != 0:
            raise MemoryError("local attention C kernel could not allocate its per-thread buffers")
        if n_txt:  # text queries see every key (a routing may hide text keys): one SDPA call, written in place
            text_rows = None if routing is None else routing.text_rows()
            out[:, :, :n_txt, :d] = F.scaled_dot_product_attention(q[:, :, :n_txt], k, v, attn_mask=text_rows,
                                                                   scale=scale)
        out = out[..., :d] if dp > d else out
        return out.to(q.dtype)


# ----------------------------------------------------------------------------- backend: flex (GPU)
def tile_order(grid: tuple[int, int], tile: tuple[int, int]) -> torch.Tensor:
    """Permutation of the H·W image tokens into tile-major order: tiles in raster order, tokens raster inside.

    Row-major order makes one block of 128 tokens a 1×128 strip whose window spans 2R+1 rows of blocks; a
    2-D tile keeps each block compact, so far fewer block pairs touch the circle.
    """
    h, w = grid
    th, tw = tile
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    key = ((ys // th) * (-(-w // tw)) + xs // tw) * (th * tw) + (ys % th) * tw + xs % tw
    return torch.argsort(key.flatten(), stable=True)


def _flex_tile(block: int) -> tuple[int, int]:
    th = 2 ** (int(math.log2(block)) // 2)
    return th, block // th


@dataclass(frozen=True)
class _FlexBlocks:
    """The block structure of one geometry: BlockMask's index tensors, the permutation, and each position's token."""

    kv: tuple  # (kv_num_blocks, kv_indices): partial blocks
    full: tuple  # (full_kv_num_blocks, full_kv_indices)
    perm: torch.Tensor  # new position → old position
    ys: torch.Tensor  # (L,) grid row of each new position (0 for text)
    xs: torch.Tensor
    is_text: torch.Tensor  # (L,) bool


@functools.lru_cache(maxsize=16)
def _flex_blocks(grid, radius, text_len, block, device, order: str = "tile", routed: int = 0) -> _FlexBlocks:
    """Block pairs of the joint sequence reordered as [image tokens in tile order | text]: empty when the blocks'
    boxes are ≥ r apart, full when their farthest corners are < r apart, partial otherwise. `routed` 1: image
    queries read only some text keys, so a block of image queries over a block of text keys is partial; 2: text
    queries too, so every block pair over text keys is."""
    h, w = grid
    n_img, length = h * w, text_len + h * w
    if order not in ("tile", "row"):
        raise ValueError(f"token order must be 'tile' or 'row'; got {order!r}")
    perm_img = tile_order(grid, _flex_tile(block) if order == "tile" else (1, w))
    perm = torch.cat([perm_img + text_len, torch.arange(text_len)])  # new position → old position
    ys = torch.cat([perm_img // w, torch.zeros(text_len, dtype=torch.long)])
    xs = torch.cat([perm_img % w, torch.zeros(text_len, dtype=torch.long)])
    is_text = torch.arange(length) >= n_img
    nb = -(-length // block)
    pad = nb * block - length

    def per_block(x, fill):  # (nb, block)
        return torch.cat([x, x.new_full((pad,), fill)]).reshape(nb, block)

    img_tok = per_block(~is_text, False)
    has_img, has_text = img_tok.any(1), per_block(is_text, False).any(1)
    big = 1 << 30
    y0 = torch.where(img_tok, per_block(ys, 0), big).amin(1)
    y1 = torch.where(img_tok, per_block(ys, 0), -big).amax(1)
    x0 = torch.where(img_tok, per_block(xs, 0), big).amin(1)
    x1 = torch.where(img_tok, per_block(xs, 0), -big).amax(1)
    gap_y = (torch.maximum(y0[:, None] - y1[None], y0[None] - y1[:, None])).clamp(min=0)  # (q block, k block)
    gap_x = (torch.maximum(x0[:, None] - x1[None], x0[None] - x1[:, None])).clamp(min=0)
    span_y = torch.maximum(y1[:, None] - y0[None], y1[None] - y0[:, None])
    span_x = torch.maximum(x1[:, None] - x0[None], x1[None] - x0[:, None])
    both_img = has_img[:, None] & has_img[None]
    any_pair = has_text[:, None] | has_text[None] | (both_img & allowed(gap_y, gap_x, radius))
    all_pairs = ~has_img[:, None] | ~has_img[None] | allowed(span_y, span_x, radius)
    if routed:  # the routing hides some text keys from image queries (1), and from text queries (2)
        all_pairs = all_pairs & ~(has_text[None] & (has_img[:, None] | (has_text[:, None] & (routed > 1))))
    full = any_pair & all_pairs
    partial = any_pair & ~all_pairs

    def indices(sel):  # (1, 1, nb) counts and (1, 1, nb, nb) column indices, selected first
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)
        return sel.sum(1).to(torch.int32)[None, None].to(device), order.to(torch.int32)[None, None].to(device)

    return _FlexBlocks(indices(partial), indices(full), perm.to(device), ys.to(device), xs.to(device),
                       is_text.to(device))


def _window_mod(g: _FlexBlocks, radius: float):
    """mask_mod of the window alone: text on either side, or dy² + dx² < r²."""
    ys, xs, txt, r2 = g.ys, g.xs, g.is_text, float(radius) * float(radius)

    def mask_mod(b, hd, q_idx, kv_idx):
        dy, dx = ys[q_idx] - ys[kv_idx], xs[q_idx] - xs[kv_idx]
        return txt[q_idx] | txt[kv_idx] | (dy * dy + dx * dx < r2)

    return mask_mod


@functools.lru_cache(maxsize=16)
def flex_block_mask(grid, radius, text_len, block, device, order: str = "tile"):
    """(BlockMask, permutation) for the joint sequence reordered as [image tokens in tile order | text].

    `order="row"` keeps image tokens row-major instead (the baseline the tile order is measured against).

    Built analytically from each block's bounding box (`_flex_blocks`); mask_mod decides partial blocks exactly.
    """
    from torch.nn.attention.flex_attention import BlockMask

    g = _flex_blocks(grid, radius, text_len, block, device, order)
    length = text_len + grid[0] * grid[1]
    bm = BlockMask.from_kv_blocks(*g.kv, *g.full, BLOCK_SIZE=block, mask_mod=_window_mod(g, radius),
                                  seq_lengths=(length, length))
    return bm, g.perm


@functools.lru_cache(maxsize=16)
def _flex_routed_blocks(grid, radius, text_len, block, device, order, routed):
    """The routed block structure as a BlockMask whose mask_mod each call replaces (its transposes cost ~10 ms)."""
    from torch.nn.attention.flex_attention import BlockMask

    g = _flex_blocks(grid, radius, text_len, block, device, order, routed)
    length = text_len + grid[0] * grid[1]
    bm = BlockMask.from_kv_blocks(*g.kv, *g.full, BLOCK_SIZE=block, mask_mod=_window_mod(g, radius),
                                  seq_lengths=(length, length))
    return g, bm


_ROUTED_LAST: list = []  # [(routing, key, result)]: every layer of one forward call gets the same routing


def flex_routed_block_mask(grid, radius, text_len, block, device, routing: TextRouting, order: str = "tile"):
    """`flex_block_mask` with a routing: the blocks come from the cache, the mask_mod reads the routing's class
    table. Its class count is padded to a power of two, so a compiled kernel sees few shapes as captions change.
    The last routing's mask is kept, since every layer of a forward call asks for it."""
    key = (tuple(grid), float(radius), text_len, block, str(device), order)
    if _ROUTED_LAST and _ROUTED_LAST[0][0] is routing and _ROUTED_LAST[0][1] == key:
        return _ROUTED_LAST[0][2]
    g, structure = _flex_routed_blocks(*key, 1 if routing.text_text is None else 2)
    window = _window_mod(g, radius)
    txt = g.is_text
    text_idx = torch.where(txt, g.perm, 0)  # new position → text index (0 for image tokens)
    image_idx = torch.where(txt, 0, g.perm - text_len)  # new position → image index (0 for text tokens)
    cls = routing.image_class[:, image_idx]  # (B, L): each new position's class (text positions: unused)
    ct = routing.class_text
    classes = 1 << (ct.shape[1] - 1).bit_length()
    ct = torch.cat([ct, ct.new_zeros(ct.shape[0], classes - ct.shape[1], ct.shape[2])], dim=1)  # (B, C', T)
    tt = routing.text_text

    def mask_mod(b, hd, q_idx, kv_idx):
        reads = ct[b, cls[b, q_idx], text_idx[kv_idx]]  # the image query's class reads this text key
        reads = txt[q_idx] | reads if tt is None else torch.where(txt[q_idx], tt[b, text_idx[q_idx],
                                                                                 text_idx[kv_idx]], reads)
        return window(b, hd, q_idx, kv_idx) & (~txt[kv_idx] | reads)

    bm = copy.copy(structure)
    bm.mask_mod = mask_mod
    _ROUTED_LAST[:] = [(routing, key, (bm, g.perm))]
    return bm, g.perm


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_local(q, k, v, *, grid, radius, text_len=0, scale=None, block: int = FLEX_BLOCK,
                         compiled: bool | None = None, order: str = "tile", routing: TextRouting | None = None):
    """FlexAttention over the tile-ordered sequence; compiled on CUDA, eager elsewhere (tests only)."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = q.is_cuda if compiled is None else compiled
    if compiled:
        classes = None if routing is None else tuple(routing.class_text.shape)
        shape = (tuple(q.shape), q.dtype, str(q.device), tuple(grid), float(radius), text_len, scale, block, order,
                 classes)
        if shape not in _flex_shapes and len(_flex_shapes) >= FLEX_MAX_SHAPES:
            warnings.warn(f"local attention: {FLEX_MAX_SHAPES} shapes compiled for FlexAttention already; new "
                          f"shapes run masked SDPA instead of recompiling", stacklevel=2)  # shown once per place
            fallback = dense_attention if q.shape[2] <= DENSE_MAX_TOKENS else tiled_attention
            return fallback(q, k, v, grid=grid, radius=radius, text_len=text_len, scale=scale, routing=routing)
        _flex_shapes.add(shape)
    if routing is None:
        bm, perm = flex_block_mask(tuple(grid), float(radius), text_len, block, str(q.device), order)
    else:
        bm, perm = flex_routed_block_mask(tuple(grid), float(radius), text_len, block, str(q.device), routing,
                                          order)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(q[:, :, perm], k[:, :, perm], v[:, :, perm], block_mask=bm, scale=scale)
    return out[:, :, torch.argsort(perm)]


# ----------------------------------------------------------------------------- dispatch
IMPLS = {"dense": dense_attention, "tiled": tiled_attention, "cpu": cpu_attention, "flex": flex_attention_local}


def choose_backend(q: torch.Tensor, grid: tuple[int, int], radius: float, text_len: int, needs_grad: bool) -> str:
    if covers_grid(grid, radius):
        return "sdpa"
    if q.is_cuda:
        return "flex"
    if (not needs_grad and q.shape[2] > CPU_KERNEL_MIN_TOKENS
            and flop_ratio(grid, radius, text_len) >= CPU_KERNEL_MIN_FLOP_RATIO and cpu_kernel() is not None):
        return "cpu"
    return "dense" if q.shape[2] <= DENSE_MAX_TOKENS else "tiled"


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, grid: tuple[int, int], radius: float,
                    text_len: int = 0, scale: float | None = None, backend: str | None = None,
                    routing: TextRouting | None = None) -> torch.Tensor:
    """CLEAR local attention. q, k, v: (B, heads, T + H·W, head_dim), text first; returns the same shape.

    Args:
        grid: (H, W) of the image tokens, row-major after the text.
        radius: window radius r in tokens; an image query sees image keys with dy² + dx² < r².
        text_len: T, the number of text tokens in front.
        scale: softmax scale, as in `F.scaled_dot_product_attention` (default 1/√head_dim).
        backend: one of BACKENDS, or None to pick the fastest exact one for the device and autograd state.
        routing: which text keys each query reads (`TextRouting`, batch 1 or B), on top of the window; needs
            text_len > 0. Every backend is exact with it.
    """
    grid = _check(q, k, v, grid, radius, text_len)
    routing = _check_routing(routing, q, grid, text_len)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    backend = backend or choose_backend(q, grid, radius, text_len, needs_grad)
    if backend == "sdpa":
        mask = None if routing is None else routing.dense()  # the circle covers the grid: only the routing masks
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if backend not in IMPLS:
        raise ValueError(f"unknown local-attention backend {backend!r}; choose from {BACKENDS}")
    if backend == "cpu" and needs_grad:
        raise ValueError("the cpu local-attention backend has no backward; use backend='tiled' or 'dense' to train")
    if routing is None:
        return IMPLS[backend](q, k, v, grid=grid, radius=radius, text_len=text_len, scale=scale)
    return IMPLS[backend](q, k, v, grid=grid, radius=radius, text_len=text_len, scale=scale, routing=routing)
