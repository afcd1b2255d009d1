#!/usr/bin/python3
"""The notebook network (784-64-10 MLP) trained in PyTorch, for timing gradgraph's mnist-train against it.

The network (float32): dense 784->64, ReLU, dense 64->10, softmax cross-entropy (mean over the
batch); weights He-normal (std sqrt(2 / fan_in)) and biases zero, as the notebook initialises them;
pixels / 255. Two modes:

  full batch (default): one step = forward, loss and backward over all 60000 training images, then
    plain SGD (lr 0.1), the notebook's step. --warmup untimed steps, then --steps timed ones, each
    timed on its own; the result is their median.
  --minibatch: one epoch of mini-batch SGD with momentum (torch.optim.SGD, lr 0.05, momentum 0.9),
    batch 128 (469 steps, the last of 96), shuffled: a torch.randperm per epoch and index_select
    from the pre-loaded float tensor (no DataLoader), as gradgraph gathers its batches. --warmup
    untimed steps first, after which the weights and the optimizer are put back to where they
    started; then --epochs timed epochs, whose mean is the result.

Needs Debian's python3-torch and python3-numpy: run it with /usr/bin/python3, not another python3
on PATH. scripts/bench-peers runs it beside gradgraph's mnist-train and the notebook's NumPy code.

  /usr/bin/python3 bench/torch_mlp.py --data ~/.cache/gradgraph/mnist --threads 2
  /usr/bin/python3 bench/torch_mlp.py --data ~/.cache/gradgraph/mnist --threads 2 --minibatch

It prints what the reader needs to know about this PyTorch (version, threads, which BLAS it loaded)
on lines starting with '#', and last a result line that scripts/bench-peers reads:
  result: framework=pytorch mode=fullbatch threads=2 steps=10 seconds_per_step=... other_cpus=...
  result: framework=pytorch mode=minibatch threads=2 epochs=1 seconds_per_epoch=... steps_per_epoch=469 ...
DIR holds the MNIST IDX files (raw, or gzipped as NAME.gz; NAME wins, as in gradgraph).
"""
import argparse
import copy
import os
import statistics
import sys
import time

from peer_common import (Failure, blas_libraries, busy_seconds, import_peers, nonnegative_int, own_seconds,
                         positive_int, read_mnist, run)

PROG = 'torch_mlp.py'


def parse_args():
    ap = argparse.ArgumentParser(prog=PROG, description='Time the notebook MLP (784-64-10) in PyTorch: '
                                 'full-batch SGD steps, or mini-batch momentum epochs.')
    ap.add_argument('--data', required=True, help='directory with the MNIST IDX files')
    ap.add_argument('--threads', type=positive_int, default=os.cpu_count() or 1,
                    help='torch.set_num_threads(N) (default: all cores); inter-op threads are always 1')
    ap.add_argument('--minibatch', action='store_true',
                    help='time mini-batch epochs (batch 128, SGD momentum 0.9, lr 0.05) instead of full-batch steps')
    ap.add_argument('--steps', type=positive_int, default=10, help='full batch: timed steps (default 10)')
    ap.add_argument('--epochs', type=positive_int, default=1, help='mini-batch: timed epochs (default 1)')
    ap.add_argument('--warmup', type=nonnegative_int, default=None,
                    help='untimed steps first (default: 3 full-batch, 20 mini-batch)')
    ap.add_argument('--hidden', type=positive_int, default=64)
    ap.add_argument('--batch-size', type=positive_int, default=128, help='mini-batch: examples per step (default 128)')
    ap.add_argument('--lr', type=float, default=None, help='default: 0.1 full batch, 0.05 mini-batch')
    ap.add_argument('--momentum', type=float, default=0.9, help='mini-batch: SGD momentum (default 0.9)')
    ap.add_argument('--seed', type=int, default=33)
    a = ap.parse_args()
    if a.warmup is None:
        a.warmup = 20 if a.minibatch else 3
    if a.lr is None:
        a.lr = 0.05 if a.minibatch else 0.1
    return a


def load(np, torch, data, part):
    """Images as a float32 tensor (N, 784) scaled by 1/255, labels as int64 (N)."""
    images, labels = read_mnist(np, data, part)
    if tuple(images.shape[1:]) != (28, 28):
        raise Failure(f'{data}: {part} images are {tuple(images.shape[1:])}, the notebook network needs 28x28')
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def main():
    a = parse_args()
    np, torch, blas_env = import_peers(a.threads, ('BLIS_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'))
    import torch.nn as nn

    # Inter-op threads must be set before any parallel work starts.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    t0 = time.perf_counter()
    x_train, y_train = load(np, torch, a.data, 'train')
    x_test, y_test = load(np, torch, a.data, 'test')
    n = x_train.shape[0]
    load_s = time.perf_counter() - t0

    model = nn.Sequential(nn.Linear(784, a.hidden), nn.ReLU(), nn.Linear(a.hidden, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')  # std sqrt(2 / fan_in), the notebook's
            layer.bias.zero_()
    loss_fn = nn.CrossEntropyLoss()  # softmax cross-entropy, mean over the batch
    sgd = dict(lr=a.lr, momentum=a.momentum) if a.minibatch else dict(lr=a.lr)
    opt = torch.optim.SGD(model.parameters(), **sgd)

    mode = 'minibatch' if a.minibatch else 'fullbatch'
    print(f'# torch {torch.__version__} ({torch.__file__}), numpy {np.__version__}, python {sys.version.split()[0]} '
          f'({sys.executable})')
    for line in [l for l in torch.__config__.parallel_info().splitlines() if l.strip()][:8]:
        print(f'#   {line.strip()}')
    print('# BLAS environment: ' + ' '.join(f'{k}={v}' for k, v in blas_env.items()))
    print(f'# data: {n} training and {x_test.shape[0]} test images from {a.data} ({load_s:.2f} s to load)')
    print(f'# network 784-{a.hidden}-10 ReLU, softmax cross-entropy, float32; mode {mode}: '
          + (f'batch {a.batch_size}, SGD lr {a.lr} momentum {a.momentum}, shuffled' if a.minibatch
             else f'batch {n} (all), plain SGD lr {a.lr}'), flush=True)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        return logits, loss

    model.train()
    gen = torch.Generator().manual_seed(a.seed)
    if not a.minibatch:
        # Full batch: the warm-up steps are the first steps of the run (the notebook's loop has no
        # state besides the weights), then each timed step on its own.
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step(x_train, y_train)
        warm_s = time.perf_counter() - t0
        print(f'# warm-up: {a.warmup} steps in {warm_s:.2f} s (not timed); BLAS and threading libraries loaded: '
              + ', '.join(blas_libraries()), flush=True)
        times = []
        busy0, own0 = busy_seconds(), own_seconds()
        for i in range(a.steps):
            t0 = time.perf_counter()
            logits, loss = step(x_train, y_train)
            times.append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise Failure(f'the loss became non-finite at timed step {i + 1}')
        busy1, own1 = busy_seconds(), own_seconds()
        total_s = sum(times)
        with torch.no_grad():
            train_acc = 100.0 * float((logits.argmax(1) == y_train).float().mean())
        median = statistics.median(times)
        print(f'Full batch: {a.steps} timed steps, median {median:.4f} s/step (min {min(times):.4f}, '
              f'max {max(times):.4f}) | loss {float(loss):.4f} | train {train_acc:.2f}% (before the last update)',
              flush=True)
    else:
        steps_per_epoch = (n + a.batch_size - 1) // a.batch_size
        # Warm-up: lets BLAS and the allocator set up; then back to the initial weights and a fresh
        # optimizer, so the timed epochs train as from the start.
        if a.warmup > 0:
            initial = copy.deepcopy(model.state_dict())
            t0 = time.perf_counter()
            for _ in range(a.warmup):
                idx = torch.randint(0, n, (a.batch_size,), generator=gen)
                step(x_train.index_select(0, idx), y_train.index_select(0, idx))
            warm_s = time.perf_counter() - t0
            model.load_state_dict(initial)
            opt = torch.optim.SGD(model.parameters(), **sgd)
            print(f'# warm-up: {a.warmup} steps in {warm_s:.2f} s (not timed); BLAS and threading libraries loaded: '
                  + ', '.join(blas_libraries()), flush=True)
        total_s = 0.0
        busy0, own0 = busy_seconds(), own_seconds()
        for epoch in range(a.epochs):
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
                  f'{n / epoch_s:.0f} images/s | {epoch_s:.2f} s ({steps_per_epoch} steps, '
                  f'{1e3 * epoch_s / steps_per_epoch:.2f} ms/step)', flush=True)
        busy1, own1 = busy_seconds(), own_seconds()

    # Other processes' CPUs during the timed part: the timings are only as good as this is small.
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / total_s if busy0 is not None and busy1 is not None else -1
    print(f'# timed part: this process used {(own1 - own0) / total_s:.2f} CPUs, other processes {others:.2f} CPUs'
          + (' (NOISY: the machine was not idle)' if others > 0.1 else ''))

    model.eval()
    with torch.no_grad():
        accuracy = 100.0 * float((model(x_test).argmax(1) == y_test).float().mean())
    print(f'Accuracy: {accuracy:.2f} % (test set, not timed)')
    if a.minibatch:
        per_epoch = total_s / a.epochs
        print(f'result: framework=pytorch mode=minibatch threads={a.threads} epochs={a.epochs} '
              f'seconds_per_epoch={per_epoch:.4f} steps_per_epoch={steps_per_epoch} train_images={n} '
              f'test_accuracy={accuracy:.2f} other_cpus={others:.2f} torch={torch.__version__}', flush=True)
    else:
        print(f'result: framework=pytorch mode=fullbatch threads={a.threads} steps={a.steps} '
              f'seconds_per_step={median:.5f} train_images={n} test_accuracy={accuracy:.2f} '
              f'other_cpus={others:.2f} torch={torch.__version__}', flush=True)


if __name__ == '__main__':
    run(PROG, main)
