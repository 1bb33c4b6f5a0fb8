"""FlashAttention-4 and cuDNN as bench peers: named in the grid, made by make_case, and skipped
with a reason where they cannot run (here: no CUDA device for torch)."""
import pytest

from attn_numba.bench import cases, grid, native_peers

pytest.importorskip("torch")


@pytest.mark.parametrize("name,cls", [("fa4", native_peers.FA4Case),
                                      ("cudnn", native_peers.CudnnCase)])
def test_peer_cases_say_why_they_cannot_run(name, cls):
    assert name in grid.PEERS and name in grid.TENSOR_CORE
    cfg = grid.Config(1, 24, 4, 2, 16, 8, 8, 1)
    case = cases.make_case(name, cfg)
    assert isinstance(case, cls) and case.kind == "peer"
    why = case.unsupported()
    assert isinstance(why, str) and why
