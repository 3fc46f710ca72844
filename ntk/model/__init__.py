"""Pure-torch model core: tokenizer, config, encoder, heads, checkpoints, runtime."""
from .checkpoint import load_model, save_model
from .config import NTConfig, preset_config
from .nt import ModelOutput, NucleotideTransformer
from .ntv3 import NTv3, NTv3Output, NTv3Tokenizer
from .ntv3_config import NTv3Config
from .tokenizer import NucleotideTokenizer

__all__ = [
           "ModelOutput",
           "NTConfig",
           "NTv3",
           "NTv3Config",
           "NTv3Output",
           "NTv3Tokenizer",
           "NucleotideTokenizer",
           "NucleotideTransformer",
           "load_model",
           "preset_config",
           "save_model",
]
