"""Array and stream adapters for the public call: what kind of array the caller passed, its
raw facts, the stream to launch on, and outputs allocated in the caller's own array type.

Kinds: ``"torch"`` (CUDA tensors), ``"cupy"``, ``"numba"`` (Numba device arrays, real or
simulated), ``"cai"`` (any other ``__cuda_array_interface__`` object; its outputs are Numba
device arrays) and ``"numpy"`` (host arrays, copied in and out). torch and CuPy are never
imported here: a torch tensor is recognised by its type's module, so a process without torch
pays nothing.

bfloat16: ``np.dtype(ml_dtypes.bfloat16)`` (:data:`BF16`) on the host and for ``torch.bfloat16``
tensors. Kernels receive the raw bits: a bf16 array's *kernel* dtype is uint16
(:func:`kernel_dtype`). torch tensors are read through ``data_ptr()``, ``shape`` and
``is_contiguous()``, never through ``__cuda_array_interface__`` (which bf16 lacks).
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

try:  # a declared dependency; tolerate its absence (no bf16 then)
    import ml_dtypes as _ml_dtypes
    BF16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
U16 = np.dtype(np.uint16)


def kernel_dtype(dtype):
    """The dtype kernels see: bf16 as its raw uint16 bits, everything else as is."""
    return U16 if BF16 is not None and dtype == BF16 else dtype


class Info(NamedTuple):
    """Raw facts about one array. ``ptr``/``device`` are None for NumPy arrays (and ptr for
    simulated ones); ``contiguous`` means C-contiguous. ``host`` is the address of a simulated
    device array's host memory (None otherwise), so that :func:`overlaps` also works on the
    simulator. A torch dtype with no NumPy match is a zero-size void dtype whose metadata
    keeps the torch name (:func:`dtype_name`)."""

    shape: tuple
    dtype: np.dtype
    contiguous: bool
    ptr: int | None
    device: int | None
    host: int | None = None


def dtype_name(dtype, kind=None):
    """``dtype`` as the caller wrote it: ``torch.int8`` for torch tensors, ``float16`` for
    NumPy, CuPy and Numba arrays."""
    meta = dtype.metadata or {}
    if "torch" in meta:
        return meta["torch"]
    name = dtype.name
    return f"torch.{name}" if kind == "torch" else name


# --------------------------------------------------------------------------- kinds

def kind_of(x, name):
    """The kind of array ``x`` is (see the module docstring); TypeError naming ``name``."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch"):
        if not getattr(x, "is_cuda", False):
            raise TypeError(f"{name} is a torch tensor on {getattr(x, 'device', '?')}; pass a "
                            f"CUDA tensor (.cuda()) or a NumPy array")
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    if mod.startswith("numba"):
        from numba import cuda
        if cuda.devicearray.is_cuda_ndarray(x) or hasattr(x, "__cuda_array_interface__"):
            return "numba"
    if hasattr(x, "__cuda_array_interface__"):
        return "cai"
    raise TypeError(f"{name} must be a NumPy array or a CUDA array (PyTorch, CuPy, Numba), "
                    f"got {type(x).__name__}")


_TORCH_DTYPES = None
_TORCH_FROM_NP = {}


def _torch_dtypes():
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        torch = sys.modules["torch"]
        _TORCH_DTYPES = {torch.float16: F16, torch.float32: F32, torch.int32: np.dtype(np.int32),
                         torch.float64: np.dtype(np.float64), torch.int64: np.dtype(np.int64)}
        if BF16 is not None:
            _TORCH_DTYPES[torch.bfloat16] = BF16
        _TORCH_FROM_NP.update({v: k for k, v in _TORCH_DTYPES.items()})
    return _TORCH_DTYPES


def info(x, kind):
    """:class:`Info` of ``x`` (of kind ``kind``)."""
    if kind == "torch":  # torch.Size is a tuple; the dtype table is built on first use
        dt = (_TORCH_DTYPES or _torch_dtypes()).get(x.dtype)
        if dt is None:  # reported by the caller's dtype check, under its torch name
            dt = np.dtype(np.void, metadata={"torch": str(x.dtype)})
        return Info(x.shape, dt, x.is_contiguous(), x.data_ptr(), x.get_device())
    if kind == "numpy":
        return Info(x.shape, x.dtype, x.flags.c_contiguous, None, None)
    if kind == "cupy":
        return Info(x.shape, x.dtype, x.flags.c_contiguous, x.data.ptr, x.device.id)
    if kind == "numba":
        ptr = getattr(x, "device_ctypes_pointer", None)
        ptr = None if ptr is None else (ptr.value or 0)
        sim = getattr(x, "_ary", None) if ptr is None else None  # the simulator's host array
        host = sim.__array_interface__["data"][0] if isinstance(sim, np.ndarray) else None
        return Info(tuple(x.shape), np.dtype(x.dtype), x.is_c_contiguous(), ptr, None, host)
    cai = x.__cuda_array_interface__
    shape, dt = tuple(cai["shape"]), np.dtype(cai["typestr"])
    strides = cai.get("strides")
    contig = strides is None or tuple(strides) == c_strides(shape, dt.itemsize)
    return Info(shape, dt, contig, int(cai["data"][0]), None)


def c_strides(shape, itemsize):
    """Byte strides of a C-contiguous array of ``shape``."""
    out, acc = [], itemsize
    for n in reversed(shape):
        out.append(acc)
        acc *= int(n)
    return tuple(reversed(out))


def nbytes(inf):
    n = inf.dtype.itemsize
    for s in inf.shape:
        n *= int(s)
    return n


def overlaps(a, b):
    """Do the memory ranges of Infos ``a`` and ``b`` intersect? Device pointers on a GPU,
    host addresses of simulated device arrays on the simulator; False when either is unknown
    (NumPy arrays: the caller uses ``np.may_share_memory``)."""
    pa = a.ptr if a.ptr is not None else a.host
    pb = b.ptr if b.ptr is not None else b.host
    if pa is None or pb is None:
        return False
    na, nb = nbytes(a), nbytes(b)
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


# --------------------------------------------------------------------------- streams

class LaunchStream(NamedTuple):
    """The stream of one call: ``handle`` (a raw ``cudaStream_t``, 0 = the legacy default
    stream), the caller's own stream object if one was given, and whether it differs from the
    framework's current stream (outputs are then allocated under it)."""

    handle: int
    given: object
    explicit: bool


def on_simulator():
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def stream_handle(stream):
    """The raw handle of a stream argument: a Numba, torch or CuPy stream, an object with
    ``__cuda_stream__``, or an int ``cudaStream_t``. TypeError/ValueError name ``stream``."""
    if isinstance(stream, (bool, np.bool_)):
        raise TypeError("stream must be a CUDA stream or an int cudaStream_t, got a bool")
    if isinstance(stream, (int, np.integer)):
        if stream < 0:
            raise ValueError(f"stream must be a non-negative cudaStream_t, got {stream}")
        return int(stream)
    mod = type(stream).__module__
    if mod.startswith("torch"):
        return int(stream.cuda_stream)
    if mod.startswith("cupy"):
        return int(stream.ptr)
    if mod.startswith("numba"):
        h = getattr(stream, "handle", None)  # the simulator's streams have none
        if h is None:
            return 0
        return int(getattr(h, "value", h) or 0)
    proto = getattr(stream, "__cuda_stream__", None)
    if proto is not None:
        return int(proto()[1])
    raise TypeError(f"stream must be a Numba, PyTorch or CuPy stream, an object with "
                    f"__cuda_stream__, or an int cudaStream_t; got {type(stream).__name__}")


_TORCH_FNS = []


def _torch_fns():
    """(current raw stream of a device, current device): torch's C entry points where this
    torch has them (no Python wrapper per call), else the public functions."""
    if not _TORCH_FNS:
        torch = sys.modules["torch"]
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is None:
            def raw(device):
                return torch.cuda.current_stream(device).cuda_stream
        _TORCH_FNS.extend((raw, getattr(torch._C, "_cuda_getDevice", torch.cuda.current_device)))
    return _TORCH_FNS


def _torch_current(device):
    return int((_TORCH_FNS or _torch_fns())[0](device))


def torch_current_device():
    """torch's current CUDA device index."""
    return (_TORCH_FNS or _torch_fns())[1]()


def _cupy_current():
    return int(sys.modules["cupy"].cuda.get_current_stream().ptr)


def resolve_stream(stream, kind, device):
    """The :class:`LaunchStream` of a call: ``stream`` when given, else the current stream
    of the inputs' framework (torch, CuPy), else Numba's default stream."""
    if stream is None:
        if kind == "torch":
            return LaunchStream(_torch_current(device), None, False)
        if kind == "cupy":
            return LaunchStream(_cupy_current(), None, False)
        return LaunchStream(_numba_default_handle(), None, False)
    h = stream_handle(stream)
    if kind == "torch":
        explicit = h != _torch_current(device)
    elif kind == "cupy":
        explicit = h != _cupy_current()
    else:
        explicit = False
    return LaunchStream(h, stream, explicit)


_NUMBA_DEFAULT = []


def _numba_default_handle():
    if not _NUMBA_DEFAULT:
        if on_simulator():
            _NUMBA_DEFAULT.append(0)
        else:
            from numba import cuda
            _NUMBA_DEFAULT.append(stream_handle(cuda.default_stream()))
    return _NUMBA_DEFAULT[0]


_EXTERNAL = {}


def numba_stream(ls):
    """A Numba stream object for :class:`LaunchStream` ``ls`` (the simulator runs everything
    synchronously on its default stream)."""
    from numba import cuda
    if type(ls.given).__module__.startswith("numba"):
        return ls.given
    if on_simulator() or ls.handle == 0:
        return cuda.default_stream()
    s = _EXTERNAL.get(ls.handle)
    if s is None:
        if len(_EXTERNAL) > 64:
            _EXTERNAL.clear()
        s = _EXTERNAL[ls.handle] = cuda.external_stream(ls.handle)
    return s


# --------------------------------------------------------------------------- allocation

def empty(kind, like, shape, dtype, ls, device):
    """A new array of ``shape`` and ``dtype`` in the caller's type, on the launch stream:
    torch's caching allocator (under the launch stream when it is not the current one),
    CuPy's memory pool (likewise), else a Numba device array (also for NumPy callers: the
    device-side buffer that is copied back)."""
    if kind == "torch":
        tdt = _TORCH_FROM_NP[dtype]
        if ls.explicit:
            torch = sys.modules["torch"]
            s = ls.given if type(ls.given).__module__.startswith("torch") else \
                torch.cuda.ExternalStream(ls.handle, device=like.device)
            with torch.cuda.stream(s):
                return like.new_empty(shape, dtype=tdt)
        return like.new_empty(shape, dtype=tdt)  # q's device, torch's caching allocator
    if kind == "cupy":
        cp = sys.modules["cupy"]
        if ls.explicit:
            s = ls.given if type(ls.given).__module__.startswith("cupy") else \
                cp.cuda.ExternalStream(ls.handle)
            with s:
                return cp.empty(shape, dtype=dtype)
        return cp.empty(shape, dtype=dtype)
    from numba import cuda
    return cuda.device_array(shape, dtype=kernel_dtype(np.dtype(dtype)), stream=numba_stream(ls))


def fill_nan(arr, kind):
    """Fill a new output with NaN (attn_numba.testing.poisoned_outputs())."""
    if kind in ("torch", "cupy"):
        arr.fill_(float("nan")) if kind == "torch" else arr.fill(np.nan)
        return arr
    from numba import cuda
    host = np.full(arr.shape, np.nan, np.float32).astype(arr.dtype) if arr.dtype != U16 \
        else np.full(arr.shape, 0x7FC0, np.uint16)
    cuda.to_device(host, to=arr)
    return arr


def as_numba(x, inf, shape=None):
    """A Numba device-array view of device array ``x`` (no copy, no synchronisation), reshaped
    to ``shape``, with bf16 as uint16."""
    shape = inf.shape if shape is None else tuple(shape)
    if type(x).__module__.startswith("numba"):
        return x if tuple(x.shape) == shape else x.reshape(shape)
    from numba import cuda
    desc = {"shape": shape, "strides": None, "typestr": kernel_dtype(inf.dtype).str,
            "data": (inf.ptr, False), "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=x, sync=False)
