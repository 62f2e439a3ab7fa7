"""What makes two networks, two files, two images and two runs "the same".

One module answers it for both users of identity: the memo of built networks
(``_network``) and the embedding cache (``_cache``). A reused result is only
right if everything that changes it is part of its key, so identities are of
*content*, never of names, paths, timestamps or object ids alone:

- a module: its classes and their code, every non-tensor setting of every
  submodule (stride, dilation, padding, activation parameters...), its forward
  hooks, and its tensors (:func:`module_digest`);
- a file: its bytes (:func:`file_digest`), hashed once per
  (path, device, inode, size, mtime, ctime): a file rewritten in place, or
  replaced with the same size and timestamp, has a new ctime and is hashed
  again;
- an image: the bytes that were decoded, or the pixels of an array;
- the numerics: the dtype, and for reduced precisions the device and kernel
  family that produced the rows (:func:`numerics`).

A value whose identity cannot be established (an object whose ``repr`` holds
its address) falls back to something unique to the object, so the failure
mode is a cache miss, never a wrong hit.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import platform
import re
import subprocess
import sys
import time
import types
from enum import Enum

import numpy as np
import torch
from torch import fx, nn

from sktransfer._device import dtype_name
from sktransfer._memo import Memo

__all__ = [
    "clear",
    "content_digest",
    "digest",
    "file_digest",
    "module_digest",
    "numerics",
    "remember_file_digest",
]


def digest(*parts) -> str:
    """A short hex digest of bytes-like or str parts."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        h.update(part)
        h.update(b"\x00")
    return h.hexdigest()


# -- files --------------------------------------------------------------------
#: Digests of file versions already hashed (an LRU: checkpoints, a few).
_FILE_DIGESTS = Memo(size=256)
_CHUNK = 1 << 22


def _stat_key(path, st: os.stat_result) -> tuple:
    return (
        os.path.abspath(os.fspath(path)),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def clear() -> None:
    """Forget the remembered file digests (they are recomputed on demand)."""
    _FILE_DIGESTS.clear()


def content_digest(data) -> str:
    """The digest of a file's bytes, as :func:`file_digest` computes it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def remember_file_digest(path, before: os.stat_result, after: os.stat_result, value):
    """Remember ``value`` as the digest of ``path`` if the file did not change
    while it was read (its stat before and after are the same)."""
    if _stat_key(path, before) == _stat_key(path, after):
        _FILE_DIGESTS.put(_stat_key(path, after), value)


def file_digest(path) -> str:
    """A digest of a file's bytes, computed once per version of the file."""
    st = os.stat(path)
    key = _stat_key(path, st)
    known = _FILE_DIGESTS.get(key)
    if known is not None:
        return known
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        after = os.fstat(f.fileno())
    value = h.hexdigest()
    remember_file_digest(path, before, after, value)
    return value


# -- modules ------------------------------------------------------------------
#: Attributes every nn.Module has: its registries (hashed separately) and
#: the train/eval flag (the engine always runs in eval mode).
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}
#: GraphModule internals: its generated ``code`` stands for all of them.
_GRAPH_INTERNALS = frozenset({"_graph", "_code", "_tracer_cls", "_tracer_extras"})
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_DEPTH = 6


def _code_parts(code: types.CodeType):
    """Stable parts of a code object and the code objects nested in it."""
    yield code.co_code
    yield repr((code.co_names, code.co_varnames, code.co_freevars)).encode()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_parts(const)
        elif isinstance(const, frozenset):  # its repr's order varies by process
            yield repr(sorted(map(repr, const))).encode()
        else:
            yield repr(const).encode()


def _function_identity(fn, depth: int) -> str:
    """A function: its name, code, defaults and the values it closes over."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return f"{type(fn).__qualname__}@{id(fn)}"  # a builtin or C function
    parts = [f"{fn.__module__}.{fn.__qualname__}", *_code_parts(code)]
    parts.append(_stable(fn.__defaults__, depth))
    parts.append(_stable(fn.__kwdefaults__, depth))
    for cell in fn.__closure__ or ():
        try:
            parts.append(_stable(cell.cell_contents, depth))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    return digest(*parts)


@functools.cache
def _class_code(cls: type) -> str:
    """The code of every function a module class defines, bases included."""
    parts = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        parts.append(f"{klass.__module__}.{klass.__qualname__}")
        for name, value in sorted(vars(klass).items()):
            func = getattr(value, "__func__", value)  # static/class methods
            if inspect.isfunction(func):
                parts.append(name)
                parts.extend(_code_parts(func.__code__))
    return digest(*parts)


def _stable(value, depth: int = 0) -> str:
    """A text that is equal for equal settings (unique where unknown)."""
    if depth > _DEPTH:
        return f"<deep {type(value).__qualname__}@{id(value)}>"
    depth += 1
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, Enum)):
        return repr(value)
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return f"tensor{tuple(t.shape)}{t.dtype}:" + digest(
            t.reshape(-1).view(torch.uint8).numpy().data
        )
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return f"array{a.shape}{a.dtype.str}:" + (
            digest(a.data) if a.dtype != object else _stable(a.tolist(), depth)
        )
    if isinstance(value, (list, tuple)):
        inner = ",".join(_stable(v, depth) for v in value)
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, (set, frozenset)):
        return "set{" + ",".join(sorted(_stable(v, depth) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted((_stable(k, depth), _stable(v, depth)) for k, v in value.items())
        return "dict{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if isinstance(value, functools.partial):
        return (
            "partial("
            + ",".join(
                _stable(v, depth) for v in (value.func, value.args, value.keywords)
            )
            + ")"
        )
    if isinstance(value, types.MethodType):
        return f"method {_stable(value.__self__, depth)}.{value.__name__}"
    if isinstance(value, types.FunctionType):
        return "function " + _function_identity(value, depth)
    if isinstance(value, nn.Module):
        # A module held outside ``_modules`` (a back-reference to a parent,
        # say): hashing it could recurse forever, so it is this very object.
        return f"module {type(value).__qualname__}@{id(value)}"
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and type(value).__repr__ is object.__repr__:
        cls = type(value)
        return f"{cls.__module__}.{cls.__qualname__}{_stable(state, depth)}"
    text = repr(value)
    if _ADDRESS.search(text):  # the repr of this very object: unique
        return f"{text}@{id(value)}"
    return f"{type(value).__qualname__}:{text}"


def _hooks(module: nn.Module) -> list[str]:
    """A module's forward hooks. Hooks are identified by object: a hook with
    state of its own may change what it does between calls."""
    out = []
    for registry in ("_forward_pre_hooks", "_forward_hooks"):
        for hook in getattr(module, registry).values():
            out.append(f"{registry}:{type(hook).__qualname__}@{id(hook)}")
    return out


def module_digest(module: nn.Module) -> str:
    """A digest of what ``module`` computes.

    Covers each submodule's name and class, the code of every method of the
    class (so a class redefined in a notebook is another network), its
    settings (every attribute that is not a registered tensor or submodule,
    e.g. a convolution's stride, dilation and padding), its forward hooks,
    and every tensor of the state dict, registered or not as a buffer.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules(remove_duplicate=False):
        cls = type(sub)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}".encode())
        h.update(_class_code(cls).encode())  # type: ignore[arg-type]
        skip = _MODULE_INTERNALS
        if isinstance(sub, fx.GraphModule):
            h.update(sub.code.encode())
            skip = skip | _GRAPH_INTERNALS
        settings = {k: v for k, v in vars(sub).items() if k not in skip}
        h.update(_stable(settings).encode())
        for hook in _hooks(sub):
            h.update(hook.encode())
        for key in sorted(sub._non_persistent_buffers_set):  # not in state_dict
            h.update(f"buffer {key}:{_stable(sub._buffers.get(key))}".encode())
    for key, value in module.state_dict(keep_vars=True).items():
        h.update(f"{key}:{_stable(value)}".encode())
    return h.hexdigest()


# -- numerics -----------------------------------------------------------------
_KERNEL_FLAGS = (
    *("amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f"),
    *("amx_int8", "avx512_vnni", "avx_vnni", "asimddp"),  # int8 (``_int8``)
    "bf16",  # ARM's bfloat16 instructions (Linux's name of FEAT_BF16)
)


@functools.cache
def _cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags that decide which low-precision kernels run."""
    found = set(re.findall(r"\b[a-z0-9_]+\b", _cpuinfo()))
    return frozenset(flag for flag in _KERNEL_FLAGS if flag in found)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name and bf16 kernel family, for reports and
    benchmarks, e.g. ``"AMD EPYC (avx512bf16)"``."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    name = found.group(1).strip() if found else platform.processor()
    return f"{name or platform.machine()} ({cpu_kernels()})"


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions: AVX512-BF16 or AMX on
    x86, BF16 on ARM. Without them (AVX2 only: most laptops, AMD Zen 3)
    bf16 is emulated, several times slower than float32.

    Decided by the CPU's flags where ``/proc/cpuinfo`` lists them (Linux),
    by ``sysctl`` on Apple silicon, else by a short timing of a bf16 matrix
    product against a float32 one.
    """
    if {"amx_bf16", "avx512_bf16", "bf16"} & cpu_flags():
        return True
    if _cpuinfo():  # Linux: the flags are the answer
        return False
    if sys.platform == "darwin" and platform.machine() == "arm64":
        try:
            found = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            return found.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            pass
    return _bf16_timing() < 1.5


def _bf16_timing() -> float:
    """How much longer a 256x256 bf16 matrix product takes than a float32
    one (best of 3 each): about 0.5 with bf16 instructions, several times
    1 without."""
    a = torch.rand(256, 256)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        torch.mm(x, x)  # (warm-up)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(x, x)
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


@functools.cache
def cpu_kernels() -> str:
    """The family of kernels this CPU runs bf16/fp16 with, e.g. ``"amx"``."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512bf16"
    if "avx512f" in flags:
        return "avx512"
    return "generic"


def numerics(device: torch.device, dtype: torch.dtype) -> str:
    """What produced a row, as far as it changes the digits of the row.

    float32 on a CPU agrees across x86 CPUs to about 1e-6, so CPUs share
    one tag. Reduced precisions (bf16, fp16) round differently on different
    kernels, so their tag names the device type, the kernel family (CPU:
    AMX, AVX512-BF16, ...; CUDA: the compute capability) and the torch
    version. float32 on a GPU runs without TF32 here (see ``_engine``) but
    accumulates in another order than a CPU: it gets its device type.
    """
    name = dtype_name(dtype)
    if dtype == torch.float32 and device.type == "cpu":
        return name
    if device.type == "cpu":
        kernels = cpu_kernels()
    elif device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        kernels = f"sm{major}{minor}"
    else:
        kernels = device.type
    if dtype == torch.float32:
        return f"{name}-{device.type}-{kernels}"
    return f"{name}-{device.type}-{kernels}-torch{torch.__version__}"
