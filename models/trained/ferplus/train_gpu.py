"""How the FER+ default was trained: a wide teacher on FER+ vote distributions, distilled into
fer_edge_cnn, on one GPU with PyTorch (the GPU machine had PyTorch and no TensorFlow).

This is the record of a run, not part of the package: fer-train (TensorFlow, converter/train.py)
is the trainer users run, and `fer-train --ferplus-votes` trains the same targets on a CPU.
The student here is exactly fer-train's `build_model()` (same layers, names, BatchNorm epsilon),
so port_weights.py copies its weights into that Keras model for fer-convert.

    python train_gpu.py --data DIR --out DIR --role teacher --seed 0
    python train_gpu.py --data DIR --out DIR --role student --seed 0 --teachers OUT/teacher0_probs.npy ...

DIR holds train_u8.xz (the Training rows of fer2013.csv as n*48*48 uint8, xz) and meta.npz
(`votes`: FER+'s ten vote columns per row; `fer2013_label`). Targets: each face's votes over the
seven emotions, as shares (FER+'s "PLD"). Contempt votes are left out of the shares (no output
can say contempt); faces whose FER+ majority is contempt, unknown or not-a-face are dropped.
Validation: 10% of those Training faces, stratified by majority (seed 0); PublicTest is never read.
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

KAGGLE_ORDER = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# FER+ columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
FERPLUS_COLUMN = {"neutral": 0, "happy": 1, "surprise": 2, "sad": 3, "angry": 4, "disgust": 5, "fear": 6}
EMOTION_COLUMNS = [FERPLUS_COLUMN[name] for name in KAGGLE_ORDER]
STAGES = (32, 64, 128, 192)
VAL_FRACTION, SPLIT_SEED = 0.1, 0


def load(data: Path, limit: int = 0):
    raw = lzma.decompress((data / "train_u8.xz").read_bytes())
    images = np.frombuffer(raw, np.uint8).reshape(-1, 48, 48)
    meta = np.load(data / "meta.npz")
    votes = meta["votes"].astype(np.float32)
    if limit:  # smoke test: the first rows only
        images, votes = images[:limit], votes[:limit]
    top = votes.argmax(1)
    kept = np.isin(top, EMOTION_COLUMNS)  # majority is one of the seven (ties resolved below)
    shares = votes[:, EMOTION_COLUMNS]
    shares = shares / np.maximum(shares.sum(1, keepdims=True), 1)
    # majority label in KAGGLE_ORDER, -1 where the top vote is tied (kept for training, not scored)
    ties = (votes == votes.max(1, keepdims=True)).sum(1) > 1
    majority = np.where(ties, -1, shares.argmax(1))
    idx = np.flatnonzero(kept)
    rng = np.random.default_rng(SPLIT_SEED)
    val = []
    strata = np.where(majority[idx] < 0, 7, majority[idx])
    for c in np.unique(strata):
        members = idx[strata == c]
        val.append(rng.choice(members, size=int(round(len(members) * VAL_FRACTION)), replace=False))
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(idx, val)
    return images, shares.astype(np.float32), majority, train, val


# --------------------------------------------------------------------------- networks

class EdgeCNN(nn.Module):
    """fer-train's build_model(): per stage two conv3x3-BN-ReLU, 2x2 max-pool between stages,
    global average pooling, dropout, dense. BatchNorm epsilon 1e-3 as in Keras, so weights port exactly."""

    def __init__(self, stages=STAGES, dropout=0.4, n_classes=7):
        super().__init__()
        self.names, layers, c_in = [], [], 1
        for s, c in enumerate(stages):
            for j in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, eps=1e-3, momentum=0.01),
                           nn.ReLU(inplace=True)]
                self.names.append(f"s{s + 1}_conv{j + 1}")
                c_in = c
            if s < len(stages) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x):
        return self.head(self.drop(self.features(x).mean((2, 3))))

    def keras_weights(self) -> dict[str, np.ndarray]:
        """Weights under Keras layer/variable names (conv kernels HWIO, dense kernel (in, out))."""
        out, convs = {}, [m for m in self.features if isinstance(m, nn.Conv2d)]
        bns = [m for m in self.features if isinstance(m, nn.BatchNorm2d)]
        for name, conv, bn in zip(self.names, convs, bns):
            bn_name = name.replace("conv", "bn")
            out[f"{name}/kernel"] = conv.weight.detach().permute(2, 3, 1, 0).cpu().numpy()
            out[f"{bn_name}/gamma"] = bn.weight.detach().cpu().numpy()
            out[f"{bn_name}/beta"] = bn.bias.detach().cpu().numpy()
            out[f"{bn_name}/moving_mean"] = bn.running_mean.detach().cpu().numpy()
            out[f"{bn_name}/moving_variance"] = bn.running_var.detach().cpu().numpy()
        out["emotion/kernel"] = self.head.weight.detach().t().cpu().numpy()
        out["emotion/bias"] = self.head.bias.detach().cpu().numpy()
        return {k: v.astype(np.float32) for k, v in out.items()}


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)), inplace=True)
        return F.relu(self.b2(self.c2(y)) + self.skip(x), inplace=True)


class ResNet18(nn.Module):
    """The teacher: ResNet-18 with a 3x3 stride-1 stem and no stem pooling, for 48x48 faces."""

    def __init__(self, width=64, n_classes=7):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(1, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
        blocks, c = [], w[0]
        for i, wi in enumerate(w):
            blocks += [Block(c, wi, 1 if i == 0 else 2), Block(wi, wi, 1)]
            c = wi
        self.blocks = nn.Sequential(*blocks)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.head(self.drop(self.blocks(self.stem(x)).mean((2, 3))))


# --------------------------------------------------------------------------- training

def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x: (n, 1, 48, 48) float in [0, 1]. Flip, rotation, zoom, shift (one affine warp with
    reflection), brightness, contrast, and a random erased square: all on the GPU, batched."""
    n, dev = x.shape[0], x.device
    r = lambda lo, hi: torch.rand(n, device=dev, generator=gen) * (hi - lo) + lo  # noqa: E731
    angle = r(-15, 15) * math.pi / 180
    scale = r(0.85, 1.15)
    flip = torch.where(torch.rand(n, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, r(-0.1, 0.1) * 2], 1),
                         torch.stack([sin * flip, cos, r(-0.1, 0.1) * 2], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * r(0.7, 1.3).view(n, 1, 1, 1) + mean + r(-0.2, 0.2).view(n, 1, 1, 1)
    # random erasing: a 12-20 px square on half the faces
    side = torch.randint(12, 21, (n,), device=dev, generator=gen)
    cy, cx = (torch.randint(0, 48, (n,), device=dev, generator=gen) for _ in range(2))
    ys = torch.arange(48, device=dev).view(1, 48, 1)
    xs = torch.arange(48, device=dev).view(1, 1, 48)
    box = ((ys - cy.view(n, 1, 1)).abs() * 2 < side.view(n, 1, 1)) & ((xs - cx.view(n, 1, 1)).abs() * 2 < side.view(n, 1, 1))
    box &= (torch.rand(n, device=dev, generator=gen) < 0.5).view(n, 1, 1)
    x = x.masked_fill(box.unsqueeze(1), 0.0)
    return x.clamp(0, 1)


@torch.no_grad()
def predict(model, images_u8: torch.Tensor, mirror: bool, batch=2048) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        x = images_u8[i:i + batch].float().unsqueeze(1) / 255
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
            p = model(x).float().softmax(1)
            if mirror:
                p = (p + model(x.flip(3)).float().softmax(1)) / 2
        out.append(p)
    return torch.cat(out)


def majority_accuracy(probs: torch.Tensor, majority: torch.Tensor) -> float:
    scored = majority >= 0
    return float((probs[scored].argmax(1) == majority[scored]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--role", choices=["teacher", "student"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--budget", type=float, default=0, help="seconds; fewer epochs if one epoch says so")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--teachers", type=Path, nargs="*", default=[], help="teacher *_probs.npy to distil")
    ap.add_argument("--alpha", type=float, default=0.7, help="target = alpha*teachers + (1-alpha)*votes")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: the first N rows only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    images, shares, majority, train_idx, val_idx = load(args.data, args.limit)
    targets = torch.from_numpy(shares).to(dev)
    if args.teachers:
        teacher = torch.from_numpy(np.mean([np.load(p) for p in args.teachers], axis=0)).to(dev)
        targets = args.alpha * teacher + (1 - args.alpha) * targets
    all_u8 = torch.from_numpy(images.copy()).to(dev)
    maj = torch.from_numpy(majority).to(dev)
    tr = torch.from_numpy(train_idx).to(dev)
    va = torch.from_numpy(val_idx).to(dev)

    model = (ResNet18() if args.role == "teacher" else EdgeCNN()).to(dev).to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999),
                                              use_buffers=True)
    if args.role == "teacher":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr or 0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr or 3e-3, weight_decay=0.05)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    steps_per_epoch = len(train_idx) // args.batch
    epochs, started, log = args.epochs, time.time(), []
    step, total = 0, epochs * steps_per_epoch
    warmup = 2 * steps_per_epoch
    epoch = 0
    while epoch < epochs:
        model.train()
        t0 = time.time()
        order = tr[torch.randperm(len(tr), device=dev, generator=gen)]
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            lr_scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
            for g in opt.param_groups:
                g["lr"] = (args.lr or (0.1 if args.role == "teacher" else 3e-3)) * lr_scale
            x = augment(all_u8[idx].float().unsqueeze(1) / 255, gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x)
            loss = -(targets[idx] * F.log_softmax(logits.float(), 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            loss_sum += float(loss) if b % 50 == 0 else 0.0
            step += 1
        epoch += 1
        seconds = time.time() - t0
        if epoch == 1 and args.budget:
            # the schedule needs its length up front: size it from the first epoch
            epochs = max(2, min(epochs, int(args.budget / max(seconds, 1e-3))))
            total = epochs * steps_per_epoch
        if epoch % 5 == 0 or epoch == epochs:
            val = majority_accuracy(predict(model, all_u8[va], False), maj[va])
            val_ema = majority_accuracy(predict(ema.module, all_u8[va], False), maj[va])
            log.append({"epoch": epoch, "of": epochs, "seconds": round(seconds, 2), "val": val, "val_ema": val_ema})
            print(json.dumps(log[-1]), flush=True)
    chosen = ema.module if log[-1]["val_ema"] >= log[-1]["val"] else model
    tag = f"{args.role}{args.seed}"
    summary = {"role": args.role, "seed": args.seed, "epochs": epochs, "train_faces": int(len(train_idx)),
               "val_faces": int(len(val_idx)), "val_majority": majority_accuracy(predict(chosen, all_u8[va], False), maj[va]),
               "val_majority_mirror": majority_accuracy(predict(chosen, all_u8[va], True), maj[va]),
               "chose": "ema" if chosen is ema.module else "last", "teachers": [p.name for p in args.teachers],
               "alpha": args.alpha if args.teachers else None, "seconds": round(time.time() - started, 1),
               "torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
               "log": log}
    (args.out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)
    if args.role == "teacher":
        # mirror-averaged probabilities for every face: the soft targets a student distils
        np.save(args.out / f"{tag}_probs.npy", predict(chosen, all_u8, True).cpu().numpy().astype(np.float32))
    else:
        np.savez(args.out / f"{tag}_keras_weights.npz", **chosen.keras_weights())


if __name__ == "__main__":
    main()
