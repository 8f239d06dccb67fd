"""GPU memory for the TensorRT backend (pycuda): the one module that allocates, copies and frees device memory.

Shaped after NVIDIA's ``samples/python/common_runtime.py`` (``HostDeviceMem``, buffer allocation, a ``cuda_call``
that turns CUDA failures into exceptions), but with pycuda and an explicit context: no ``pycuda.autoinit``
side effect, the context is created for one device and pushed only while this backend works.
"""

import numpy as np

from lungedge.runtime.errors import BackendUnavailable


def import_pycuda():
    """pycuda.driver, or BackendUnavailable saying how to install it."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendUnavailable("the tensorrt backend needs pycuda: pip install 'lungedge[jetson]' "
                                 "(it builds against the local CUDA), or use --backend onnxruntime") from None
    return cuda


def cuda_call(what, fn, *args):
    """Call a pycuda function; a CUDA error becomes BackendUnavailable naming the call."""
    cuda = import_pycuda()
    try:
        return fn(*args)
    except cuda.Error as exc:
        raise BackendUnavailable(f"CUDA call {what} failed: {exc}") from None


class CudaContext:
    """A CUDA context on one device, created explicitly; ``with ctx:`` makes it current on this thread."""

    def __init__(self, device_index=0):
        cuda = import_pycuda()
        cuda_call("cuInit", cuda.init, 0)
        count = cuda_call("cuDeviceGetCount", cuda.Device.count)
        if device_index >= count:
            raise BackendUnavailable(f"GPU {device_index} requested but {count} CUDA device(s) present")
        self.device = cuda_call("cuDeviceGet", cuda.Device, device_index)
        self.context = cuda_call("cuCtxCreate", self.device.make_context)
        self.context.pop()  # make_context leaves it current; we push it only around our own work

    def fingerprint(self):
        """The GPU half of an engine fingerprint: compute capability "major.minor" and device name."""
        major, minor = self.device.compute_capability()
        return {"compute_capability": f"{major}.{minor}", "device_name": self.device.name()}

    def __enter__(self):
        cuda_call("cuCtxPushCurrent", self.context.push)
        return self

    def __exit__(self, *exc):
        cuda = import_pycuda()
        cuda_call("cuCtxPopCurrent", cuda.Context.pop)
        return False

    def close(self):
        if self.context is not None:
            self.context.detach()
            self.context = None


class HostDeviceMem:
    """A page-locked host array and a device allocation of the same size."""

    def __init__(self, size, dtype):
        cuda = import_pycuda()
        self.host = cuda_call("cuMemHostAlloc", cuda.pagelocked_empty, int(size), np.dtype(dtype))
        self.device = cuda_call("cuMemAlloc", cuda.mem_alloc, max(1, self.host.nbytes))

    @property
    def nbytes(self):
        return self.host.nbytes

    def free(self):
        if self.device is not None:
            self.device.free()
            self.device = None


def allocate(sizes):
    """``{name: (element count, numpy dtype)}`` -> ``{name: HostDeviceMem}`` (call with the context current)."""
    buffers = {}
    try:
        for name, (size, dtype) in sizes.items():
            buffers[name] = HostDeviceMem(size, dtype)
    except BackendUnavailable:
        free(buffers)
        raise
    return buffers


def free(buffers):
    """Free every device allocation in ``buffers``."""
    for mem in buffers.values():
        mem.free()


def make_stream():
    cuda = import_pycuda()
    return cuda_call("cuStreamCreate", cuda.Stream)


def copy_in(mem, array, stream):
    """Copy a host array into the start of ``mem`` on the device (asynchronous on ``stream``)."""
    cuda = import_pycuda()
    flat = np.ascontiguousarray(array, dtype=mem.host.dtype).ravel()
    if flat.size > mem.host.size:
        raise ValueError(f"{flat.size} elements do not fit a buffer of {mem.host.size}")
    mem.host[:flat.size] = flat
    cuda_call("cuMemcpyHtoDAsync", cuda.memcpy_htod_async, mem.device, mem.host[:flat.size], stream)


def copy_out(mem, count, stream):
    """Copy the first ``count`` elements of ``mem`` back to the host; returns a host view (after synchronize)."""
    cuda = import_pycuda()
    cuda_call("cuMemcpyDtoHAsync", cuda.memcpy_dtoh_async, mem.host[:count], mem.device, stream)
    return mem.host[:count]


def synchronize(stream):
    cuda_call("cuStreamSynchronize", stream.synchronize)
