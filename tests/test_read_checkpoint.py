#!/usr/bin/python3
"""scripts/read-checkpoint.py, the NumPy reader of gradgraph checkpoints, agrees with mnist-eval.

usage: tests/test_read_checkpoint.py READ_CHECKPOINT MNIST_TRAIN MNIST_EVAL

Trains small networks with mnist-train on a synthetic MNIST (the fake digits of
tests/test_mnist_tool.cpp: class c brightens rows [2c + 4, 2c + 6) of a noisy image), a few steps
only so that some test images are still misclassified, then runs mnist-eval and the reader on
each checkpoint: the same correct count, the same per-class lines and confusion matrix, the same
loss to 1e-3. Run with Debian's /usr/bin/python3, where python3-numpy installs (scripts/install-deps);
a missing NumPy fails the test rather than skipping it.
"""
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import unittest

READER = MNIST_TRAIN = MNIST_EVAL = ""
TRAIN_COUNT, TEST_COUNT = 300, 500


def write_split(directory, prefix, n, gz=False):
    """tests/test_mnist_tool.cpp's write_split, byte for byte: the same generator and digits."""
    images, labels = bytearray(), bytearray()
    state = 12345 + n
    for i in range(n):
        c = (i * 7 + 3) % 10
        labels.append(c)
        for p in range(784):
            state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
            lit = 2 * c + 4 <= p // 28 < 2 * c + 6
            images.append(((state >> 26) + (200 if lit else 0)) & 0xFF)  # wraps as the uint8 cast does
    for name, dims, body in ((f"{prefix}-images-idx3-ubyte", (n, 28, 28), images),
                             (f"{prefix}-labels-idx1-ubyte", (n,), labels)):
        blob = bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(body)
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(blob)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(blob)


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


LOSS = re.compile(r"^Accuracy: [0-9.]+ % \(loss ([0-9.]+)\)$", re.M)


def confusion_rows(out):
    """The confusion matrix's rows (class name, counts) from mnist-eval's output."""
    lines = out.split("confusion matrix (rows: true class, columns: predicted)\n", 1)[1].splitlines()[1:]
    return [(line.split()[0], [int(v) for v in line.split()[1:]]) for line in lines if line.strip()]


class ReaderAgreesWithMnistEval(unittest.TestCase):
    tmp = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="gg-read-checkpoint.")
        cls.data = os.path.join(cls.tmp.name, "mnist")
        cls.data_gz = os.path.join(cls.tmp.name, "mnist-gz")
        for d, gz in ((cls.data, False), (cls.data_gz, True)):
            os.mkdir(d)
            write_split(d, "train", TRAIN_COUNT, gz)
            write_split(d, "t10k", TEST_COUNT, gz)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def train(self, name, *flags, data=None):
        path = os.path.join(self.tmp.name, name + ".st")
        flags = [str(f) for f in flags]
        r = run(MNIST_TRAIN, "--data", data or self.data, "--threads", 1, "--no-progress", "--save", path, *flags)
        self.assertEqual(r.returncode, 0, f"mnist-train {' '.join(flags)} failed:\n{r.stdout}{r.stderr}")
        return path

    def assert_same_numbers(self, checkpoint, data=None):
        """Both print the same evaluation; the correct count is neither zero nor all the images."""
        data = data or self.data
        ours = run(MNIST_EVAL, checkpoint, "--data", data, "--threads", 1)
        self.assertEqual(ours.returncode, 0, f"mnist-eval failed:\n{ours.stdout}{ours.stderr}")
        theirs = run(READER, checkpoint, "--data", data)
        self.assertEqual(theirs.returncode, 0, f"read-checkpoint.py failed:\n{theirs.stdout}{theirs.stderr}")

        correct = sum(row[i] for i, (_, row) in enumerate(confusion_rows(ours.stdout)))
        self.assertEqual(sum(row[i] for i, (_, row) in enumerate(confusion_rows(theirs.stdout))), correct,
                         f"correct predictions differ\nmnist-eval:\n{ours.stdout}\nread-checkpoint.py:\n{theirs.stdout}")
        # A network that gets every image right (or none) would agree with a reader that ignores half
        # of it: the few training steps leave it in between.
        self.assertTrue(0 < correct < TEST_COUNT, f"{correct} of {TEST_COUNT} right: train fewer or more steps")
        # Line for line, but for the loss's last digit: BLIS and NumPy's BLAS sum in other orders.
        loss_ours, loss_theirs = (float(LOSS.search(r.stdout).group(1)) for r in (ours, theirs))
        self.assertAlmostEqual(loss_theirs, loss_ours, delta=1e-3)
        self.assertEqual(LOSS.sub("", theirs.stdout), LOSS.sub("", ours.stdout))

    def test_float32_notebook_mlp(self):
        self.assert_same_numbers(self.train("notebook-f32", "--iterations", 3))

    def test_float64_notebook_mlp(self):
        self.assert_same_numbers(self.train("notebook-f64", "--iterations", 3, "--dtype", "float64"))

    def test_float32_batch_first_dense_network_with_tanh_sigmoid_and_dropout(self):
        self.assert_same_numbers(self.train("rows-f32", "--model", "dense32,tanh,dropout0.2,dense16,sigmoid,dense10",
                                            "--layout", "rows", "--batch-size", 50, "--epochs", 1,
                                            "--optimizer", "adam", "--lr", "3e-3"))

    def test_float64_batch_first_dense_network(self):
        self.assert_same_numbers(self.train("rows-f64", "--layers", "32,16", "--layout", "rows", "--dtype", "float64",
                                            "--batch-size", 100, "--epochs", 1, "--optimizer", "momentum"))

    def test_gzipped_test_data(self):
        self.assert_same_numbers(self.train("notebook-gz", "--iterations", 3, data=self.data_gz), self.data_gz)

    def test_list_shows_the_notebook_layout(self):
        r = run(READER, self.train("notebook-list", "--iterations", 1), "--list")
        self.assertEqual(r.returncode, 0, r.stderr)
        for line in ("W1  float32 [64, 784]", "b1  float32 [64, 1]", "W2  float32 [10, 64]", "b2  float32 [10, 1]",
                     "# spec: dense64,relu,dense10", "# layout: columns", "# normalization: divisor=255 mean=0 std=1"):
            self.assertIn(line + "\n", r.stdout)

    def test_refuses_a_convolutional_network_naming_the_layer(self):
        checkpoint = self.train("cnn", "--model", "conv4k3p1,relu,pool2,flatten,dense10", "--iterations", 1)
        r = run(READER, checkpoint, "--data", self.data)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("layer 'conv4k3p1'", r.stderr)

    def test_refuses_a_safetensors_file_that_is_not_a_gradgraph_checkpoint(self):
        path = os.path.join(self.tmp.name, "plain.st")
        header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
        r = run(READER, path, "--data", self.data)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a gradgraph checkpoint", r.stderr)


def main():
    global READER, MNIST_TRAIN, MNIST_EVAL
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    READER, MNIST_TRAIN, MNIST_EVAL = sys.argv[1:]
    # The reader runs under its shebang's /usr/bin/python3: without python3-numpy this is a failure.
    probe = run(READER, "--help")
    if probe.returncode != 0:
        sys.exit(f"FAIL: {READER} --help failed (is python3-numpy installed? scripts/install-deps installs it):\n"
                 f"{probe.stderr}")
    unittest.main(argv=[sys.argv[0], "-v"])


if __name__ == "__main__":
    main()
