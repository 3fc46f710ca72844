"""ntk: run Nucleotide Transformer and SegmentNT models over whole genomes."""
__version__ = "0.1.0"

from .errors import NtkError
from .model import ModelOutput, NTConfig, NucleotideTokenizer, NucleotideTransformer, load_model, save_model

__all__ = [
           "ModelOutput",
           "NTConfig",
           "NtkError",
           "NucleotideTokenizer",
           "NucleotideTransformer",
           "__version__",
           "load_model",
           "save_model",
]
