"""What the PyTorch peers (torch_cnn.py, torch_mlp.py) share: MNIST's IDX files read with numpy,
argument types, the BLAS threads set before torch loads, what the process loaded, CPU time, and
the one-line failure report. Imported from the peers' own directory (Python puts a script's
directory on sys.path), never by the library.
"""
import argparse
import gzip
import os
import struct
import sys

FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


class Failure(Exception):
    """A failure reported as one line on stderr, exit status 1."""


def whole_number(text, least):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a whole number, got {text!r}')
    if v < least:
        raise argparse.ArgumentTypeError(f'must be at least {least}, got {text!r}')
    return v


def positive_int(text):
    return whole_number(text, 1)


def nonnegative_int(text):
    return whole_number(text, 0)


def read_idx(np, path):
    """An IDX file as a numpy uint8 array of its dims (big-endian header: magic 0x0000 08 NDIM, dims)."""
    if os.path.exists(path):
        with open(path, 'rb') as f:
            raw = f.read()
    elif os.path.exists(path + '.gz'):
        path += '.gz'
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    else:
        raise Failure(f'{path}: not found (nor {os.path.basename(path)}.gz); run scripts/fetch-mnist or pass --data DIR')
    if len(raw) < 4:
        raise Failure(f'{path}: not an IDX file ({len(raw)} bytes)')
    zero, kind, ndim = struct.unpack('>HBB', raw[:4])
    if zero != 0 or kind != 0x08 or not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise Failure(f'{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})')
    dims = struct.unpack('>' + 'I' * ndim, raw[4:4 + 4 * ndim])
    count = 1
    for d in dims:
        count *= d
    if len(raw) - 4 - 4 * ndim != count:
        raise Failure(f'{path}: {len(raw)} bytes, but its header {dims} needs {4 + 4 * ndim + count} (truncated?)')
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_mnist(np, data, part):
    """A part's images (N, H, W) and labels (N) as uint8 arrays, checked against each other."""
    images = read_idx(np, os.path.join(data, FILES[part][0]))
    labels = read_idx(np, os.path.join(data, FILES[part][1]))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise Failure(f'{data}: {part} images {images.shape} and labels {labels.shape} do not match')
    return images, labels


def import_peers(threads, blas_vars):
    """numpy and torch, imported after the BLAS thread variables are set (unless the caller set them):
    Debian's torch calls libblas.so.3 (whatever update-alternatives picks: BLIS, OpenBLAS, MKL or the
    reference BLAS) for dense GEMMs; the threaded BLIS and OpenBLAS take their thread count from the
    environment only, and BLIS runs on one thread when nothing says otherwise, so the GEMMs would use
    one core while gradgraph's use N. Returns (numpy, torch, {variable: value})."""
    blas_env = {var: os.environ.setdefault(var, str(threads)) for var in blas_vars}
    try:
        import numpy as np
    except ImportError:
        raise Failure(f'numpy is not installed for {sys.executable} (sudo apt-get install python3-numpy)')
    try:
        import torch
    except ImportError as e:
        raise Failure(f'PyTorch is not installed for {sys.executable} ({e}; sudo apt-get install python3-torch)')
    return np, torch, blas_env


def blas_libraries():
    """The BLAS/LAPACK/oneDNN/OpenMP shared libraries mapped into this process, resolved to real files."""
    found = []
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ''
                name = os.path.basename(path)
                if any(k in name for k in ('blas', 'blis', 'mkl', 'dnnl', 'lapack', 'omp')) and path not in found:
                    found.append(path)
    except OSError:
        return ['? (no /proc/self/maps)']
    return [os.path.realpath(p) for p in found] or ['none']


def busy_seconds():
    """CPU seconds the whole machine has been busy (user nice system irq softirq steal), from /proc/stat."""
    try:
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf('SC_CLK_TCK')


def own_seconds():
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


def run(prog, main):
    """main(), with any failure reported as one line naming `prog` (a torch or numpy error after its
    traceback), and the exit status: 0, 1, or 130 when interrupted."""
    try:
        main()
    except Failure as e:
        print(f'{prog}: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        import traceback
        traceback.print_exc()
        print(f'{prog}: failed: {type(e).__name__}: {e}'.splitlines()[0], file=sys.stderr)
        sys.exit(1)
