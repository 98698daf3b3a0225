"""``medseg-listen --ae_title A --port P --model M [--config C] --out DIR [--forward AE@host:port] [--allow AE ...]``

A DICOM node: a Storage SCP for CT images that predicts each study once it has arrived (when
the sending association ends, or after ``--quiet_seconds`` without a new file), writes
``DIR/results/<study key>/`` (predictions.csv/json, report.html and ``dicom/``: the Structured
Report and the Secondary Capture series) and, with ``--forward``, C-STOREs the DICOM results
to the PACS. It binds 127.0.0.1 unless ``--host`` says otherwise, accepts only the calling AE
titles of ``--allow`` when given, logs one line per study (also to ``DIR/node.log``), and after
a restart predicts every study it had received but not finished. Ctrl-C or SIGTERM: stop
listening, finish the study being predicted, exit 0 (a second one exits at once; the journal
brings the rest back at the next start). ``--port 0``: any free port (logged).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from medseg.utils.cli import ArgumentParser, run_cli

# Read before paddle is imported: paddle sets OMP_NUM_THREADS=1 when it is unset.
_ENV_THREADS = os.environ.get("OMP_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-listen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae_title", required=True, help="the node's AE title (the called AE title senders must use)")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--model", required=True, nargs="+", help="training checkpoint or exported model folder; several: averaged")
    p.add_argument("--config", help="experiment config (default for an exported model: its config.yml)")
    p.add_argument("--out", required=True, help="folder for received files, journal and results (nothing is written elsewhere)")
    p.add_argument("--forward", help="send the DICOM results to this peer, AE@host:port (e.g. ORTHANC@127.0.0.1:4242)")
    p.add_argument("--allow", nargs="+", metavar="AE", help="accept associations from these calling AE titles only")
    p.add_argument("--quiet_seconds", type=float, default=30.0,
                   help="predict a study after this many seconds without a new file even if its association is still open")
    p.add_argument("--threshold", type=float, default=0.5, help="probability that flags a slice (report, SR decisions)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: OMP_NUM_THREADS or all cores)")
    args = p.parse_args(argv)
    if not 0 <= args.port < 65536:
        p.error(f"--port must lie in [0, 65535], got {args.port}")
    return args


def serve(args: argparse.Namespace) -> None:
    """Run the node until SIGINT/SIGTERM, then end the process (:func:`exit_now`)."""
    from medseg.node.forward import Destination
    from medseg.node.service import Node, predictor_loader
    from medseg.utils.logger import get_logger, setup_logger

    forward = Destination.parse(args.forward) if args.forward else None
    threads = args.threads or int(_ENV_THREADS or os.cpu_count() or 1)
    load, expected = predictor_loader(args.config, args.model, args.threshold, threads)
    node = Node(args.out, args.ae_title, load, forward, args.allow, args.quiet_seconds, expected)  # checks the titles
    out = node.store.root
    setup_logger(os.path.join(out, "node.log"), rank=0)
    for name in ("pynetdicom", "highdicom"):  # their INFO is a line per PDU or module copied; the node logs per study
        logging.getLogger(name).setLevel(logging.WARNING)
    logger = get_logger("node")

    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        if stop.is_set():  # the second one: every write is atomic and the journal resumes the rest
            logger.warning("%s again: exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info("%s: stopping (the study being predicted is finished first)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    port = node.start(args.host, args.port)
    logger.info("listening as %s on %s:%d (model loaded in %.1f s; allow: %s; forward: %s; results in %s)",
                node.scp.ae_title, args.host, port, node.worker.load_seconds, " ".join(node.scp.allow) or "any AE",
                forward or "none", out)
    while not stop.wait(0.5):
        pass
    node.stop()
    logger.info("stopped")
    exit_now(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: serve(args))


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: once the node has stopped (journal and results
    written, logs flushed) Paddle's own teardown adds seconds to every Ctrl-C or service stop."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
