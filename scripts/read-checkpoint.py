#!/usr/bin/python3
"""A gradgraph checkpoint read with Python and NumPy alone: the test accuracy of the network it holds.

usage: scripts/read-checkpoint.py CHECKPOINT [--data DIR] [--test-divisor D]
       scripts/read-checkpoint.py CHECKPOINT --list

Reads a checkpoint written by mnist-train (--save) and MNIST-style test data (IDX, raw or gzipped),
runs the network's forward pass in NumPy and prints what `mnist-eval CHECKPOINT` prints: the
accuracy line, the per-class accuracy and the confusion matrix. --list prints the tensors and the
metadata instead. It needs nothing from gradgraph, which is the point: the suite's
'read-checkpoint' test holds its numbers to mnist-eval's (docs/interop.md).

The format (safetensors): an 8-byte little-endian header length N, N bytes of JSON, then the raw
little-endian tensor data. The JSON maps each tensor name to {"dtype": "F32"|"F64"|"I64"|"U8",
"shape": [...], "data_offsets": [begin, end)} (offsets from the end of the header, row-major
data) and "__metadata__" to strings: "spec" (the network, e.g. "dense64,relu,dense10"),
"layout", "dtype", "example", "classes", "normalization", "data", the counters and more.

Networks it reads: dense layers with relu, tanh, sigmoid and dropout (the identity at evaluation),
which is every network mnist-train builds from --hidden or --layers. The k-th dense layer has
the weights W<k> and the bias b<k>, laid out by "layout":
  columns (the notebook's): X {features, examples}; W<k> {units, in}, b<k> {units, 1}; Z = W X + b
  rows (batch first):       X {examples, features}; W<k> {in, units}, b<k> {units};   Z = X W + b
Convolutions, pooling and batch norm are refused with a message naming the layer.
"""
import argparse
import gzip
import json
import os
import re
import struct
import sys

import numpy as np

ST_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1"}
MODEL_DTYPES = {"float32": np.float32, "float64": np.float64}
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class Error(Exception):
    """A problem with the checkpoint or the data: one line, no traceback."""


def load_safetensors(path):
    """Returns ({name: ndarray}, {key: str}) from a safetensors file, checking every offset."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise Error(f"{path}: cannot read: {e.strerror}") from None
    if len(blob) < 8:
        raise Error(f"{path}: {len(blob)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise Error(f"{path}: the header claims {n} bytes, the file has {len(blob) - 8} after the length")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Error(f"{path}: the header is not JSON: {e}") from None
    metadata = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, entry in header.items():
        dtype = ST_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise Error(f"{path}: tensor '{name}' has dtype {entry.get('dtype')!r}, not one of {', '.join(ST_DTYPES)}")
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != size:
            raise Error(f"{path}: tensor '{name}' {shape} has data_offsets [{begin}, {end}) in {len(data)} bytes of data")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
    return tensors, metadata


def read_idx(path):
    """An IDX file (raw or gzipped) as an ndarray of its dimensions; only unsigned bytes (type 0x08)."""
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise Error(f"{path}: not an IDX file of unsigned bytes (magic {blob[:4].hex()})")
    rank = blob[3]
    dims = struct.unpack(f">{rank}I", blob[4:4 + 4 * rank])
    body = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims, dtype=np.int64)):
        raise Error(f"{path}: dims {list(dims)} need {int(np.prod(dims))} bytes, the file has {body.size}")
    return body.reshape(dims)


def find_idx(directory, name):
    """DIR/NAME, else DIR/NAME.gz, as mnist-train looks for them."""
    for candidate in (os.path.join(directory, name), os.path.join(directory, name + ".gz")):
        if os.path.exists(candidate):
            return candidate
    raise Error(f"{os.path.join(directory, name)}: missing (neither {name} nor {name}.gz is in {directory})")


def default_data_dir():
    """$GRADGRAPH_DATA, else ${XDG_CACHE_HOME:-$HOME/.cache}/gradgraph/mnist (empty counts as unset)."""
    if os.environ.get("GRADGRAPH_DATA"):
        return os.environ["GRADGRAPH_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ.get("HOME", ""), ".cache")
    return os.path.join(cache, "gradgraph", "mnist")


def parse_normalization(text):
    """'divisor=255 mean=0 std=1' -> (255.0, 0.0, 1.0)."""
    try:
        d, m, s = (part.split("=", 1) for part in text.split())
        assert (d[0], m[0], s[0]) == ("divisor", "mean", "std")
        return float(d[1]), float(m[1]), float(s[1])
    except (ValueError, AssertionError):
        raise Error(f"normalisation '{text}' is not 'divisor=D mean=M std=S'") from None


def normalize(pixels, divisor, mean, std, dtype):
    """Pixels {n, features} uint8 -> the network's input, computed as gradgraph's batches do: in float32
    (pixel / divisor, then (x - mean) / std unless mean=0 and std=1), then cast to the network's dtype."""
    x = pixels.astype(np.float32) / np.float32(divisor)
    if not (mean == 0.0 and std == 1.0):
        x = (x - np.float32(mean)) / np.float32(std)
    return x.astype(dtype)


def forward(spec, layout, tensors, x):
    """The logits of the network `spec` for x ({features, n} for columns, {n, features} for rows)."""
    k = 0
    for layer in spec.split(","):
        if layer.startswith("dense"):
            k += 1
            w, b = tensors.get(f"W{k}"), tensors.get(f"b{k}")
            if w is None or b is None:
                raise Error(f"layer '{layer}' needs tensors W{k} and b{k}; the checkpoint has {', '.join(tensors)}")
            units = int(layer[len("dense"):])
            if layout == "columns":
                if w.shape != (units, x.shape[0]) or b.shape != (units, 1):
                    raise Error(f"W{k} {w.shape} and b{k} {b.shape} do not fit layer '{layer}' on {x.shape[0]} features (columns)")
                x = w @ x + b
            else:
                if w.shape != (x.shape[1], units) or b.shape != (units,):
                    raise Error(f"W{k} {w.shape} and b{k} {b.shape} do not fit layer '{layer}' on {x.shape[1]} features (rows)")
                x = x @ w + b
        elif layer == "relu":
            x = np.maximum(x, 0)
        elif layer == "tanh":
            x = np.tanh(x)
        elif layer == "sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif layer.startswith("dropout"):
            pass  # the identity at evaluation (inverted dropout scales at training time)
    return x


def check_spec(spec):
    """Refuses, naming it, the first layer forward() does not compute."""
    for layer in spec.split(","):
        if not (re.fullmatch(r"dense[0-9]+|relu|tanh|sigmoid", layer) or layer.startswith("dropout")):
            raise Error(f"layer '{layer}' of '{spec}': this reader knows dense, relu, tanh, sigmoid and dropout layers")


def evaluate(checkpoint, data, test_divisor):
    tensors, meta = load_safetensors(checkpoint)
    if meta.get("format") != "gradgraph checkpoint":
        raise Error(f"{checkpoint}: not a gradgraph checkpoint (its metadata has no format \"gradgraph checkpoint\")")
    for key in ("spec", "layout", "dtype", "example", "classes"):
        if key not in meta:
            raise Error(f"{checkpoint}: no '{key}' in its metadata")
    spec, layout, dtype_name = meta["spec"], meta["layout"], meta["dtype"]
    check_spec(spec)
    if layout not in ("columns", "rows"):
        raise Error(f"{checkpoint}: layout '{layout}'; this reader knows columns and rows (dense networks)")
    if dtype_name not in MODEL_DTYPES:
        raise Error(f"{checkpoint}: dtype '{dtype_name}', not float32 or float64")
    dtype = MODEL_DTYPES[dtype_name]
    classes = int(meta["classes"])
    divisor, mean, std = parse_normalization(meta.get("normalization", "divisor=255 mean=0 std=1"))
    if test_divisor > 0:
        divisor = test_divisor
    if not data:
        data = meta["data"] if os.path.isdir(meta.get("data", "")) else default_data_dir()

    images = read_idx(find_idx(data, "t10k-images-idx3-ubyte"))
    labels = read_idx(find_idx(data, "t10k-labels-idx1-ubyte")).astype(np.int64)
    example = "{" + ", ".join(str(d) for d in images.shape[1:]) + "}"
    if example != meta["example"]:
        raise Error(f"{data}: test images are {example}, the checkpoint's network takes {meta['example']}")
    count = images.shape[0]
    x = normalize(images.reshape(count, -1), divisor, mean, std, dtype)
    logits = forward(spec, layout, tensors, x.T if layout == "columns" else x)
    if layout == "columns":
        logits = logits.T  # {n, classes} from here on
    predicted = logits.argmax(axis=1)  # the first maximum, as gradgraph's argmax
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(count), labels].astype(np.float64).mean())
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)

    # mnist-eval's output, line for line.
    print(f"{checkpoint}: {spec} ({dtype_name}), trained {meta.get('step', '?')} steps")
    norm = f"divisor={divisor:.17g} mean={mean:.17g} std={std:.17g}"
    print(f"test set {data}/t10k: {count} images, {norm}")
    print(f"Accuracy: {np.trace(confusion) / count * 100.0:.2f} % (loss {loss:.4f})\n")
    names = FASHION if "fashion" in data.lower() and classes == 10 else [str(c) for c in range(classes)]
    width = max([5] + [len(n) for n in names])
    print(f"{'class':<{width}}  accuracy  images")
    for c in range(classes):
        row = int(confusion[c].sum())
        acc = f"{100.0 * confusion[c, c] / row:7.2f}" if row else "    nan"
        print(f"{names[c]:<{width}}  {acc}%  {row:6d}")
    print(f"\nconfusion matrix (rows: true class, columns: predicted)\n{'':>{width}}" +
          "".join(f" {k:5d}" for k in range(classes)))
    for c in range(classes):
        print(f"{names[c]:<{width}}" + "".join(f" {int(v):5d}" for v in confusion[c]))


def list_checkpoint(checkpoint):
    tensors, meta = load_safetensors(checkpoint)
    for name, t in tensors.items():
        print(f"{name}  {t.dtype.name} {list(t.shape)}")
    for key, value in sorted(meta.items()):
        # "graph" (the node list) and "shuffle_rng" (the generator's state) run to kilobytes.
        print(f"# {key}: {value}" if len(value) <= 100 else f"# {key}: {value[:60]}... ({len(value)} characters)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a safetensors checkpoint written by mnist-train --save")
    parser.add_argument("--data", default="", help="directory with t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
                        "(default: the one the checkpoint was trained on, else gradgraph's MNIST cache)")
    parser.add_argument("--test-divisor", type=float, default=0.0,
                        help="divide the test pixels by this (0: the checkpoint's normalisation)")
    parser.add_argument("--list", action="store_true", help="print the tensors (name, dtype, shape) and the metadata")
    args = parser.parse_args()
    try:
        if args.list:
            list_checkpoint(args.checkpoint)
        else:
            evaluate(args.checkpoint, args.data, args.test_divisor)
    except (Error, OSError, KeyError, ValueError) as e:
        print(f"read-checkpoint.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
