"""ntk: run Nucleotide Transformer and SegmentNT models over whole genomes."""
__version__ = "0.1.0"

from .errors import NtkError  # noqa: E402
from .model import ModelOutput, NTConfig, NucleotideTokenizer, NucleotideTransformer, load_model, save_model  # noqa: E402

__all__ = ["__version__", "load_model", "save_model", "NTConfig", "NucleotideTokenizer", "NucleotideTransformer",
           "ModelOutput", "NtkError"]
