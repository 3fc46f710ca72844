"""``ntk chat``: ask ChatNT questions about DNA sequences; one answer per FASTA record, BED region or question row.

A *job* is one prompt: a question with one ``<DNA>`` placeholder per sequence, and those sequences. Jobs come
from a FASTA (one job per record, the same question), regions of an indexed reference (one per region;
minus-strand regions are reverse-complemented) or a ``--questions`` file (TSV with a header, or JSON lines;
per row ``question`` plus ``sequence(s)``, ``region(s)`` or ``record(s)``, optional ``name``).

The question is wrapped in the model's prompt template (the reference notebook's "A chat between ... USER:
{question} ASSISTANT:" unless ``config.json`` says otherwise; ``raw_prompt`` skips it), tokenized with the
checkpoint's English tokenizer, right-padded with ``</s>`` to the model's English length, and answered with
:meth:`ntk.model.chatnt.ChatNT.generate` (greedy, KV cache). A prompt whose tokens plus K*R DNA rows plus
``max_new_tokens`` do not fit the English length is refused (the reference would silently truncate it), as
is a sequence longer than the DNA encoder's context. Sampling seeds are per job (``seed + job index``), so
answers do not depend on ``--batch-size`` or ``--shard``.

Rows ``name question answer`` go to a TSV (stdout or file) or a Parquet file, written atomically.

``run_chat(ChatOptions(...))`` is the whole command (``ntk chat`` builds the options and prints the summary): it
checks the inputs, loads the model, builds the jobs (or reads questions from a terminal) and writes the answers.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ..errors import InputError, NtkError
from ..io.fasta import IndexedFasta, iter_fasta, normalise_sequence
from ..io.intervals import Interval, iter_regions, parse_region, read_chr_map
from ..model.chat_tokenizer import SEQ_PLACEHOLDER
from ..model.tokenizer import reverse_complement

SCHEMA = {"name": pl.String, "question": pl.String, "answer": pl.String}


@dataclass
class ChatOptions:
    """``ntk chat``: the model, where sequences and questions come from, generation settings and the output.
    Sequences: ``fasta`` records, or ``regions``/``regions_file`` of ``reference``; questions: ``question`` (one for
    every sequence), a ``questions`` file, or neither (read interactively from a terminal)."""

    model: object = None                 # a ChatNT directory (``ntk models convert chatnt``) or a loaded model
    fasta: str | None = None             # '-' = stdin; with ``questions``: the records its rows name
    question: str | None = None          # with one <DNA> placeholder per sequence
    questions: str | None = None         # TSV with a header or JSON lines, one prompt per row ('-' = stdin)
    reference: str | None = None         # indexed genome FASTA for regions and region columns
    regions: list[str] = field(default_factory=list)  # -r chr:start-end (1-based inclusive)
    regions_file: str | None = None      # -R BED ('-' = stdin)
    chr_map: str | None = None
    output: str = "-"                    # '-' (TSV on stdout), OUT.tsv or OUT.parquet
    max_new_tokens: int = 64
    temperature: float = 0.0             # 0: greedy
    top_p: float = 1.0
    seed: int = 0                        # job i samples with seed + i
    raw_prompt: bool = False             # the question is the whole prompt (no chat template)
    use_cache: bool | None = None        # False: recompute the whole prompt for every token (--no-kv-cache)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None        # None: 8 on CUDA, else 1
    threads: int | None = None
    shard: tuple[int, int] | None = None
    force: bool = False


@dataclass
class ChatJob:
    name: str
    question: str
    sequences: list[tuple[str, str]]  # (label for messages, uppercase DNA)
    where: str = ""  # "FILE row N" / "record X" for error messages


@dataclass
class ChatStats:
    jobs: int = 0
    batches: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.generate_seconds if self.generate_seconds else 0.0


def count_placeholders(question: str) -> int:
    return question.count(SEQ_PLACEHOLDER)


def check_question(question: str, n_sequences: int, where: str) -> None:
    k = count_placeholders(question)
    if k == 0:
        raise InputError(f"{where}: the question has no {SEQ_PLACEHOLDER} placeholder; put one where the sequence "
                         f"goes, e.g. \"Is this sequence a promoter? {SEQ_PLACEHOLDER}\"")
    if k != n_sequences:
        more = "more" if k > n_sequences else "fewer"
        hint = (" (one FASTA record or region per prompt; use --questions for several sequences per question)"
                if n_sequences == 1 else "")
        raise InputError(f"{where}: the question has {k} {SEQ_PLACEHOLDER} placeholders, {more} than its "
                         f"{n_sequences} sequence(s){hint}")


# ------------------------------------------------------------------------------------------------
# job sources

def fasta_jobs(path: str, question: str) -> Iterator[ChatJob]:
    check_question(question, 1, "-q")
    for rec in iter_fasta(path):
        yield ChatJob(rec.name, question, [(rec.name, rec.sequence)], f"{path}: record {rec.name}")


def _region_sequence(fasta: IndexedFasta, iv: Interval) -> tuple[str, str]:
    if iv.chrom not in fasta.lengths:
        raise InputError(f"region {iv.region_string()}: unknown contig {iv.chrom!r} in {fasta.path}")
    seq = fasta.fetch(iv.chrom, iv.start, iv.end)
    if iv.strand == "-":
        seq = reverse_complement(seq)
    name = iv.name if iv.name not in (".", "") else iv.region_string()
    return name, seq


def region_jobs(fasta: IndexedFasta, intervals: Iterable[Interval], question: str) -> Iterator[ChatJob]:
    check_question(question, 1, "-q")
    for iv in intervals:
        name, seq = _region_sequence(fasta, iv)
        yield ChatJob(name, question, [(name, seq)], f"region {iv.region_string()}")


def _split_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x).strip() for x in v if str(x).strip()]
    return [x.strip() for x in str(v).split(",") if x.strip()]


def _question_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a TSV-with-header or JSON-lines questions file."""
    fh = sys.stdin if path == "-" else None
    label = "<stdin>" if path == "-" else path
    if fh is None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: questions file not found")
        fh = open(p, encoding="utf-8", errors="replace")
    try:
        lines = iter(fh)
        first, first_no = None, 0
        for line in lines:
            first_no += 1
            if line.strip() and not line.startswith("#"):
                first = line
                break
        if first is None:
            return
        if first.lstrip().startswith("{"):
            def jsonl():
                yield first_no, first
                yield from enumerate(lines, first_no + 1)

            for n, line in jsonl():
                if not line.strip() or line.startswith("#"):
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{label} line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{label} line {n}: expected a JSON object per line")
                yield n, row
        else:
            header = [h.strip().lower() for h in first.rstrip("\r\n").split("\t")]
            if "question" not in header:
                raise InputError(f"{label} line {first_no}: the header needs a 'question' column (TSV with a header "
                                 "line: question, sequence(s) | region(s) | record(s), optional name; or JSON lines)")
            reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
            for n, cells in enumerate(reader, first_no + 1):
                if not cells or not "".join(cells).strip() or cells[0].startswith("#"):
                    continue
                if len(cells) > len(header):
                    raise InputError(f"{label} line {n}: {len(cells)} columns but the header has {len(header)}")
                yield n, dict(zip(header, cells))
    finally:
        if fh is not sys.stdin:
            fh.close()


def question_jobs(path: str, records: Callable[[str], str] | None = None,
                  reference: IndexedFasta | None = None) -> Iterator[ChatJob]:
    """Jobs of a ``--questions`` file. ``records(name)`` looks up FASTA records (``record(s)`` columns),
    ``reference`` resolves ``region(s)`` (1-based ``chr:start-end``)."""
    label = "<stdin>" if path == "-" else path
    for n, row in _question_rows(path):
        where = f"{label} line {n}"
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"{where}: empty or missing question")
        seqs: list[tuple[str, str]] = []
        given = [k for k in ("sequence", "sequences", "region", "regions", "record", "records") if row.get(k)]
        if not given:
            raise InputError(f"{where}: no sequence (give a sequence(s), region(s) or record(s) column/key)")
        if len({k.rstrip("s") for k in given}) > 1:
            raise InputError(f"{where}: give sequences one way only (found {', '.join(given)})")
        for k in given:
            for i, item in enumerate(_split_list(row[k]), 1):
                if k.startswith("sequence"):
                    seqs.append((f"sequence {i}", normalise_sequence(item, f"{where}: sequence {i}")))
                elif k.startswith("region"):
                    if reference is None:
                        raise InputError(f"{where}: regions need the genome: --reference GENOME.fa")
                    try:
                        seqs.append(_region_sequence(reference, parse_region(item, reference.lengths)))
                    except InputError as e:
                        raise InputError(f"{where}: {e}") from None
                else:
                    if records is None:
                        raise InputError(f"{where}: records need the FASTA they come from: -f SEQS.fa")
                    seqs.append((item, records(item)))
        check_question(q, len(seqs), where)
        name = str(row.get("name") or "").strip()
        if not name:
            named = any(k.startswith(("region", "record")) for k in given)
            name = ",".join(s[0] for s in seqs) if named else f"row{n}"
        yield ChatJob(name, q, seqs, where)


def fasta_lookup(path: str) -> Callable[[str], str]:
    """Record name -> sequence for a FASTA file (read once into memory)."""
    recs = {}
    for rec in iter_fasta(path):
        if rec.name in recs:
            raise InputError(f"{path}: record name {rec.name!r} appears twice")
        recs[rec.name] = rec.sequence

    def get(name: str) -> str:
        if name not in recs:
            raise InputError(f"{path}: no record named {name!r}")
        return recs[name]

    return get


# ------------------------------------------------------------------------------------------------
# answering

@dataclass
class _Prepared:
    job: ChatJob
    english: list[int]
    bio: list[np.ndarray]


@dataclass
class ChatEngine:
    """Turns jobs into answers with one loaded ChatNT model."""

    model: object
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    raw_prompt: bool = False
    use_cache: bool | None = None
    stats: ChatStats = field(default_factory=ChatStats)

    def __post_init__(self):
        m = self.model
        if getattr(getattr(m, "config", None), "family", None) != "ChatNT":
            raise NtkError(f"{getattr(m, 'source', 'the model')}: not a ChatNT checkpoint (ntk chat needs one: "
                           "-m DIR of `ntk models convert chatnt`)")
        if m.english_tokenizer is None:
            raise NtkError(m.english_tokenizer_problem)
        if self.max_new_tokens < 1:
            raise NtkError("--max-new-tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise NtkError("--temperature must be >= 0 and --top-p in (0, 1]")

    def prompt(self, question: str) -> str:
        if self.raw_prompt:
            return question
        return self.model.config.prompt_template.replace("{question}", question)

    def prepare(self, job: ChatJob) -> _Prepared:
        cfg = self.model.config
        ids = self.model.english_tokenizer.encode_prompt(self.prompt(job.question))
        K = len(job.sequences)
        if sum(1 for i in ids if i == cfg.seq_token_id) != K:
            raise InputError(f"{job.where}: the prompt template or tokenizer changed the number of {SEQ_PLACEHOLDER} "
                             f"placeholders (expected {K})")
        L, R = cfg.english_max_length, cfg.resampled_length
        need = len(ids) + K * R + self.max_new_tokens
        if need > L - 1:
            raise InputError(f"{job.where}: the prompt ({len(ids)} tokens) + {K}x{R} DNA embeddings + "
                             f"--max-new-tokens {self.max_new_tokens} need {need} positions, more than the "
                             f"{L - 1} the model's English length of {L} allows: shorten the question or lower "
                             "--max-new-tokens")
        bio = []
        tok = self.model.bio_tokenizer
        for label, seq in job.sequences:
            label = "" if K == 1 and job.where.endswith(label) else f"{label}: "
            if not seq:
                raise InputError(f"{job.where}: {label}empty sequence")
            try:
                t = tok.tokenize(seq)[0]
            except ValueError as e:
                raise InputError(f"{job.where}: {label}{e}") from None
            if len(t) > cfg.bio_max_tokens:
                raise InputError(f"{job.where}: {label}{len(seq):,} nt make {len(t):,} tokens; the ChatNT DNA encoder "
                                 f"takes at most {cfg.bio_max_tokens:,} (CLS included, about "
                                 f"{(cfg.bio_max_tokens - 1) * tok.k:,} nt): cut the sequence into shorter pieces")
            bio.append(t)
        return _Prepared(job, ids, bio)

    def answer(self, batch: list[_Prepared], first_index: int) -> list[str]:
        """Answers of prepared jobs that share their number of sequences K."""
        m, cfg = self.model, self.model.config
        B, K, L = len(batch), len(batch[0].bio), cfg.english_max_length
        eng = np.full((B, L), cfg.english_pad_id, dtype=np.int64)
        Lb = max(len(t) for p in batch for t in p.bio)
        bio = np.full((B, K, Lb), cfg.bio_pad_id, dtype=np.int64)
        for b, p in enumerate(batch):
            eng[b, : len(p.english)] = p.english
            for k, t in enumerate(p.bio):
                bio[b, k, : len(t)] = t
        t0 = time.perf_counter()
        seeds = [self.seed + first_index + b for b in range(B)]
        with torch.inference_mode():
            out = m.generate(eng, bio, max_new_tokens=self.max_new_tokens, use_cache=self.use_cache,
                             temperature=self.temperature, top_p=self.top_p, seed=seeds).cpu().numpy()
        if m.device.type == "cuda":
            torch.cuda.synchronize(m.device)
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.batches += 1
        answers = []
        for row in out:
            ids = row[: np.argmax(row < 0)] if (row < 0).any() else row
            self.stats.new_tokens += len(ids)
            answers.append(m.english_tokenizer.decode(ids.tolist()))
        return answers

    def run(self, jobs: Iterable[ChatJob], batch_size: int, sink: Callable[[pl.DataFrame], None],
            progress: Callable[[ChatStats], None] | None = None) -> ChatStats:
        t0 = time.perf_counter()
        pending: list[_Prepared] = []
        index = 0

        def flush():
            nonlocal index, pending
            if not pending:
                return
            answers = self.answer(pending, index)
            index += len(pending)
            sink(pl.DataFrame({"name": [p.job.name for p in pending], "question": [p.job.question for p in pending],
                               "answer": answers}, schema=SCHEMA))
            self.stats.jobs += len(pending)
            pending = []
            if progress is not None:
                progress(self.stats)

        for job in jobs:
            p = self.prepare(job)
            if pending and len(p.bio) != len(pending[0].bio):
                flush()
            pending.append(p)
            if len(pending) >= batch_size:
                flush()
        flush()
        self.stats.seconds = time.perf_counter() - t0
        return self.stats


def take_shard(jobs: list[ChatJob], shard: tuple[int, int] | None) -> list[ChatJob]:
    """The I-th of N contiguous blocks of jobs (equal counts; generation cost is per job)."""
    if shard is None:
        return jobs
    from .engine import shard_block
    lo, hi = shard_block(np.ones(len(jobs)), shard)
    return jobs[lo:hi]


def write_answers(engine: ChatEngine, jobs: Iterable[ChatJob], output: str, batch_size: int,
                  metadata: dict | None = None, progress=None) -> ChatStats:
    """Answer every job; ``output``: ``-`` (TSV on stdout), ``*.parquet`` or a TSV path (atomic)."""
    if output != "-" and output.endswith((".parquet", ".pq")):
        from ..io.tables import ParquetStreamWriter
        with ParquetStreamWriter(output, SCHEMA, metadata=metadata) as w:
            return engine.run(jobs, batch_size, w.write, progress)
    if output != "-":
        from ..io.tables import TsvStreamWriter
        with TsvStreamWriter(output) as w:
            return engine.run(jobs, batch_size, w.write, progress)
    header = [True]

    def to_stdout(df: pl.DataFrame) -> None:
        buf = io.StringIO()
        df.write_csv(buf, separator="\t", include_header=header[0], null_value=".")
        header[0] = False
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()

    return engine.run(jobs, batch_size, to_stdout, progress)


def interactive(engine: ChatEngine, sequences: list[tuple[str, str]], batch_size: int, stdin, stdout, err) -> int:
    """Read questions line by line; answer each one for every loaded sequence (one ``<DNA>`` per question),
    or once over all of them in order when the question has one placeholder per loaded sequence."""
    n_asked = 0
    err.write(f"ntk chat: {len(sequences)} sequence(s) loaded: "
              + ", ".join(s[0] for s in sequences[:5]) + (" ..." if len(sequences) > 5 else "")
              + f". Type a question with {SEQ_PLACEHOLDER} where the sequence goes; an empty line or Ctrl-D ends.\n")
    while True:
        err.write("question> ")
        err.flush()
        line = stdin.readline()
        if not line or not line.strip() or line.strip().lower() in ("quit", "exit"):
            return n_asked
        q = line.strip()
        k = count_placeholders(q)
        if k == 1:
            jobs = [ChatJob(name, q, [(name, seq)], f"sequence {name}") for name, seq in sequences]
        elif k == len(sequences) and k > 1:
            jobs = [ChatJob(",".join(s[0] for s in sequences), q, list(sequences), "question")]
        else:
            err.write(f"ntk chat: the question needs one {SEQ_PLACEHOLDER} (asked for each of the {len(sequences)} "
                      f"sequences) or exactly {len(sequences)} (all at once); it has {k}\n")
            continue

        def show(df: pl.DataFrame) -> None:
            for name, ans in zip(df["name"], df["answer"]):
                stdout.write(f"{name}\t{ans}\n")
            stdout.flush()

        try:
            engine.run(jobs, batch_size, show)
        except InputError as e:
            err.write(f"ntk: error: {e}\n")
            continue
        n_asked += 1


def check_chat_options(opts: ChatOptions, stdin_is_terminal: bool) -> bool:
    """Refuse inconsistent or missing inputs before the model loads; True when questions are read interactively
    (no ``question``/``questions``: needs a terminal on stdin)."""
    from ..io.atomic import check_writable_target

    if not opts.model:
        raise NtkError("give the ChatNT model with -m DIR (a directory written by `ntk models convert chatnt`)")
    if opts.question and opts.questions:
        raise NtkError("give either -q QUESTION or --questions FILE, not both")
    use_regions = bool(opts.regions or opts.regions_file)
    if opts.fasta and use_regions:
        raise NtkError("give sequences either as -f FASTA or as -r/-R regions with --reference, not both")
    interactive_mode = not opts.question and not opts.questions
    if interactive_mode and not stdin_is_terminal:
        raise NtkError("give a question with -q \"... <DNA> ...\" or a --questions FILE (interactive mode needs a "
                       "terminal on stdin)")
    if interactive_mode and (opts.fasta == "-" or opts.regions_file == "-"):
        raise NtkError("interactive mode reads questions from the terminal: give the sequences as a file")
    if not opts.questions and not opts.fasta and not use_regions:
        raise NtkError("give the sequences: -f SEQS.fa, or -r/-R regions with --reference GENOME.fa")
    if use_regions and not opts.reference:
        raise NtkError("-r/-R need the genome: --reference GENOME.fa")
    if (opts.reference or opts.chr_map) and not use_regions and not opts.questions:
        raise NtkError("--reference/--chr-map are for -r/-R regions (or region columns of --questions)")
    stdin_inputs = (opts.fasta, opts.questions, opts.regions_file)
    if sum(x == "-" for x in stdin_inputs) > 1:
        raise NtkError("stdin can feed only one input")
    if opts.shard and "-" in stdin_inputs:
        raise NtkError("--shard reads the whole input first to cut it into blocks: give files, not stdin")
    if opts.output != "-":
        check_writable_target(opts.output, opts.force)
    for label, path in (("FASTA", opts.fasta), ("questions file", opts.questions), ("regions file", opts.regions_file)):
        if path and path != "-" and not Path(path).is_file():
            raise InputError(f"{path}: {label} not found")
    return interactive_mode


def run_chat(opts: ChatOptions, stdin=None, stdout=None, err=None) -> ChatStats | None:
    """``ntk chat``: answer every job into ``opts.output`` and return the counts; in interactive mode (no question
    given) read questions from ``stdin`` (default ``sys.stdin``) until an empty line and return None."""
    from ..model import load_model
    from ..model.runtime import set_threads

    stdin = sys.stdin if stdin is None else stdin
    interactive_mode = check_chat_options(opts, stdin.isatty())
    ref = IndexedFasta(opts.reference) if opts.reference else None
    cmap = read_chr_map(opts.chr_map)

    def region_list() -> list[Interval]:
        return list(iter_regions(opts.regions, opts.regions_file, ref.lengths, cmap))

    set_threads(opts.threads)
    m = load_model(opts.model, device=opts.device, dtype=opts.precision)
    bs = opts.batch_size or (8 if m.device.type == "cuda" else 1)
    engine = ChatEngine(m, max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                        seed=opts.seed, raw_prompt=opts.raw_prompt, use_cache=opts.use_cache)
    use_regions = bool(opts.regions or opts.regions_file)
    if interactive_mode:
        if use_regions:
            seqs = [_region_sequence(ref, iv) for iv in region_list()]
        else:
            seqs = [(r.name, r.sequence) for r in iter_fasta(opts.fasta)]
        if not seqs:
            raise InputError("no sequences to ask about")
        interactive(engine, seqs, bs, stdin, sys.stdout if stdout is None else stdout,
                    sys.stderr if err is None else err)
        return None

    if opts.questions:
        jobs = question_jobs(opts.questions, records=fasta_lookup(opts.fasta) if opts.fasta else None, reference=ref)
    elif use_regions:
        jobs = region_jobs(ref, region_list(), opts.question)
    else:
        jobs = fasta_jobs(opts.fasta, opts.question)
    if opts.shard is not None:
        jobs = take_shard(list(jobs), opts.shard)
    shard = f"{opts.shard[0]}/{opts.shard[1]}" if opts.shard else ""
    meta = {"ntk_command": "chat", "model": str(opts.model), "max_new_tokens": opts.max_new_tokens,
            "temperature": opts.temperature, "top_p": opts.top_p, "seed": opts.seed, "shard": shard}
    return write_answers(engine, jobs, opts.output, bs, metadata=meta)
