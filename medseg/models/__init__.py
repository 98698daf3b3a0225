"""Models: slice encoders (Swin, paddle.vision CNNs), sequence heads, the ICH classifier.

Importing this package registers every component (``medseg.registry`` imports it to find them).
"""

from medseg.models.classifier import ICHSequenceClassifier
from medseg.models.encoders.base import SliceEncoder
from medseg.models.encoders.cnn import CNNEncoder
from medseg.models.encoders.swin import SwinTransformer
from medseg.models.heads.bagged import BaggedSequenceHead
from medseg.models.heads.base import SequenceHead
from medseg.models.heads.bigru import BiGRUSequenceHead
from medseg.models.heads.mlp import SliceMLPHead
from medseg.models.heads.transformer import TransformerSequenceHead
from medseg.models.precomputed import PrecomputedEncoder
from medseg.models.weights import load_pretrained

__all__ = [
    "BaggedSequenceHead",
    "BiGRUSequenceHead",
    "CNNEncoder",
    "ICHSequenceClassifier",
    "SequenceHead",
    "SliceMLPHead",
    "SliceEncoder",
    "SwinTransformer",
    "TransformerSequenceHead",
    "PrecomputedEncoder",
    "load_pretrained",
]
