"""Export a trained model for deployment: ``python export.py --config x.yml --model CKPT --save_dir D``.

Writes Paddle Inference graphs with a dynamic number of slices (and series) plus the padding
mask (see ``medseg.export.save`` for the layout), loadable with ``paddle.inference.Config`` /
``create_predictor`` and by ``python -m medseg.predict --model D``. ``--onnx`` also converts the
whole-model graph with paddle2onnx (if installed) and checks it with onnxruntime (if installed).
"""

from __future__ import annotations

import argparse
import sys

from medseg.utils.cli import ArgumentParser, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", "--model_path", dest="model", required=True,
                   help="training checkpoint: iter_N/ or best_model/ folder, or a model.pdparams file")
    p.add_argument("--save_dir", required=True, help="output folder (replaced only if it holds an earlier export)")
    p.add_argument("--windows", default=None, help="CENTRE/WIDTH,... the model was prepared with (default: prepare's)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx via paddle2onnx (optional dependency)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset for --onnx")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.config import Config
    from medseg.constants import DEFAULT_WINDOWS
    from medseg.data.windows import parse_windows
    from medseg.export import export_model
    from medseg.export.onnx import export_onnx
    from medseg.models.weights import check_released_input_scale

    def job() -> None:
        cfg = Config(args.config, args.overrides)
        check_released_input_scale(cfg, args.model)
        windows = parse_windows(args.windows) if args.windows else DEFAULT_WINDOWS
        result = export_model(cfg, args.model, args.save_dir, windows)
        print(f"exported to {result.save_dir} (input [B, S, {result.meta.channels}, {result.meta.height}, {result.meta.width}])")
        if args.onnx:
            report = export_onnx(result.save_dir, opset=args.opset)
            print(report)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
