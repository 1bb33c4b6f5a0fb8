"""flash (v3)'s configuration: tile shapes, their defaults per head size and the derived
constants of a tile shape; :class:`Config` is one compiled specialisation."""
import dataclasses

from .config import with_overrides

class Tiles(tuple):
    """Tile configuration ``(BM, BN, NT, TM, TN, DK, BK)``; see the module docstring.

    BM score rows (queries x stacked heads) and BN keys per tile, NT threads, a TM x TN
    register patch of S per thread, DK head-dim columns per Q/K staging chunk, BK keys per
    V staging chunk. The PV phase reuses the S phase's thread grid (RG = BM/TM row groups by
    CG = BN/TN column groups), so each thread owns TM rows by ``TD = D / CG`` output columns.
    """

    __slots__ = ()
    names = ("BM", "BN", "NT", "TM", "TN", "DK", "BK")

    def __new__(cls, BM, BN, NT, TM, TN, DK, BK):
        return super().__new__(cls, (BM, BN, NT, TM, TN, DK, BK))

    def asdict(self):
        return dict(zip(self.names, self))

    def __repr__(self):
        return "Tiles(" + ", ".join(f"{n}={v}" for n, v in zip(self.names, self)) + ")"


#: GPU defaults per padded head size: (tiles, blocks per SM the register allocator must
#: allow through launch bounds, 0 = no bound); how they were chosen: notes/kernel_layer.md
#: and notes/kernels_v2_v3.md.
GPU_CONFIG = {
    64: (Tiles(BM=64, BN=64, NT=128, TM=8, TN=4, DK=16, BK=16), 0),
    128: (Tiles(BM=64, BN=64, NT=128, TM=8, TN=4, DK=16, BK=16), 0),
    256: (Tiles(BM=64, BN=64, NT=256, TM=4, TN=4, DK=16, BK=8), 0),
}
GPU_TILES = {d: t for d, (t, _) in GPU_CONFIG.items()}
#: tiny tiles for the simulator (one Python thread per CUDA thread)
SIM_TILES = Tiles(BM=8, BN=8, NT=16, TM=2, TN=2, DK=8, BK=4)
#: width of the vector shared loads (floats), shared-array row padding and alignment (bytes)
VEC, PAD, ALIGN = 4, 4, 16
#: inner-loop unrolling by hand (Numba has no unroll pragma): each iteration of the S loop
#: does about this many FMAs (several head-dim steps), each iteration of the PV loop this many
UNROLL_S_FMAS, UNROLL_PV_FMAS = 64, 128
#: static shared memory limit per block (bytes)
MAX_SHARED = 48 * 1024
#: most query heads stacked into one block (they must share a KV head)
MAX_STACKED_HEADS = 8


def derived(D, tiles):
    """Check a configuration for head dim ``D`` and return the derived constants."""
    BM, BN, NT, TM, TN, DK, BK = tiles
    RG, CG = BM // TM, BN // TN
    TD = D // CG if CG else 0
    VN, VD = min(VEC, TN), min(VEC, TD)
    errs = []
    if BM % TM or BN % TN or RG * CG != NT:
        errs.append("need BM % TM == BN % TN == 0 and (BM/TM)*(BN/TN) == NT")
    if TD == 0 or D % CG or TD % VD or TN % VN:
        errs.append(f"head dim {D} must be a multiple of BN/TN = {CG}, with TD = D*TN/BN and TN "
                    f"multiples of {VEC} (or below it)")
    if (NT % BM and BM % NT) or (NT % BN and BN % NT) or NT % BK:
        errs.append("need NT | BM or BM | NT, NT | BN or BN | NT, and BK | NT")
    # staging: TPR threads per row, each loading E columns (strided by TPR) of PASSES rows
    tq, tk, tv = max(1, NT // BM), max(1, NT // BN), NT // BK if BK else 1
    if DK % tq or DK % tk or D % max(tv, 1) or D % DK:
        errs.append("need DK divisible by NT/BM and NT/BN, D by NT/BK and by DK")
    if BN % BK:
        errs.append("need BN % BK == 0")
    if errs:
        raise ValueError(f"bad tiles {tiles!r} for D={D}: " + "; ".join(errs))
    us, upv = 1, 1   # hand unrolling: powers of two dividing DK (BK) near the FMA targets
    while 2 * us * TM * TN <= UNROLL_S_FMAS and DK % (2 * us) == 0:
        us *= 2
    while 2 * upv * TM * TD <= UNROLL_PV_FMAS and BK % (2 * upv) == 0 and upv < 2:
        upv *= 2
    return dict(RG=RG, CG=CG, TD=TD, VN=VN, VD=VD, NDC=D // DK, NKC=BN // BK,
                UNROLL_S=us, UNROLL_PV=upv,
                Q_TPR=tq, Q_E=DK // tq, Q_PASS=max(1, BM // NT), Q_RSTEP=NT // tq,
                K_TPR=tk, K_E=DK // tk, K_PASS=max(1, BN // NT), K_RSTEP=NT // tk,
                V_TPR=tv, V_E=D // tv)


def shared_bytes(D, tiles):
    """Static shared memory of one block, in bytes."""
    BM, BN, NT, TM, TN, DK, BK = tiles
    d = derived(D, tiles)
    xw = -(-max(DK * (BM + PAD) + DK * (BN + PAD), BK * D) // 16) * 16
    return 4 * (2 * xw + BN * (BM + PAD) + BM * d["CG"])


def padded_head_size(head_size, on_simulator=False):
    """The compiled head dim that runs ``head_size``: 64, 128 or 256 on a GPU (other sizes
    are zero-padded up to the next one), a multiple of 16 on the simulator."""
    if on_simulator:
        return max(16, -(-head_size // 16) * 16)
    return 64 if head_size <= 64 else 128 if head_size <= 128 else 256


def tiles_for(head_size, on_simulator):
    """Default tiles for a head size."""
    if on_simulator:
        return SIM_TILES
    return GPU_TILES[padded_head_size(head_size)]


def stacked_heads(group_size, tiles):
    """Query heads stacked per block: the largest divisor of the GQA group size that is at
    most MAX_STACKED_HEADS, divides BM, divides TM or is a multiple of it, and leaves at
    least BM/8 queries per block."""
    BM, TM = tiles[0], tiles[3]
    best = 1
    for g in range(1, min(group_size, MAX_STACKED_HEADS) + 1):
        if (group_size % g == 0 and BM % g == 0 and (TM % g == 0 or g % TM == 0)
                and BM // g >= max(1, BM // 8)):
            best = g
    return best


@dataclasses.dataclass(frozen=True)
class Config:
    """One flash specialisation (:mod:`attn_numba.kernels.config` names the fields)."""

    #: the compiled (padded) head size: :func:`padded_head_size`
    head_size: int
    tiles: Tiles = SIM_TILES
    #: query heads of one GQA group stacked as extra rows of a block (:func:`stacked_heads`)
    heads_per_block: int = 1
    #: blocks per SM the launch bounds ask the register allocator for (0: no bound)
    min_blocks: int = 0
    #: the call's head size is ``head_size``: no column needs bounds checks or zero fill
    exact: bool = True
    #: built for the simulator (no 16-byte alignment of the shared arrays)
    sim: bool = False

    @property
    def block_m(self):
        return self.tiles[0]

    @property
    def block_n(self):
        return self.tiles[1]

    @property
    def threads(self):
        return self.tiles[2]

    @property
    def positions(self):
        """Query positions of a block."""
        return self.block_m // self.heads_per_block


def config_for(problem, **overrides):
    """The default configuration for ``problem`` (``overrides``: Config fields; the stacked
    heads follow overridden tiles unless given, and the tiles' launch bound unless given)."""
    sim = bool(problem.on_simulator)
    D = padded_head_size(problem.head_size, sim)
    tiles, mb = (SIM_TILES, 0) if sim else GPU_CONFIG[D]
    if overrides.get("tiles") is not None:
        tiles, mb = Tiles(*overrides["tiles"]), 0
        overrides = dict(overrides, tiles=tiles)
    cfg = with_overrides(Config(D, tiles, stacked_heads(problem.group_size, tiles),
                                0 if sim else mb, problem.head_size == D, sim), overrides)
    if overrides.get("heads_per_block") is None:
        cfg = dataclasses.replace(cfg, heads_per_block=stacked_heads(problem.group_size,
                                                                     cfg.tiles))
    if sim:
        cfg = dataclasses.replace(cfg, min_blocks=0)
    return cfg
