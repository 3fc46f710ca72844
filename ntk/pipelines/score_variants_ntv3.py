"""``ntk score-variants`` with NTv3 models: the scorer of ``pipelines/score_variants.py`` with NTv3 windows,
a single-base masked LLR and, for post-trained models, per-track / per-element deltas.

Rules (README section "NTv3"):

- **Windows.** Every variant gets a reference window of ``W`` nt (a multiple of ``2**num_downsamples``; default
  32 kb) *centred* on its REF span (start ``pos + len(REF)//2 - W//2``), filled with ``N`` beyond contig ends,
  so that the variant lies in the centre the BigWig/BED heads predict on. Variants at the same position share
  the reference pass. The alternate window is built from it exactly as for NT (an indel keeps the length ``W``,
  trimming or extending both sides); edits longer than ``W/4`` nt are ``unsupported``.
- **Embedding distances** (``cosine l2 l1 dot``): mean of the final per-base embedding over the window's bases
  that lie inside the contig (N padding beyond contig ends excluded).
- **llr** (``NTK_LLR``): single-base masked log-likelihood ratio. For each substituted base, the reference
  window with that one base replaced by ``<mask>``: ``log p(ALT base) - log p(REF base)`` from the MLM head at
  that position; a multi-base substitution (MNV) scores the *sum* over its changed bases (each masked on its
  own). Indels, and substitutions to or from N/IUPAC codes, get no llr (missing; ``unsupported`` when llr is
  the only score). With ``--rc-average`` the mean of both strands.
- **tracks** (post-trained): for every BigWig track of the species, over the reference positions within
  ``--segment-radius`` nt of the REF span (aligned through the edit as for ``segment``; inserted and deleted
  bases are not compared; limited to the heads' centre): ``log2((sum ALT + 1) / (sum REF + 1))`` (pseudo-count
  1, as Borzoi's logSED) and ``max |ALT - REF|``. **elements**: per BED element, ``max |p_ALT - p_REF|`` over
  the same positions. The VCF gets a compact summary per ALT (``NTK_TRACK_MAX_LFC`` / ``NTK_TRACK_MAX_ID``: the
  track with the largest |log2 ratio|; ``NTK_ELEM_MAX_DP`` / ``NTK_ELEM_MAX_ID``: the element with the largest
  change); the ``--table`` is long: one row per (record, ALT, track or element) with ``target_kind``,
  ``target``, ``log2_ratio``, ``max_abs_delta``, ``ref_sum``, ``alt_sum`` (one row with a null target when the
  allele has no value).
- Statuses as for NT (``ok ref_mismatch symbolic no_context unsupported``); ``no_context``: contig shorter than
  one window unit.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from ..errors import NtkError
from ..io.fasta import IndexedFasta
from ..io.vcf import InfoField
from ..model.tokenizer import reverse_complement
from ..plan.batching import auto_token_budget, by_token_budget
from .score_variants import (EMBEDDING_SCORES, INFO_IDS, VariantScorer, _describe, _Job, _Pass, _RefWindow,
                             llr_changed_bases)
from ..plan.windows import Window

HEAD_SCORES = ("tracks", "elements")
ALL_NTV3_SCORES = EMBEDDING_SCORES + ("llr",) + HEAD_SCORES
_COMP = str.maketrans("ACGTN", "TGCAN")


def is_ntv3(model) -> bool:
    from ..model.ntv3 import NTv3

    return isinstance(model, NTv3)


@dataclass
class _NPass(_Pass):
    emb_range: tuple[int, int] = (0, 0)  # window positions averaged for the embedding (inside the contig)
    head_range: tuple[int, int] | None = None  # forward-window positions of track/element values to keep
    tracks: np.ndarray | None = None  # [K, T]
    elems: np.ndarray | None = None  # [K, E]


class NTv3PassRunner:
    """Forward passes of equal-length windows, batched by token budget; keeps what each pass asks for."""

    def __init__(self, model, species_id: int | None, n_tracks: int, token_budget: int | None, max_batch):
        cfg = model.config
        self.model, self.species_id, self.n_tracks = model, species_id, n_tracks
        self.token_budget = token_budget or auto_token_budget(model.device.type, cfg.conv_init_embed_dim,
                                                              cfg.num_layers)
        self.max_batch = max_batch
        self.counts = Counter()

    def run(self, passes: list[_NPass], kind: str = "") -> None:
        for n in sorted({len(p.ids) for p in passes}):
            group = [p for p in passes if len(p.ids) == n]
            budget = self.max_batch * n if self.max_batch else self.token_budget
            for batch in by_token_budget(group, lambda p: len(p.ids), budget, self.max_batch):
                self._run_batch(batch)

    @torch.inference_mode()
    def _run_batch(self, batch: list[_NPass]) -> None:
        m = self.model
        ids = torch.from_numpy(np.stack([p.ids for p in batch]).astype(np.int64)).to(m.device)
        W = ids.shape[1]
        heads = any(p.mask_pos is not None or p.head_range is not None for p in batch)
        out = m(ids, species_ids=self.species_id, heads=heads)
        self.counts["passes"] += len(batch)
        for i, p in enumerate(batch):
            if p.want_embedding:
                a, b = p.emb_range
                p.embedding = out.embedding[i, a:b].float().mean(0).cpu().numpy()
            if p.mask_pos is not None:
                p.logp = torch.log_softmax(out.logits[i, p.mask_pos].float(), -1).cpu().numpy()
            if p.head_range is not None:
                s, e = out.crop
                a, b = p.head_range
                tr = out.bigwig_tracks_logits[i, :, :self.n_tracks].float()
                el = out.bed_probabilities[i]
                if p.reverse:  # the reverse strand's crop covers forward positions [W - e, W - s)
                    tr, el, o = tr.flip(0), el.flip(0), W - e
                else:
                    o = s
                p.tracks = tr[a - o:b - o].cpu().numpy()
                p.elems = el[a - o:b - o].cpu().numpy()


def aligned_positions(ref_start: int, n_ref: int, alt_start: int, n_alt: int, pos: int, ref_len: int,
                      alt_len: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(i_ref, i_alt)`` of the reference positions within ``radius`` of ``[pos, pos + ref_len)``
    that both arrays hold, aligned through the edit (bases after it shift by ``alt_len - ref_len``; inserted and
    deleted bases are not compared)."""
    d = alt_len - ref_len
    r = np.arange(max(ref_start, pos - radius), min(ref_start + n_ref, pos + ref_len + radius))
    r = r[(r < pos + min(ref_len, alt_len)) | (r >= pos + ref_len)]
    j = r - alt_start + np.where(r >= pos + ref_len, d, 0)
    ok = (j >= 0) & (j < n_alt)
    return r[ok] - ref_start, j[ok]


class NTv3Scorer(VariantScorer):
    def __init__(self, model, fasta: IndexedFasta, scores: list[str], window: int, rc_average: bool,
                 radius: int, token_budget, max_batch, species: str | None):
        from .family import ntv3_species_id
        from .family import NTv3Family

        self.model, self.fasta, self.scores = model, fasta, list(scores)
        self.window, self.rc_average, self.segment_radius = window, rc_average, int(radius)
        self.species = species
        self.species_id = ntv3_species_id(model, species)
        cfg = model.config
        self.tokenizer = model.tokenizer
        self.track_ids = cfg.tracks_for(species) if species is not None else []
        self.features = list(cfg.features)
        self.want_embedding = any(s in EMBEDDING_SCORES for s in self.scores)
        self.want_tracks = "tracks" in self.scores
        self.want_elements = "elements" in self.scores
        self.want_heads = self.want_tracks or self.want_elements
        self.want_llr = "llr" in self.scores
        self.want_segment = False
        self.need_forward = self.want_embedding or self.want_heads
        self.max_edit = window // 4
        fam = NTv3Family(model) if cfg.is_post_trained else None
        self.head_range = None
        if fam is not None:
            mg = fam.margin(window)
            self.head_range = (mg, window - mg)
            if self.want_heads and self.segment_radius > (window - 2 * mg) // 2:
                raise NtkError(f"--segment-radius {radius}: larger than half the heads' centre of a {window}-nt "
                               f"window ({(window - 2 * mg) // 2} nt); use a larger --window or a smaller radius")
        self.runner = NTv3PassRunner(model, self.species_id, len(self.track_ids), token_budget, max_batch)
        self.group_jobs, self.group_windows = 256, 64
        self._refs: OrderedDict = OrderedDict()
        self.pass_counts = Counter()

    # -- names ----------------------------------------------------------------------------------------------
    def value_names(self) -> list[str]:
        names = [s for s in self.scores if s not in HEAD_SCORES]
        if self.want_tracks:
            names += [f"track_lfc:{t}" for t in self.track_ids] + [f"track_maxd:{t}" for t in self.track_ids]
            names += [f"track_refsum:{t}" for t in self.track_ids] + [f"track_altsum:{t}" for t in self.track_ids]
        if self.want_elements:
            names += [f"elem_maxd:{e}" for e in self.features]
        return names

    def vcf_value_names(self) -> list[str]:
        return [s for s in self.scores if s not in HEAD_SCORES]

    @staticmethod
    def info_id(name: str) -> str:
        return INFO_IDS[name]

    def describe(self, name: str, rc_average: bool) -> str:
        if name == "llr":
            strands = " averaged over both strands" if rc_average else ""
            return (f"ntk score-variants (NTv3): single-base masked log p(ALT) - log p(REF), summed over the changed "
                    f"bases of a substitution; {self.window}-nt windows centred on the variant{strands}")
        return _describe(name, self.window, rc_average, self.segment_radius).replace(
            "mean final-layer embeddings", "mean final per-base NTv3 embeddings")

    def extra_info(self) -> list[InfoField]:
        R, out = self.segment_radius, []
        if self.want_tracks:
            out += [InfoField("NTK_TRACK_MAX_LFC", "A", "Float", f"ntk score-variants (NTv3, species {self.species}): "
                              f"log2((sum ALT + 1)/(sum REF + 1)) within {R} nt of the variant, of the track with the "
                              "largest absolute value"),
                    InfoField("NTK_TRACK_MAX_ID", "A", "String", "ntk score-variants (NTv3): id of that track")]
        if self.want_elements:
            out += [InfoField("NTK_ELEM_MAX_DP", "A", "Float", f"ntk score-variants (NTv3): largest max |p_ALT - "
                              f"p_REF| over BED elements within {R} nt of the variant"),
                    InfoField("NTK_ELEM_MAX_ID", "A", "String", "ntk score-variants (NTv3): that element")]
        return out

    def extra_info_values(self, names: list[str], rec_jobs: list) -> dict:
        out: dict = {}
        for kind, prefix, ids, vid, iid in (("tracks", "track_lfc:", self.track_ids, "NTK_TRACK_MAX_LFC",
                                             "NTK_TRACK_MAX_ID"),
                                            ("elements", "elem_maxd:", self.features, "NTK_ELEM_MAX_DP",
                                             "NTK_ELEM_MAX_ID")):
            if kind not in self.scores or not ids:
                continue
            cols = [names.index(prefix + t) for t in ids]
            vals, tops = [], []
            for _, _, v in rec_jobs:
                x = [v[c] for c in cols]
                if any(y is None for y in x):
                    vals.append(None)
                    tops.append(None)
                    continue
                k = int(np.argmax(np.abs(x)))
                vals.append(x[k])
                tops.append(ids[k])
            out[vid] = tuple(vals) if any(v is not None for v in vals) else None
            out[iid] = tuple(tops) if any(t is not None for t in tops) else None
        return out

    def table_schema(self, names: list[str]) -> dict:
        scalar = self.vcf_value_names()
        schema = {"chrom": pl.Utf8, "pos": pl.Int64, "id": pl.Utf8, "ref": pl.Utf8, "alt": pl.Utf8,
                  "status": pl.Utf8, **{nm: pl.Float64 for nm in scalar}}
        if self.want_heads:
            schema |= {"target_kind": pl.Utf8, "target": pl.Utf8, "log2_ratio": pl.Float64,
                       "max_abs_delta": pl.Float64, "ref_sum": pl.Float64, "alt_sum": pl.Float64}
        return schema

    def table_rows(self, base: tuple, names: list[str], vals: list) -> list[tuple]:
        v = dict(zip(names, vals))
        scalar = tuple(v[nm] for nm in self.vcf_value_names())
        if not self.want_heads:
            return [(*base, *scalar)]
        rows = []
        if self.want_tracks:
            for t in self.track_ids:
                if v[f"track_lfc:{t}"] is not None:
                    rows.append((*base, *scalar, "track", t, v[f"track_lfc:{t}"], v[f"track_maxd:{t}"],
                                 v[f"track_refsum:{t}"], v[f"track_altsum:{t}"]))
        if self.want_elements:
            for e in self.features:
                if v[f"elem_maxd:{e}"] is not None:
                    rows.append((*base, *scalar, "element", e, None, v[f"elem_maxd:{e}"], None, None))
        return rows or [(*base, *scalar, None, None, None, None, None, None)]

    def model_line(self) -> str:
        return f"; species={self.species}" if self.species is not None else ""

    # -- preparing jobs -------------------------------------------------------------------------------------
    def prepare(self, job: _Job, kind: str) -> None:
        if not self.check_alleles(job, kind, compare_ref=True):
            return
        L = self.fasta.lengths[job.chrom]
        if max(len(job.ref), len(job.alt)) > self.max_edit:
            job.status = "unsupported"
            return
        if L < self.model.config.window_unit:
            job.status = "no_context"
            return
        s = job.pos + len(job.ref) // 2 - self.window // 2
        job.window, job.lo, job.hi = Window(job.chrom, s, s + self.window, s, s + self.window), 0, L

    def _too_long(self, ids) -> bool:
        return False

    def _padded(self, chrom: str, a: int, b: int) -> str:
        L = self.fasta.lengths[chrom]
        lo, hi = max(a, 0), min(b, L)
        return "N" * (lo - a) + (self.fasta.fetch(chrom, lo, hi) if hi > lo else "") + "N" * (b - max(hi, a))

    def _emb_range(self, start: int, L: int, d: int = 0) -> tuple[int, int]:
        return max(0, -start), max(max(0, -start) + 1, min(self.window, L + d - start))

    def _ref(self, w: Window, lo: int, hi: int, new: list) -> _RefWindow:
        key = (w.chrom, w.start, w.end)
        if key in self._refs:
            self._refs.move_to_end(key)
            return self._refs[key]
        a = w.start - self.max_edit
        seq = self._padded(w.chrom, a, w.end + self.max_edit)
        ws = seq[w.start - a:w.end - a]
        strands = [ws, reverse_complement(ws)] if self.rc_average else [ws]
        ref = _RefWindow(w, seq, a, [self.tokenizer.tokenize(x) for x in strands])
        if self.need_forward:
            er = self._emb_range(w.start, hi)
            for r, toks in enumerate(ref.tokens):
                ref.passes.append(_NPass(toks[0], reverse=bool(r), want_embedding=self.want_embedding, emb_range=er,
                                         head_range=self.head_range if self.want_heads else None))
        self._refs[key] = ref
        new.append(ref)
        while len(self._refs) > 2 * self.group_windows:
            self._refs.popitem(last=False)
        return ref

    def _add_alt_passes(self, j: _Job, ref: _RefWindow, out: list) -> bool:
        from .score_variants import alternate_window

        w = ref.window
        alt_seq, alt_start = alternate_window(ref.seq, ref.seq_start, w.start, w.end, j.pos, len(j.ref), j.alt)
        if len(alt_seq) != w.length:  # cannot happen: flanks are N-padded
            j.status = "no_context"
            return False
        j.alt_start, j.alt_len = alt_start, len(alt_seq)
        er = self._emb_range(alt_start, j.hi, len(j.alt) - len(j.ref))
        strands = [alt_seq, reverse_complement(alt_seq)] if self.rc_average else [alt_seq]
        for r, x in enumerate(strands):
            p = _NPass(self.tokenizer.tokenize(x)[0], reverse=bool(r), want_embedding=self.want_embedding,
                       emb_range=er, head_range=self.head_range if self.want_heads else None)
            j.alt_passes.append(p)
            out.append(p)
        return True

    def _add_llr_passes(self, j: _Job, ref: _RefWindow, masked: dict) -> None:
        diff = llr_changed_bases(j)
        if not diff:
            return
        if any(j.ref[i] not in "ACGT" for i in diff):
            return
        w, tok = ref.window, self.tokenizer
        parts = []
        for i in diff:
            c = j.pos + i - w.start
            for r, (ids, _, _) in enumerate(ref.tokens):
                t = c if r == 0 else w.length - 1 - c
                alt_base = j.alt[i] if r == 0 else j.alt[i].translate(_COMP)
                key = (w.chrom, w.start, w.end, r, t)
                if key not in masked:
                    mids = np.asarray(ids, dtype=np.int64).copy()
                    mids[t] = tok.mask_id
                    masked[key] = _NPass(mids, reverse=bool(r), mask_pos=t)
                parts.append((masked[key], int(ids[t]), tok.token_to_id(alt_base)))
        j.llr_parts = parts

    def _finish(self, j: _Job, ref: _RefWindow) -> None:
        if j.alt_passes and self.want_embedding:
            self._embedding_scores(j, ref)
        if j.alt_passes and self.want_heads:
            self._head_deltas(j, ref)
        if j.llr_parts:
            n_strands = 2 if self.rc_average else 1
            j.values["llr"] = float(sum(p.logp[a] - p.logp[r] for p, r, a in j.llr_parts) / n_strands)
        j.alt_passes, j.llr_parts = [], []
        j.status = "ok" if j.values else "unsupported"

    def _head_deltas(self, j: _Job, ref: _RefWindow) -> None:
        a = self.head_range[0]
        ref_tr = np.mean([p.tracks for p in ref.passes], axis=0)
        alt_tr = np.mean([p.tracks for p in j.alt_passes], axis=0)
        ref_el = np.mean([p.elems for p in ref.passes], axis=0)
        alt_el = np.mean([p.elems for p in j.alt_passes], axis=0)
        ir, ia = aligned_positions(ref.window.start + a, len(ref_tr), j.alt_start + a, len(alt_tr), j.pos,
                                   len(j.ref), len(j.alt), self.segment_radius)
        if not ir.size:
            return
        if self.want_tracks:
            rs = ref_tr[ir].astype(np.float64).sum(0)
            as_ = alt_tr[ia].astype(np.float64).sum(0)
            lfc = np.log2((as_ + 1) / (rs + 1))
            maxd = np.abs(alt_tr[ia].astype(np.float64) - ref_tr[ir]).max(0)
            for k, t in enumerate(self.track_ids):
                j.values[f"track_lfc:{t}"] = float(lfc[k])
                j.values[f"track_maxd:{t}"] = float(maxd[k])
                j.values[f"track_refsum:{t}"] = float(rs[k])
                j.values[f"track_altsum:{t}"] = float(as_[k])
        if self.want_elements:
            d = np.abs(alt_el[ia].astype(np.float64) - ref_el[ir]).max(0)
            for k, e in enumerate(self.features):
                j.values[f"elem_maxd:{e}"] = float(d[k])


def parse_ntv3_scores(scores, model, species: str | None) -> list[str]:
    cfg = model.config
    if scores is None or scores == "" or scores == "default":
        return list(EMBEDDING_SCORES) + ["llr"]
    names = [s.strip().lower() for s in (scores.split(",") if isinstance(scores, str) else scores) if s.strip()]
    for s in names:
        if s not in ALL_NTV3_SCORES:
            raise NtkError(f"--scores: unknown score {s!r} for an NTv3 model (choose from {', '.join(ALL_NTV3_SCORES)})")
    if any(s in HEAD_SCORES for s in names) and not cfg.is_post_trained:
        raise NtkError("--scores tracks/elements need an NTv3 post-trained model (this one is pre-trained: MLM only)")
    if "tracks" in names and species is not None and not cfg.tracks_for(species):
        raise NtkError(f"--scores tracks: the model has no BigWig tracks for species {species!r} (species with "
                       f"tracks: {', '.join(s for s in model.species if cfg.tracks_for(s))})")
    return list(dict.fromkeys(names))


def ntv3_scorer(model, fasta, scores, window, rc_average, radius, token_budget, max_batch, species) -> NTv3Scorer:
    from .family import ntv3_species_id

    ntv3_species_id(model, species)  # species errors first
    names = parse_ntv3_scores(scores, model, species)
    W = model.config.check_window(window, "score")
    return NTv3Scorer(model, fasta, names, W, rc_average, radius, token_budget, max_batch, species)
