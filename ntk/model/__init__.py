"""Pure-torch model core: tokenizer, config, encoder, heads, checkpoints, runtime."""
from .checkpoint import load_model, save_model
from .config import NTConfig, preset_config
from .nt import ModelOutput, NucleotideTransformer
from .tokenizer import NucleotideTokenizer

__all__ = [
           "ModelOutput",
           "NTConfig",
           "NucleotideTokenizer",
           "NucleotideTransformer",
           "load_model",
           "preset_config",
           "save_model",
]
