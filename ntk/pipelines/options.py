"""Typed options of the genome-scale inference jobs (beside ``PretrainOptions`` / ``FinetuneOptions``).

The CLI builds one object per command; under torchrun every rank runs ``dataclasses.replace(opts, output=part,
shard=(rank + 1, world), device=..., force=True)``. The jobs' keyword entry points (``segment_genome``,
``tracks_genome``, ``write_embeddings``, ``score_variants``) build these objects, so Python callers and the CLI
run the same code. ``model`` is a checkpoint directory, a preset name, a loaded model, or None (the embedded
default model). Hooks that report progress are arguments of the run functions, not options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..io.segments import DEFAULT_MERGE_GAP
from ..io.tracks import DEFAULT_BEDGRAPH_DIGITS

PathLike = str | os.PathLike


@dataclass
class SegmentOptions:
    """``ntk segment`` / ``ntk tracks``: a genome -> per-nucleotide tracks (``pipelines/segment.py``)."""

    fasta: PathLike
    out_dir: PathLike | None                 # None: --bedgraph to a stream only
    model: object = None                     # str | PathLike | loaded model | None (embedded default)
    regions: list[str] = field(default_factory=list)  # -r chr:start-end (1-based inclusive)
    regions_file: str | None = None          # -R BED
    chr_map: str | None = None
    features: list[str] | None = None        # None: all of the model's (tracks: track ids)
    window: int | None = None                # None: the model's default window
    crop: int | None = None
    rc_average: bool = False
    blend: str = "linear"
    threshold: float = 0.5
    min_length: int = 1
    merge_gap: int = DEFAULT_MERGE_GAP
    bedgraph: str | None = None              # a feature streamed as bedGraph
    bedgraph_digits: int | None = DEFAULT_BEDGRAPH_DIGITS
    zoom_levels: int = 10
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    threads: int | None = None
    compile: str = "off"                     # --compile: off, on, cudagraphs (ntk/model/compiled.py)
    force: bool = False
    command: str | None = None               # the command line, for run.json
    shard: tuple[int, int] | None = None
    resume: bool = False
    resume_chunk_bp: int | None = None
    species: str | None = None               # NTv3 post-trained models
    head: str = "bed"                        # NTv3: "bed" (segment) or "bigwig" (tracks)


@dataclass
class EmbedOptions:
    """``ntk embed``: FASTA records or regions of a reference -> one embedding per record (``pipelines/embed.py``).
    Inputs: ``input`` (a FASTA, ``-`` = stdin), or ``regions``/``regions_file`` of ``reference``."""

    output: PathLike
    input: str | None = None
    reference: str | None = None
    regions: list[str] = field(default_factory=list)
    regions_file: str | None = None
    chr_map: str | None = None
    model: object = None
    layers: list | None = None               # None: the last layer (NTv3: the final per-base embedding)
    pool: str = "mean"
    rc_average: bool = False
    fmt: str = "parquet"
    species: str | None = None
    window: int | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    threads: int | None = None
    compile: str = "off"                     # --compile: off, on, cudagraphs (ntk/model/compiled.py)
    shard: tuple[int, int] | None = None
    chunk_tokens: int | None = None
    resume: bool = False
    force: bool = False


@dataclass
class ScoreOptions:
    """``ntk score-variants``: a VCF -> zero-shot scores in the VCF and/or a table (``pipelines/score_variants.py``)."""

    vcf: str
    reference: object                        # path, or an open IndexedFasta
    output: str | None = "-"                 # annotated VCF (- = stdout, None = none)
    table: str | None = None                 # Parquet, one row per (record, ALT)
    model: object = None
    scores: object = None                    # comma-separated string or list; None: all the model supports
    window: int | None = None
    rc_average: bool = False
    segment_radius: int = 500
    regions: list[str] = field(default_factory=list)
    regions_file: str | None = None
    chr_map: object = None                   # a file, or a {vcf name: fasta name} dict
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    token_budget: int | None = None
    threads: int | None = None
    compile: str = "off"                     # --compile: off, on, cudagraphs (ntk/model/compiled.py)
    shard: tuple[int, int] | None = None
    force: bool = False
    progress: bool = False                   # a progress bar on stderr
    command: str | None = None
    chunk_size: int = 4096
    resume: bool = False
    species: str | None = None
