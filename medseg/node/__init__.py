"""A DICOM node (``medseg-listen``): receive CT studies over the network, predict each with one
model in memory, store the results and forward the DICOM outputs to a PACS.

Modules: :mod:`~medseg.node.storage` (received files and the per-study journal),
:mod:`~medseg.node.scp` (the Storage SCP and its answers), :mod:`~medseg.node.worker` (the
queue and the prediction thread), :mod:`~medseg.node.forward` (the C-STORE SCU),
:mod:`~medseg.node.service` (the node assembled), :mod:`~medseg.node.listen` (the command).
"""
