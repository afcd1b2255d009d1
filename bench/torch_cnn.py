#!/usr/bin/python3
"""The reference CNN trained in PyTorch, for timing gradgraph's convolutional networks against it.

The network (NCHW, float32), as gradgraph's spec
conv32k3p1,relu,pool2,conv64k3p1,relu,pool2,flatten,dense128,relu,dropout0.25,dense10:
  conv 1->32 3x3 pad 1, ReLU, max-pool 2 | conv 32->64 3x3 pad 1, ReLU, max-pool 2 |
  flatten, dense 3136->128, ReLU, dropout 0.25 | dense 128->10
trained with softmax cross-entropy (mean over the batch) and Adam (lr 1e-3, betas 0.9/0.999,
eps 1e-8), batch 128 (469 steps an epoch, the last of 96), pixels / 255, shuffled every epoch.
Weights are PyTorch's default initialisation. A few warm-up steps run first, untimed, and the
weights and optimizer are then put back to where they started; the timed epochs include the
shuffle and the gather of every batch (index_select from the pre-loaded data), as gradgraph's do.

Needs Debian's python3-torch and python3-numpy: run it with /usr/bin/python3, not another
python3 on PATH. scripts/bench-torch-cnn runs it beside gradgraph's mnist-train.

  /usr/bin/python3 bench/torch_cnn.py --data ~/.cache/gradgraph/mnist --threads 2 --epochs 1

It prints what the reader needs to know about this PyTorch (version, its threads, whether oneDNN
alias MKL-DNN is there for the convolutions, which BLAS it loaded) on lines starting with '#',
one line per epoch, and last a result line that scripts/bench-torch-cnn reads:
  result: framework=pytorch threads=2 epochs=1 seconds_per_epoch=... images_per_second=... test_accuracy=... ...
DIR holds the four MNIST IDX files (raw, or gzipped as NAME.gz; NAME wins, as in gradgraph).
"""
import argparse
import copy
import os
import sys
import time

from peer_common import (Failure, blas_libraries, busy_seconds, import_peers, own_seconds,
                         positive_int, read_mnist, run)

PROG = 'torch_cnn.py'


def parse_args():
    ap = argparse.ArgumentParser(prog=PROG, description='Time the reference CNN for one or more epochs in PyTorch.')
    ap.add_argument('--data', required=True, help='directory with the four MNIST IDX files')
    ap.add_argument('--threads', type=positive_int, default=os.cpu_count() or 1,
                    help='torch.set_num_threads(N) (default: all cores); inter-op threads are always 1')
    ap.add_argument('--epochs', type=positive_int, default=1, help='timed epochs (default 1)')
    ap.add_argument('--batch-size', type=positive_int, default=128)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--warmup', type=int, default=5, help='untimed training steps before the timed epochs (default 5)')
    ap.add_argument('--seed', type=int, default=33)
    return ap.parse_args()


def load(np, torch, data, part):
    """Images as a float32 tensor (N, 1, H, W) scaled by 1/255, labels as int64 (N)."""
    images, labels = read_mnist(np, data, part)
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255)).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def main():
    a = parse_args()
    np, torch, blas_env = import_peers(a.threads, ('BLIS_NUM_THREADS', 'OPENBLAS_NUM_THREADS'))
    import torch.nn as nn

    # Inter-op threads must be set before any parallel work starts.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    t0 = time.perf_counter()
    x_train, y_train = load(np, torch, a.data, 'train')
    x_test, y_test = load(np, torch, a.data, 'test')
    n = x_train.shape[0]
    if tuple(x_train.shape[1:]) != (1, 28, 28):
        raise Failure(f'{a.data}: images are {tuple(x_train.shape[2:])}, the reference CNN needs 28x28')
    load_s = time.perf_counter() - t0

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()  # softmax cross-entropy, mean over the batch
    adam = dict(lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    opt = torch.optim.Adam(model.parameters(), **adam)

    print(f'# torch {torch.__version__} ({torch.__file__}), numpy {np.__version__}, python {sys.version.split()[0]} '
          f'({sys.executable})')
    for line in [l for l in torch.__config__.parallel_info().splitlines() if l.strip()][:8]:
        print(f'#   {line.strip()}')
    mkldnn = torch.backends.mkldnn.is_available()
    print(f'# mkldnn (oneDNN) available: {mkldnn}; enabled: {torch.backends.mkldnn.enabled}; '
          f'convolutions use {"oneDNN" if mkldnn and torch.backends.mkldnn.enabled else "ATen im2col + BLAS GEMM"}')
    print('# BLAS environment: ' + ' '.join(f'{k}={v}' for k, v in blas_env.items()))
    print(f'# data: {n} training and {x_test.shape[0]} test images from {a.data} ({load_s:.2f} s to load)')

    steps_per_epoch = (n + a.batch_size - 1) // a.batch_size
    gen = torch.Generator().manual_seed(a.seed)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        return logits, loss

    # Warm-up: lets oneDNN/BLAS set up their kernels and the allocator its blocks; then back to
    # the initial weights and a fresh optimizer, so the timed epochs train as from the start.
    model.train()
    if a.warmup > 0:
        initial = copy.deepcopy(model.state_dict())
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            idx = torch.randint(0, n, (a.batch_size,), generator=gen)
            step(x_train.index_select(0, idx), y_train.index_select(0, idx))
        warm_s = time.perf_counter() - t0
        model.load_state_dict(initial)
        opt = torch.optim.Adam(model.parameters(), **adam)
        print(f'# warm-up: {a.warmup} steps in {warm_s:.2f} s (not timed); BLAS and threading libraries loaded: '
              + ', '.join(blas_libraries()))

    total_s = 0.0
    busy0, own0 = busy_seconds(), own_seconds()
    for epoch in range(a.epochs):
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            xb = x_train.index_select(0, idx)
            yb = y_train.index_select(0, idx)
            logits, loss = step(xb, yb)
            with torch.no_grad():
                loss_sum += loss.detach() * yb.shape[0]
                correct += int((logits.argmax(1) == yb).sum())
        epoch_s = time.perf_counter() - t0
        total_s += epoch_s
        if not torch.isfinite(loss_sum):
            raise Failure(f'the loss became non-finite in epoch {epoch + 1}')
        print(f'Epoch {epoch + 1}/{a.epochs} | loss {float(loss_sum) / n:.4f} | train {100.0 * correct / n:.2f}% | '
              f'{n / epoch_s:.0f} images/s | {epoch_s:.1f} s ({steps_per_epoch} steps, '
              f'{1e3 * epoch_s / steps_per_epoch:.1f} ms/step)', flush=True)

    # Other processes' CPUs during the timed epochs: the timings are only as good as this is small.
    busy1, own1 = busy_seconds(), own_seconds()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / total_s if busy0 is not None and busy1 is not None else -1
    print(f'# timed epochs: this process used {(own1 - own0) / total_s:.2f} CPUs, other processes {others:.2f} CPUs'
          + (' (NOISY: the machine was not idle)' if others > 0.1 else ''))

    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        hits = 0
        for i in range(0, x_test.shape[0], 1000):
            hits += int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
    accuracy = 100.0 * hits / x_test.shape[0]
    print(f'Accuracy: {accuracy:.2f} % (test set, {time.perf_counter() - t0:.2f} s, not timed)')
    per_epoch = total_s / a.epochs
    print(f'result: framework=pytorch threads={a.threads} epochs={a.epochs} seconds_per_epoch={per_epoch:.3f} '
          f'images_per_second={n / per_epoch:.0f} test_accuracy={accuracy:.2f} steps_per_epoch={steps_per_epoch} '
          f'train_images={n} other_cpus={others:.2f} torch={torch.__version__} mkldnn={"on" if mkldnn else "off"}', flush=True)


if __name__ == '__main__':
    run(PROG, main)
