"""Parameters and GFLOPs per slice of a configured model.

    python -m medseg.tools.model_info --config config/_base_/models/swin_base_paper.yml [-o ...]
    python -m medseg.tools.model_info --config a.yml b.yml --markdown   # one table row per config
    python -m medseg.tools.model_info --config x.yml --train_memory --slices 60  # GPU memory planner

How cost is counted (printed with the numbers): multiply-accumulates, the convention of the
Swin and ResNet papers' "FLOPs". One 1×C×H×W slice runs through the encoder and its per-slice
head with forward hooks on every convolution and linear layer; Swin's window-attention matmuls
(q·kᵀ and attn·v) are not layers, so they are added analytically. The sequence head is counted
the same way over one series of ``--seq_len`` slices, divided by that length, plus its attention
and recurrent matmuls (a GRU step is one fused operator, invisible to layer hooks; it multiplies
by each of its weight matrices once). Normalisation, activations and pooling are not counted.
(``paddle.flops`` does the same layer walk but fails under numpy 2 — it calls ``int()`` on
1-element arrays — hence the few lines of hooks here.)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import paddle
import paddle.nn as nn
from paddle.nn.layer.rnn import RNNBase

from medseg.config import Config
from medseg.models.classifier import ICHSequenceClassifier
from medseg.models.encoders.swin import SwinTransformer
from medseg.models.heads.base import SequenceHead
from medseg.utils.cli import ArgumentParser, run_cli

COUNTING = (
    "GFLOPs = 1e9 multiply-accumulates per slice: conv + linear layers over one slice through the "
    "encoder and per-slice head (+ Swin window-attention matmuls, counted analytically), plus the "
    "sequence head per slice (a series of {seq_len} slices / {seq_len}, + its attention and recurrent matmuls); "
    "norms, activations and pooling not counted."
)


@dataclass
class ModelInfo:
    name: str
    encoder: str
    img_size: int
    params: int
    encoder_params: int
    head_params: int
    encoder_gflops: float
    head_gflops: float
    in_chans: int = 3

    @property
    def gflops(self) -> float:
        return self.encoder_gflops + self.head_gflops


def _count(layer: nn.Layer) -> int:
    return sum(int(p.numel()) for p in layer.parameters())


def _conv_linear_macs(net: nn.Layer, *inputs: paddle.Tensor) -> int:
    """MACs of every Conv2D and Linear layer during one forward of ``net(*inputs)``."""
    total = [0]

    def on_conv(layer: nn.Conv2D, _inp, out: paddle.Tensor) -> None:
        kh, kw = layer._kernel_size
        total[0] += int(out.numel()) * (layer._in_channels // layer._groups) * kh * kw

    def on_linear(layer: nn.Linear, _inp, out: paddle.Tensor) -> None:
        total[0] += int(out.numel()) * int(layer.weight.shape[0])

    handles = []
    for layer in net.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            handles.append(layer.register_forward_post_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_post_hook(on_linear))
    try:
        with paddle.no_grad():
            net(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _head_attention_macs(head: SequenceHead, seq_len: int) -> int:
    """q·kᵀ and attn·v of every attention layer, for the whole series."""
    layers = [m for m in head.sublayers() if isinstance(m, nn.MultiHeadAttention)]
    return sum(2 * seq_len * seq_len * m.embed_dim for m in layers)


def _head_recurrent_macs(head: SequenceHead, seq_len: int) -> int:
    """Input and hidden matmuls of every recurrent layer (GRU, LSTM, simple RNN), for the whole
    series: each step multiplies by every weight matrix of every layer and direction once. The
    forward hooks miss them: Paddle runs the cells inside one fused operator."""
    weights = {}
    for layer in head.sublayers():
        if isinstance(layer, RNNBase):
            weights.update((id(p), int(p.numel())) for n, p in layer.named_parameters() if n.rsplit(".", 1)[-1].startswith("weight"))
    return seq_len * sum(weights.values())


def model_info(model: ICHSequenceClassifier, img_size: int, in_chans: int = 3, seq_len: int = 40, name: str = "") -> ModelInfo:
    """Count parameters and per-slice GMACs of ``model`` (runs one slice and one series)."""
    model.eval()
    encoder = model.encoder
    enc_macs = _conv_linear_macs(encoder, paddle.zeros([1, in_chans, img_size, img_size]))
    if isinstance(encoder, SwinTransformer):
        enc_macs += encoder.attention_matmul_macs()
    head_macs = 0.0
    if model.head is not None:
        series = _conv_linear_macs(model.head, paddle.zeros([1, seq_len, encoder.feature_dim]), paddle.ones([1, seq_len], dtype="bool"))
        head_macs = (series + _head_attention_macs(model.head, seq_len) + _head_recurrent_macs(model.head, seq_len)) / seq_len
    enc_name = type(encoder).__name__
    detail = getattr(encoder, "variant", None) or getattr(encoder, "arch", None)
    return ModelInfo(
        name=name,
        encoder=f"{enc_name}({detail})" if detail else enc_name,
        img_size=img_size,
        params=_count(model),
        encoder_params=_count(encoder),
        head_params=_count(model.head) if model.head is not None else 0,
        encoder_gflops=enc_macs / 1e9,
        head_gflops=head_macs / 1e9,
        in_chans=in_chans,
    )


GPU_SIZES_GB = (16, 24, 32, 40, 80)
USABLE_FRACTION = 0.9  # CUDA context, cuDNN workspaces and allocator fragmentation take the rest
OPTIMIZER_SLOTS = {"Momentum": 1, "SGD": 0, "Adam": 2, "AdamW": 2, "Lamb": 2}
MEMORY_NOTE = (
    "Activations are measured, not modelled: every tensor autograd keeps for the backward pass "
    "(paddle.autograd.saved_tensors_hooks, parameters excluded, shared buffers once) in one training "
    "forward of a {a}- and a {b}-slice series, extrapolated linearly to the series length. "
    "Recompute keeps each chunk's input and features and rebuilds one chunk ({chunk} slices) at a time. "
    "O1/O2 count every activation in 16 bit (a lower bound for O1, whose float32 ops keep some in 32 bit). "
    "Weights + gradients + optimiser state: fp32/O1 4+4+4*k bytes per trainable parameter, O2 2+2 plus "
    "float32 master weights 4 and state 4*k (k = {slots} slots of {opt}). A GPU fits if the total is at most "
    "{usable:.0%} of it."
)


@dataclass
class MemoryPlan:
    """Training memory per precision for one series of ``slices`` slices (batch 1)."""

    slices: int
    chunk_size: int
    optimizer: str
    slots: int
    params: int
    trainable: int
    per_slice_bytes: float  # saved activations per slice, float32, without recompute
    fixed_bytes: float  # activations that do not grow with the series (head, loss)
    encoder_per_slice_bytes: float  # of which the encoder's, per slice
    chunk_keep_bytes: float  # kept per slice with recompute: encoder input + features
    rows: list[dict] = field(default_factory=list)


def _saved_bytes(model: nn.Layer, *inputs: paddle.Tensor) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one training forward."""
    buffers: dict[int, int] = {}

    def pack(tensor):
        if not tensor.persistable:  # parameters are persistable; counted as weights
            buffers[tensor.data_ptr()] = int(tensor.numel()) * tensor.element_size()
        return tensor

    with paddle.autograd.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(*inputs)
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        sum(o.astype("float32").sum() for o in outputs)  # the loss's own saved tensors are negligible
    return sum(buffers.values())


def _series(n: int, in_chans: int, img_size: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    return paddle.rand([1, n, in_chans, img_size, img_size]), paddle.ones([1, n], dtype="bool")


def plan_train_memory(model: ICHSequenceClassifier, img_size: int, slices: int, optimizer: str = "Momentum",
                      in_chans: int = 3, probe: tuple[int, int] = (2, 4)) -> MemoryPlan:
    """Measure activations of ``model`` on two short series and plan a ``slices``-slice step."""
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r} for the memory plan; known: {', '.join(OPTIMIZER_SLOTS)}")
    encoder = model.encoder
    recompute, chunk = encoder.recompute, encoder.chunk_size
    encoder.recompute, encoder.chunk_size = False, None  # measure the plain graph
    try:
        model.train()
        a, b = probe
        full = [_saved_bytes(model, *_series(n, in_chans, img_size)) for n in probe]
        enc = [_saved_bytes(encoder, paddle.rand([n, in_chans, img_size, img_size])) for n in probe]
    finally:
        encoder.recompute, encoder.chunk_size = recompute, chunk
    per_slice = (full[1] - full[0]) / (b - a)
    fixed = max(0.0, full[0] - a * per_slice)
    enc_per_slice = (enc[1] - enc[0]) / (b - a)
    keep = (in_chans * img_size * img_size + encoder.feature_dim) * 4  # chunk input + features, float32
    params = sum(int(p.numel()) for p in model.parameters())
    trainable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    plan = MemoryPlan(slices, chunk or slices, optimizer, OPTIMIZER_SLOTS[optimizer], params, trainable,
                      per_slice, fixed, enc_per_slice, keep)
    frozen = params - trainable
    for precision, act_scale in (("fp32", 1.0), ("O1 fp16/bf16", 0.5), ("O2 fp16/bf16", 0.5)):
        if precision.startswith("O2"):
            static = 2 * params + (2 + 4 + 4 * plan.slots) * trainable
        else:
            static = 4 * frozen + (4 + 4 + 4 * plan.slots) * trainable
        for use_recompute in (False, True):
            act = fixed + slices * per_slice
            if use_recompute:
                rebuilt = min(plan.chunk_size, slices) * enc_per_slice
                act = fixed + slices * (per_slice - enc_per_slice) + slices * keep + rebuilt
            total = static + act * act_scale
            fits = [gb for gb in GPU_SIZES_GB if total <= USABLE_FRACTION * gb * 2**30]
            plan.rows.append({"precision": precision, "recompute": use_recompute, "static_gb": static / 2**30,
                              "activations_gb": act * act_scale / 2**30, "total_gb": total / 2**30, "fits": fits})
    return plan


def format_plan(plan: MemoryPlan, name: str) -> str:
    lines = [f"config: {name}",
             f"  training memory for one series of {plan.slices} slices (batch 1), optimizer {plan.optimizer}; "
             f"{plan.params / 1e6:.2f} M parameters, {plan.trainable / 1e6:.2f} M trained",
             f"  activations (float32): {plan.per_slice_bytes / 2**20:.1f} MB per slice (encoder "
             f"{plan.encoder_per_slice_bytes / 2**20:.1f} MB) + {plan.fixed_bytes / 2**20:.1f} MB fixed",
             "  | precision | recompute | weights+grads+optimizer (GB) | activations (GB) | total (GB) | fits (GB GPUs) |",
             "  |---|---|---|---|---|---|"]
    for row in plan.rows:
        fits = ", ".join(str(g) for g in row["fits"]) or "none"
        lines.append(f"  | {row['precision']} | {'yes' if row['recompute'] else 'no'} | {row['static_gb']:.2f} | "
                     f"{row['activations_gb']:.2f} | {row['total_gb']:.2f} | {fits} |")
    lines.append(MEMORY_NOTE.format(a=2, b=4, chunk=plan.chunk_size, slots=plan.slots, opt=plan.optimizer,
                                    usable=USABLE_FRACTION))
    return "\n".join(lines)


def model_in_chans(model: nn.Layer) -> int:
    """The input channels the model's encoder takes (3, or 3(2k+1) with ``neighbours: k``)."""
    return int(getattr(getattr(model, "encoder", None), "in_chans", 3))


def config_img_size(cfg: Config, default: int = 224) -> int:
    """The slice size the model is built for: ``model.encoder.img_size`` if set."""
    size = cfg.get("model.encoder.img_size")
    return int(size) if size else default


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m medseg.tools.model_info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", required=True, help="YAML file(s) with a model: section")
    parser.add_argument("-o", "--opts", action="append", default=[], help="override key=value (repeatable)")
    parser.add_argument("--img_size", type=int, default=None, help="slice size if the config does not fix it (default 224)")
    parser.add_argument("--in_chans", type=int, default=None,
                        help="input channels per slice (default: the model's, 3 x (2k + 1) with the config's neighbours: k)")
    parser.add_argument("--seq_len", type=int, default=40, help="series length for the sequence head's share")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table row per config")
    parser.add_argument("--train_memory", action="store_true",
                        help="estimate GPU training memory per precision, with and without recompute")
    parser.add_argument("--slices", type=int, default=60, help="series length for --train_memory")
    args = parser.parse_args(argv)
    if args.train_memory:
        if args.slices < 1:
            parser.error("--slices must be >= 1")
        return run_cli(lambda: memory_report(args))
    return run_cli(lambda: report(args))


def memory_report(args: argparse.Namespace) -> None:
    """Plan each config's training memory (``--train_memory``) and print the table."""
    for path in args.config:
        cfg = Config(path, args.opts)
        model = cfg.build("model")
        plan = plan_train_memory(model, args.img_size or config_img_size(cfg), args.slices,
                                 cfg.get("optimizer.type", "Momentum"), args.in_chans or model_in_chans(model))
        print(format_plan(plan, path))


def report(args: argparse.Namespace) -> None:
    """Build each config's model and print its table (or markdown rows)."""
    infos = []
    for path in args.config:
        cfg = Config(path, args.opts)
        img_size = args.img_size or config_img_size(cfg)
        model = cfg.build("model")
        in_chans = args.in_chans or model_in_chans(model)
        infos.append(model_info(model, img_size, in_chans, args.seq_len, name=path))
        del model
    if args.markdown:
        print("| config | encoder | input | params (M) | GFLOPs / slice |")
        print("|---|---|---|---|---|")
        for i in infos:
            print(f"| `{i.name}` | {i.encoder} | {i.img_size} px | {i.params / 1e6:.2f} | {i.gflops:.2f} |")
    else:
        for i in infos:
            print(f"config: {i.name}")
            print(f"  encoder: {i.encoder}, input {i.in_chans}x{i.img_size}x{i.img_size}")
            print(
                f"  parameters: {i.params / 1e6:.2f} M total = encoder with per-slice head {i.encoder_params / 1e6:.2f} M "
                f"+ sequence head {i.head_params / 1e6:.2f} M ({i.params:,})"
            )
            print(f"  GFLOPs per slice: {i.gflops:.3f} (encoder {i.encoder_gflops:.3f} + sequence head {i.head_gflops:.4f})")
    print(COUNTING.format(seq_len=args.seq_len))


if __name__ == "__main__":
    sys.exit(main())
