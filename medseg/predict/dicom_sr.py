"""The Structured Report of one predicted series: TID 1500 "Imaging Measurement Report" in a
Comprehensive 3D SR document (highdicom).

Why TID 1500: it is the DICOM template for measurements and qualitative evaluations produced
by software, highdicom builds and parses it (``hd.sr.srread``), and the viewers users connect to
a PACS (OHIF, 3D Slicer) list its measurement groups. Key-object selection (TID 2010) could
only point at slices, and a free-text report (TID 2000) is not machine-readable. The
Comprehensive 3D SR class is the one TID 1500 is written in by highdicom and OHIF.

Content, per RSNA subtype (one TID 1501 measurement group each):

- finding type: SNOMED CT "Intracranial hemorrhage" (1386000) for ``any``; the five subtypes use
  the private coding scheme ``99MEDSEG`` with the RSNA label as code value, because no SNOMED
  code table ships with pydicom or highdicom to take them from (a site can map them);
- a numeric measurement DCM 122157 "Probability", unit UCUM ``1`` (no units): the series
  maximum of the calibrated probability, as in predictions.json;
- a qualitative evaluation DCM 121052 "Presence of property": SNOMED Present when that
  maximum reaches the threshold, else Absent;
- source images: the :data:`TOP_K` slices with the highest probability of that subtype (every
  source file of a slab), those with valid UIDs (:mod:`medseg.predict.dicom_source`);
- the algorithm identification (TID 4019): config name, package version and weights' sha256,
  kind, calibration, test-time views, windows, crop and threshold as parameters.

The observer is a device whose UID derives from the weights' sha256.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from medseg.constants import LABELS
from medseg.predict.dicom_source import ModelIdentity

TOP_K = 3  # slices referenced per subtype
SCHEME = "99MEDSEG"
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
PRESENCE = hd.sr.CodedConcept("121052", "DCM", "Presence of property")


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The finding type of one RSNA label (module docstring)."""
    if label == "any":
        return hd.sr.CodedConcept.from_code(codes.SCT.IntracranialHemorrhage)
    return hd.sr.CodedConcept(label, SCHEME, f"{label} intracranial hemorrhage")


def top_rows(probs: np.ndarray, column: int, k: int = TOP_K) -> list[int]:
    """The ``k`` rows with the highest probability in ``column`` (ties: head first)."""
    return [int(i) for i in np.argsort(-probs[:, column], kind="stable")[:k]]


def _algorithm(identity: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=identity.name, version=identity.version, parameters=list(identity.parameters))


def measurement_groups(probs: np.ndarray, threshold: float, row_refs: list[list[Dataset]],
                       identity: ModelIdentity) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per label; ``row_refs[i]``: the referencable source headers of row ``i``."""
    algorithm = _algorithm(identity)
    groups = []
    for j, label in enumerate(LABELS):
        value = float(probs[:, j].max())
        sources = []
        for i in top_rows(probs, j):
            sources += [hd.sr.SourceImageForMeasurementGroup(h.SOPClassUID, h.SOPInstanceUID) for h in row_refs[i]]
        measurement = hd.sr.Measurement(name=PROBABILITY, value=value, unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
        decision = codes.SCT.Present if value >= threshold else codes.SCT.Absent
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{label} series maximum"),
            finding_type=finding_code(label), algorithm_id=algorithm, measurements=[measurement],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(PRESENCE, decision)],
            source_images=sources or None))
    return groups


def build_sr(evidence: list[Dataset], probs: np.ndarray, threshold: float,
             row_refs: list[list[Dataset]], identity: ModelIdentity, series_uid: str, sop_uid: str,
             series_number: int, description: str) -> hd.sr.Comprehensive3DSR:
    """The SR of one series. ``evidence``: the headers of every referenced instance (at least one:
    highdicom records the evidence of the document); the first also gives the patient and study
    modules (:func:`medseg.predict.dicom_source.reference_dataset`)."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid, name=identity.name[:64], manufacturer_name="medseg",
            model_name=identity.name[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.HeadCT,
        imaging_measurements=measurement_groups(probs, threshold, row_refs, identity))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence), content=report[0], series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer="medseg", is_complete=True,
        series_description=description)
    scheme = Dataset()  # SOP Common: a private coding scheme is used, so it is identified
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "medseg RSNA 2019 intracranial hemorrhage subtypes"
    scheme.CodingSchemeResponsibleOrganization = "medseg"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr
