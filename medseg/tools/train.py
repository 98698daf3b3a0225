"""Train a model from a config: ``python train.py --config config/x.yml [flags]``.

Works alone or under ``python -m paddle.distributed.launch train.py ...`` (GPU or CPU). Flags
follow the original project and PaddleSeg; the loop itself lives in ``medseg.engine.trainer``.
"""

from __future__ import annotations

import argparse
import sys

from medseg.utils.cli import ArgumentParser, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o train_dataset.dataset_root=data/x (repeatable)")
    p.add_argument("--iters", type=int, help="total iterations (overrides the config)")
    p.add_argument("--batch_size", type=int, help="series per process and step (overrides the config)")
    p.add_argument("--learning_rate", type=float, help="peak learning rate (overrides lr_scheduler.learning_rate)")
    p.add_argument("--resume_model", help="iter_N/ checkpoint directory to continue from")
    p.add_argument("--pretrained", help="weights (model.pdparams or its directory) to start from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save_interval", type=int, default=1000)
    p.add_argument("--save_dir", default="output")
    p.add_argument("--keep_checkpoint_max", type=int, default=5)
    p.add_argument("--keep_checkpoint_iter", type=int, nargs="*", default=[], help="iterations whose checkpoints are never pruned")
    p.add_argument("--num_workers", type=int, default=None,
                   help="loader worker processes per process (default: the cores each process gets on its node - 1, "
                        "at most 8; 0 loads in the training process)")
    p.add_argument("--no_shared_memory", action="store_true",
                   help="workers pass batches through pipes instead of /dev/shm (for containers with a small /dev/shm)")
    p.add_argument("--scale_lr", choices=["none", "linear", "sqrt"], default="none",
                   help="scale the config's learning rate by the number of processes N (x N or x sqrt(N)): iters and "
                        "batch_size are per process, so N processes see N x batch_size series per step")
    p.add_argument("--log_iters", type=int, default=10)
    p.add_argument("--do_eval", action="store_true", help="evaluate on val_dataset at every save; keep best_model/")
    p.add_argument("--use_vdl", action="store_true", help="write VisualDL scalars to save_dir/vdl")
    p.add_argument("--overwrite_save_dir", action="store_true")
    p.add_argument("--amp", choices=["O0", "O1", "O2"], default="O0", help="mixed precision level (GPU only)")
    p.add_argument("--amp_dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--bag", type=int, default=None, metavar="N",
                   help="train N sequence heads with seeds seed..seed+N-1 on the frozen encoder into save_dir/bag_<i>/ and "
                        "assemble them (logits averaged) in save_dir/bagged/ (overrides the config's bag; 1: no bag)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.config import Config
    from medseg.engine.trainer import TrainOptions, train
    from medseg.models.weights import check_released_input_scale

    def job() -> None:
        overrides = list(args.overrides)
        if args.iters is not None:
            overrides.append(f"iters={args.iters}")
        if args.batch_size is not None:
            overrides.append(f"batch_size={args.batch_size}")
        if args.learning_rate is not None:
            overrides.append(f"lr_scheduler.learning_rate={args.learning_rate}")
        cfg = Config(args.config, overrides)
        # --resume_model is always this project's own checkpoint (iter_N/ with optimizer and state):
        # released weights come in through --pretrained or the config's encoder.pretrained.
        check_released_input_scale(cfg, args.pretrained, cfg.get("model.encoder.pretrained"))
        opts = TrainOptions(save_dir=args.save_dir, save_interval=args.save_interval,
                            keep_checkpoint_max=args.keep_checkpoint_max, keep_checkpoint_iter=args.keep_checkpoint_iter,
                            num_workers=args.num_workers, use_shared_memory=not args.no_shared_memory,
                            scale_lr=args.scale_lr, log_iters=args.log_iters, do_eval=args.do_eval,
                            use_vdl=args.use_vdl, overwrite_save_dir=args.overwrite_save_dir, amp=args.amp,
                            amp_dtype=args.amp_dtype, seed=args.seed, resume_model=args.resume_model,
                            pretrained=args.pretrained)
        from medseg.engine.bagging import bag_size, train_bag

        bag = bag_size(cfg, args.bag)
        train_bag(cfg, opts, bag) if bag > 1 else train(cfg, opts)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
