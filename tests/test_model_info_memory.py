"""The training-memory planner of ``medseg.tools.model_info`` against a hand count."""

import paddle.nn as nn

from medseg.models.classifier import ICHSequenceClassifier
from medseg.models.encoders.base import SliceEncoder
from medseg.tools import model_info


class FlatEncoder(SliceEncoder):
    """flatten → Linear(C·H·W, D) → ReLU: what autograd keeps is countable by hand."""

    def __init__(self, pixels: int, width: int, chunk_size: int):
        super().__init__(feature_dim=width, chunk_size=chunk_size)
        self.fc = nn.Linear(pixels, width)

    def forward_features(self, x):
        return nn.functional.relu(self.fc(x.flatten(1)))


def test_the_plan_matches_a_hand_count():
    c, size, width, slices, chunk = 3, 4, 5, 10, 2
    pixels = c * size * size
    model = ICHSequenceClassifier(encoder=FlatEncoder(pixels, width, chunk), sequential=False)
    plan = model_info.plan_train_memory(model, size, slices, "Momentum", in_chans=c)
    # Per slice autograd keeps (float32): the encoder's input (the Linear's input), the ReLU output
    # (also the slice head's input), and for the padding mask product its two operands: the 6
    # logits and the 1-wide mask.
    assert plan.encoder_per_slice_bytes == (pixels + width) * 4
    assert plan.per_slice_bytes == (pixels + width + 6 + 1) * 4
    assert plan.fixed_bytes == 0
    params = pixels * width + width + width * 6 + 6
    assert plan.params == plan.trainable == params
    rows = {(r["precision"], r["recompute"]): r for r in plan.rows}
    gib = 2**30
    # fp32 + Momentum: weights, gradients, velocity, 4 bytes each
    assert rows[("fp32", False)]["static_gb"] * gib == 12 * params
    assert rows[("fp32", False)]["activations_gb"] * gib == slices * (pixels + width + 7) * 4
    # recompute: every chunk keeps its input and features; one chunk's activations are rebuilt at a time
    kept = slices * (6 + 1) * 4 + slices * (pixels + width) * 4 + chunk * (pixels + width) * 4
    assert rows[("fp32", True)]["activations_gb"] * gib == kept
    # O2: 16-bit weights and gradients, float32 master weights and velocity; 16-bit activations
    assert rows[("O2 fp16/bf16", False)]["static_gb"] * gib == (2 + 2 + 4 + 4) * params
    assert rows[("O2 fp16/bf16", False)]["activations_gb"] * gib == slices * (pixels + width + 7) * 2
    assert all(r["fits"] == list(model_info.GPU_SIZES_GB) for r in plan.rows)  # a few kB fit anywhere


def test_the_cli_prints_a_row_per_precision_and_the_gpus_that_fit(tmp_path, capsys):
    cfg = tmp_path / "m.yml"
    cfg.write_text("model:\n  type: ICHSequenceClassifier\n  encoder: {type: CNNEncoder, arch: mobilenet_v3_small, "
                   "scale: 0.5, img_size: 32, chunk_size: 4}\n  head: {type: BiGRUSequenceHead, hidden_size: 8, "
                   "num_layers: 1}\noptimizer: {type: AdamW}\n")
    assert model_info.main(["--config", str(cfg), "--train_memory", "--slices", "60"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.strip().startswith(("| fp32", "| O"))]
    assert len(rows) == 6 and "optimizer AdamW" in out and "2 slots of AdamW" in out
    assert all(ln.rstrip().endswith("16, 24, 32, 40, 80 |") for ln in rows)
