"""DICOM node latency: a synthetic 40-slice study sent to the node, time from its last file
received to its results stored in a real PACS (Debian's Orthanc), on 2 cores; then 3 studies
sent at once.

The node (``medseg.node.service.Node``, what ``medseg-listen`` runs) serves in this process with
the demo model (config/demo_cpu.yml; ``--model`` a trained checkpoint, else untrained weights of
that config, whose probabilities near 0.5 flag every slice: the capture series then has one image
per slice, the most the node ever sends) and forwards to a throw-away Orthanc
(``medseg.node.orthanc``). A sender C-STOREs the study and releases the association; the clock
starts when the last file's C-STORE is answered (the node has stored it) and stops when Orthanc
holds every DICOM result of the study (polled through its REST API). The first study after the
node starts pays one-off costs (lazy imports, first model call); the target is on the second,
the steady state of a node that serves for days, and both are printed. Then three studies are
sent at once from three associations: none may be lost, each must be predicted and stored.
At toy size the second single study is left out and two studies are sent at once.
Targets: ≤ 10 s to results in Orthanc; 3 studies at once, all finished. Exits 1 when a target is
missed (``--no_fail`` or ``BENCH_NO_FAIL=1``: 0). The first line printed is the provenance
(``bench/provenance.py``); ``--toy`` (or ``BENCH_TOY=1``): small studies, to check the bench runs
(its numbers mean nothing).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python bench/node_bench.py [--slices 40] [--size 512] [--model CKPT] [--toy]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

from provenance import provenance_line  # bench/*.py: this script's folder is on sys.path
from targets import finish, no_fail_default, toy_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "config", "demo_cpu.yml")
TARGET_S = 10.0
FULL = {"slices": 40, "size": 512, "at_once": 3}
TOY = {"slices": 6, "size": 64, "at_once": 2}  # --toy / BENCH_TOY=1 (and no second single study); a flag given wins
NODE_AE, SENDER_AE, PACS_AE = "MEDSEG", "BENCH", "ORTHANC"
POLL_S = 0.02
TIMEOUT_S = 600


def untrained_checkpoint(config: str, folder: str) -> str:
    import paddle

    from medseg.config import Config

    paddle.seed(0)
    os.makedirs(folder)
    paddle.save(Config(config).build("model").state_dict(), os.path.join(folder, "model.pdparams"))
    return folder


def send_study(files: list[str], port: int) -> float:
    """C-STORE the files, release; returns ``perf_counter()`` when the last file was answered."""
    from medseg.node.forward import Destination, send_files

    statuses = send_files(files, Destination(NODE_AE, "127.0.0.1", port), SENDER_AE)
    last = time.perf_counter()
    if statuses != [0] * len(files):
        raise RuntimeError(f"the node refused files: {sorted(set(statuses))}")
    return last


def wait_in_pacs(node, pacs, study_uid: str) -> tuple[float, dict]:
    """``(perf_counter() when Orthanc holds every DICOM result of the study, journal)``."""
    from medseg.node.storage import study_key

    key, end = study_key(study_uid), time.perf_counter() + TIMEOUT_S
    while time.perf_counter() < end:
        record = node.store.journal(key) or {}
        if record.get("state") == "failed":
            raise RuntimeError(f"study {key} failed: {record.get('reason')}")
        expected = len(record.get("dicom_files", [])) if record.get("state") in ("forwarding", "done") else 0
        if expected and sum(len(s["Instances"]) for s in pacs.study_series(study_uid)) == expected:
            return time.perf_counter(), record
        time.sleep(POLL_S)
    raise RuntimeError(f"study {key}: results not in Orthanc after {TIMEOUT_S} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, help=f"default {FULL['slices']} (--toy {TOY['slices']})")
    p.add_argument("--size", type=int, help=f"default {FULL['size']} (--toy {TOY['size']})")
    p.add_argument("--at_once", type=int, help=f"studies sent at once, default {FULL['at_once']} (--toy {TOY['at_once']})")
    p.add_argument("--model", help="trained checkpoint of --config (default: untrained weights of it)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--toy", action="store_true", default=toy_default(),
                   help="toy size (also BENCH_TOY=1): checks the bench runs, its numbers mean nothing")
    p.add_argument("--no_fail", action="store_true", default=no_fail_default(), help="exit 0 even if a target is missed")
    args = p.parse_args()
    print(provenance_line(), flush=True)
    for key, value in (TOY if args.toy else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import logging

    import pydicom

    from medseg.node.demo_study import write_demo_study
    from medseg.node.forward import Destination
    from medseg.node.orthanc import Orthanc
    from medseg.node.service import Node, predictor_loader

    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="node_bench_") as work:
        model = args.model or untrained_checkpoint(args.config, os.path.join(work, "ckpt"))
        studies = [write_demo_study(os.path.join(work, f"study{i}"), seed=2019, index=i, slices=args.slices, size=args.size)
                   for i in range(2 + args.at_once)]
        uids = [str(pydicom.dcmread(s[0], stop_before_pixels=True).StudyInstanceUID) for s in studies]
        with Orthanc(PACS_AE, modalities={"medseg": (NODE_AE, "127.0.0.1", 1)}) as pacs:
            load, expected = predictor_loader(args.config, [model], threads=args.threads)
            node = Node(os.path.join(work, "out"), NODE_AE, load, Destination(PACS_AE, "127.0.0.1", pacs.dicom_port),
                        expected_errors=expected)
            tic = time.perf_counter()
            port = node.start()
            start_s = time.perf_counter() - tic
            try:
                single = []
                for i in (0,) if args.toy else (0, 1):  # cold, then warm
                    last = send_study(studies[i], port)
                    stored, record = wait_in_pacs(node, pacs, uids[i])
                    single.append((stored - last, record))
                lasts: dict[int, float] = {}
                senders = [threading.Thread(target=lambda i=i: lasts.__setitem__(i, send_study(studies[i], port)))
                           for i in range(2, 2 + args.at_once)]
                for t in senders:
                    t.start()
                for t in senders:
                    t.join()
                together = [wait_in_pacs(node, pacs, uids[i]) for i in range(2, 2 + args.at_once) if i in lasts]
            finally:
                node.stop(TIMEOUT_S)
        received = [r["files"] for _, r in together]
    objects = len(single[-1][1]["dicom_files"])
    print(f"node, {args.slices}-slice {args.size}² studies, demo model ({os.path.relpath(args.config, ROOT)}, "
          f"{'checkpoint ' + args.model if args.model else 'untrained weights'}), {args.threads} threads, forwarding "
          f"to Orthanc" + (" -- toy size: checks the bench runs, the numbers mean nothing" if args.toy else ""))
    print(f"node start (model load) {start_s:.2f} s; {objects} DICOM result objects per study")
    for name, (seconds, record) in zip(("first study after start", "second study"), single):
        print(f"{name:<24} last file received → results in Orthanc {seconds:6.2f} s "
              f"(predict {record.get('predict_seconds', float('nan')):.2f} s)")
    n = args.at_once
    if together:
        print(f"{n} studies at once: {len(together)} of {n} finished, files received {received}, "
              f"last file → all results in Orthanc {max(t for t, _ in together) - max(lasts.values()):.2f} s")
    name = "second study" if len(single) > 1 else "first study"
    checks = [
        (f"results in Orthanc ≤ {TARGET_S:g} s after the last file ({name}: {single[-1][0]:.2f} s)",
         single[-1][0] <= TARGET_S),
        (f"{n} studies at once: all finished, none lost ({len(together)} of {n}, files {received})",
         len(together) == n and received == [args.slices] * n),
    ]
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
