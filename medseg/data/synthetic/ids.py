"""RSNA-style identifiers (``ID_<hex>``) that are unique by construction.

Random hex strings collide by the birthday effect (about 7 % for 100 000 slices of 9 hex digits),
so each identifier is instead a keyed pseudo-random permutation (a 4-round Feistel network) of a
counter: distinct counters give distinct, random-looking IDs, computed from the seed and the
series index alone.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Slot width per series in the slice counter; series never exceed 80 slices.
SLICES_PER_SERIES_SLOT = 128
_ROUNDS = 4


def _permute(value: int, bits: int, key: str) -> int:
    """Bijection of [0, 2**bits) (``bits`` even) keyed by ``key``."""
    half = bits // 2
    mask = (1 << half) - 1
    if not 0 <= value < (1 << bits):
        raise ValueError(f"identifier counter {value} does not fit in {bits} bits")
    left, right = value >> half, value & mask
    for round_index in range(_ROUNDS):
        digest = hashlib.blake2b(f"{key}/{round_index}/{right}".encode(), digest_size=8).digest()
        left, right = right, left ^ (int.from_bytes(digest, "little") & mask)
    return (left << half) | right


def patient_id(seed: int, patient_index: int) -> str:
    return f"ID_{_permute(patient_index, 32, f'{seed}/patient'):08x}"


def study_id(seed: int, series_index: int) -> str:
    return f"ID_{_permute(series_index, 40, f'{seed}/study'):010x}"


def series_id(seed: int, series_index: int) -> str:
    return f"ID_{_permute(series_index, 40, f'{seed}/series'):010x}"


def sop_ids(seed: int, series_index: int, n_slices: int) -> list[str]:
    """SOPInstanceUIDs (= file stems) of one series, 9 hex digits like the Kaggle files."""
    if n_slices > SLICES_PER_SERIES_SLOT:
        raise ValueError(f"a series has at most {SLICES_PER_SERIES_SLOT} slices, got {n_slices}")
    base = series_index * SLICES_PER_SERIES_SLOT
    return [f"ID_{_permute(base + k, 36, f'{seed}/sop'):09x}" for k in range(n_slices)]


# Patients: most have one study, some two or three (as in RSNA, where a patient can be rescanned).
_STUDIES_PER_PATIENT = (1, 2, 3)
_STUDIES_PER_PATIENT_P = (0.8, 0.15, 0.05)
_BLOCK = 1024


def patient_indices(seed: int, n_series: int) -> np.ndarray:
    """Patient index of each of the first ``n_series`` series (a prefix of one endless stream).

    The stream of group sizes is drawn in fixed blocks from its own generator, so the patient of
    series ``i`` does not depend on how many series the cohort has.
    """
    rng = np.random.default_rng([seed, 2])
    owners: list[np.ndarray] = []
    total, next_patient = 0, 0
    while total < n_series:
        sizes = rng.choice(_STUDIES_PER_PATIENT, size=_BLOCK, p=_STUDIES_PER_PATIENT_P)
        owners.append(np.repeat(np.arange(next_patient, next_patient + _BLOCK), sizes))
        total += int(sizes.sum())
        next_patient += _BLOCK
    return np.concatenate(owners)[:n_series]


def patient_index(seed: int, series_index: int) -> int:
    return int(patient_indices(seed, series_index + 1)[series_index])
