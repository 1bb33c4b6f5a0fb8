"""TMA tensor maps (``CUtensorMap``) of the kernels' arrays, encoded on the host and kept in
global memory, where the kernels read them by address (a uint64 argument; Numba kernels
cannot declare the ``__grid_constant__`` parameter CUDA C++ would use).

An array ``(rows, heads, D)`` (C-contiguous, 2-byte elements: fp16 or bf16 bits) is a rank-3
tensor for TMA, innermost first: dims ``(D, heads, rows)``, byte strides of the outer two
``(2 D, 2 heads D)``. A box ``(64, 1, n)`` is ``n`` rows of one head and 64 elements of D
(128 bytes): with ``CU_TENSOR_MAP_SWIZZLE_128B`` it lands in shared memory as one column
block of :mod:`attn_numba.kernels.wgmma_layout` (16-byte chunk ``c`` of row ``r`` at chunk
``c ^ (r % 8)``, from a 1024-byte aligned address). Boxes reaching past ``rows`` are
zero-filled.

:func:`template_maps` makes the maps of one call specialisation (shapes, boxes) with a
placeholder address, once, in a buffer of their own: a kernel copies them into the call's
own memory and writes the call's data pointers there (``tensormap.replace``) before it loads
through them (v6 does, per block), so a call's host work stays small and calls on
different streams never share a map.

The encode needs the CUDA driver (a GPU); the shape arithmetic (:func:`tiled_spec`) is plain
Python and tested on the CPU.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: bytes of one CUtensorMap
MAP_BYTES = 128
#: the 128B swizzle's widest inner box, in bytes
SWIZZLE_BYTES = 128
_MAX_BOX = 256


class TiledSpec(NamedTuple):
    """The arguments of ``cuTensorMapEncodeTiled`` that depend on the array and the box."""

    kind: str          # 'f16' | 'bf16'
    dims: tuple        # innermost first, elements
    strides: tuple     # bytes, the rank-1 outer dimensions
    box: tuple         # innermost first, elements


def tiled_spec(kind, shape, box_rows, box_cols=64, itemsize=2):
    """The rank-3 map of a C-contiguous ``shape = (rows, heads, D)`` array of ``kind``
    ('f16'/'bf16'), box ``(box_cols, 1, box_rows)``. Raises ValueError naming what the
    hardware refuses (strides not multiples of 16 bytes, a box wider than the 128-byte
    swizzle span or longer than 256)."""
    if kind not in ("f16", "bf16"):
        raise ValueError(f"kind must be 'f16' or 'bf16', got {kind!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (rows, heads, head_size), got {shape!r}")
    rows, heads, d = (int(x) for x in shape)
    if heads < 1 or d < 1:
        raise ValueError(f"shape must have heads >= 1 and head_size >= 1, got {shape!r}")
    if box_cols * itemsize > SWIZZLE_BYTES or d % box_cols:
        raise ValueError(f"box_cols {box_cols}: must divide head_size {d} and span at most "
                         f"{SWIZZLE_BYTES} bytes")
    if not 1 <= box_rows <= _MAX_BOX:
        raise ValueError(f"box_rows must be in 1..{_MAX_BOX}, got {box_rows}")
    row = d * itemsize
    strides = (row, heads * row)
    if any(s % 16 for s in strides):
        raise ValueError(f"head_size {d}: TMA strides {strides} must be multiples of 16 bytes")
    # a map needs every dimension >= 1; an empty array is never read through it
    return TiledSpec(kind, (d, heads, max(rows, 1)), strides, (box_cols, 1, int(box_rows)))


def box_bytes(spec, itemsize=2):
    """Bytes one box of ``spec`` writes to shared memory (what its mbarrier must expect)."""
    return int(np.prod(spec.box)) * itemsize


def encode(spec, address):
    """The 128 bytes of the ``CUtensorMap`` of ``spec`` over the data at ``address`` (16-byte
    aligned): 128B swizzle, zero fill out of bounds, 256-byte L2 promotion. Needs the CUDA
    driver."""
    from cuda.bindings import driver as drv
    if address % 16:
        raise ValueError(f"address {address:#x} must be 16-byte aligned for TMA")
    dt = (drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16 if spec.kind == "f16" else
          drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16)
    err, tmap = drv.cuTensorMapEncodeTiled(
        dt, len(spec.dims), address,
        [drv.cuuint64_t(x) for x in spec.dims],
        [drv.cuuint64_t(x) for x in spec.strides],
        [drv.cuuint32_t(x) for x in spec.box],
        [drv.cuuint32_t(1)] * len(spec.dims),
        drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != drv.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled({spec}) failed: {err}")
    raw = np.asarray(tmap.opaque, dtype=np.uint64).tobytes()
    assert len(raw) == MAP_BYTES
    return raw


class DeviceMaps(NamedTuple):
    """Maps in global memory: ``buffer`` (a Numba device array kept alive with them),
    ``address`` (of map 0; map ``i`` at ``address + 128 i``) and ``words``, their bytes as
    int64 scalars (16 per map: for a kernel that takes the maps as parameters)."""

    buffer: object
    address: int
    words: tuple = ()


def words_of(blob):
    """The int64 words (little-endian) of ``blob``, a multiple of 8 bytes."""
    return tuple(np.frombuffer(blob, dtype="<i8").astype(np.int64))


def _upload(blobs, buffer):
    buffer.copy_to_device(np.frombuffer(b"".join(blobs), dtype=np.uint8))
    return buffer


def _address(buf):
    return int(buf.device_ctypes_pointer.value)


#: template maps, never evicted: a cached plan holds only their address (384 bytes of device
#: memory per call specialisation)
_TEMPLATES = {}


def template_maps(specs, owner):
    """Device maps of ``specs`` with a placeholder data address (the buffer's own), in a
    buffer of their own for ``owner`` (a hashable: one call specialisation); a kernel copies
    them and writes each call's data addresses into its copies before use. Made once per
    ``(owner, specs)`` and kept for the life of the process (plans hold their address)."""
    specs = tuple(specs)
    key = (owner, specs)
    got = _TEMPLATES.get(key)
    if got is None:
        from numba import cuda
        buf = cuda.device_array(MAP_BYTES * len(specs), dtype=np.uint8)
        addr = _address(buf)
        blobs = [encode(s, addr) for s in specs]
        _upload(blobs, buf)
        got = _TEMPLATES[key] = DeviceMaps(buf, addr, words_of(b"".join(blobs)))
    return got

