"""`ntk chat` on the golden ChatNT with a tiny English tokenizer built here: FASTA, regions, --questions (TSV and
JSON lines, several sequences per prompt), Parquet, interactive mode, and the errors a user can make."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

import ntk
from ntk.pipelines import chat as P

from conftest import run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["USER", ":", "ASSISTANT", "Is", "this", "sequence", "a", "promoter", "?", "Yes", "no", "gene", "an",
         "enhancer", "in", "the", "of", "and", "it", "expression", "level", "liver", "What", "is", "there", "Are",
         "these", "two", "same", "species", "high", "low", "not", "splice", "site", "acceptor", "donor", "region",
         "here", "coding", "protein", ".", ",", "yes", "No"]  # 45 words: ids 3..47 (vocab 48, <DNA> = 48)
assert len(WORDS) == 45


def ntk_main(capsys, *args):
    """The CLI in this process (``main()`` as the console script runs it): (exit code, stdout, stderr)."""
    from ntk.cli.main import main

    capsys.readouterr()
    old, sys.argv = sys.argv, ["ntk", *map(str, args)]
    try:
        main()
        rc = 0
    except SystemExit as e:
        rc = e.code or 0
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def build_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<DNA>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def chat_model_dir(golden_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat") / "chatnt_tiny"
    shutil.copytree(golden_dir / "chatnt_tiny", d)
    (d / "expected.npz").unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(bio_kmer=2, prompt_template="USER : {question} ASSISTANT :")  # 2-mers fit the 40-id bio vocab
    (d / "config.json").write_text(json.dumps(cfg))
    tok = build_tokenizer(d / "english_tokenizer" / "tokenizer.json")
    assert tok.token_to_id("<DNA>") == 48
    return d


@pytest.fixture(scope="module")
def model(chat_model_dir):
    return ntk.load_model(chat_model_dir)


SEQS = {"seqA": "ACGTACGGATTACAGGCTAGCTAGGATCCA", "seqB": "TTGACAGCTAGCTCAGTCCTAGGTATAATGCTAGC",
        "seqC": "GGGCGCGCCCATATATNNACGTTGCA"}
Q = "Is this sequence a promoter ? <DNA>"


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    p = tmp_path_factory.mktemp("fa") / "seqs.fa"
    p.write_text("".join(f">{k} some description\n{v[:20]}\n{v[20:].lower()}\n" for k, v in SEQS.items()))
    return p


def expected_answer(model, question, seqs, max_new=6, **kw):
    """What the Python API gives for one prompt (built by hand: template, BOS, 2-mer bio ids)."""
    cfg = model.config
    ids = model.english_tokenizer.encode_prompt(cfg.prompt_template.replace("{question}", question))
    eng = np.full((1, cfg.english_max_length), 2)
    eng[0, : len(ids)] = ids
    toks = [model.bio_tokenizer.tokenize(s.upper())[0] for s in seqs]
    bio = np.ones((1, len(toks), max(len(t) for t in toks)), dtype=np.int64)
    for k, t in enumerate(toks):
        bio[0, k, : len(t)] = t
    out = model.generate(eng, bio, max_new_tokens=max_new, **kw)[0].tolist()
    out = out[: out.index(-1)] if -1 in out else out
    return model.english_tokenizer.decode(out)


def test_prompt_encoding(model):
    ids = model.english_tokenizer.encode_prompt("USER : Is this <DNA> ? ASSISTANT :")
    assert ids == [1, 3, 4, 6, 7, 48, 11, 5, 4]  # <s> USER : Is this <DNA> ? ASSISTANT :
    assert model.bio_tokenizer.tokenize("ACGTA")[0].tolist() == [3, 6 + 0 * 4 + 2, 6 + 3 * 4 + 1, 22]  # CLS AC GT A


def test_fasta_one_answer_per_record(chat_model_dir, fasta, model):
    p = run_ntk("chat", "-m", chat_model_dir, "-f", fasta, "-q", Q, "--max-new-tokens", "6", check=True)
    df = pl.read_csv(io.StringIO(p.stdout), separator="\t")
    assert df.columns == ["name", "question", "answer"]
    assert df["name"].to_list() == list(SEQS)
    assert set(df["question"]) == {Q}
    want = [expected_answer(model, Q, [s]) for s in SEQS.values()]
    assert df["answer"].fill_null("").to_list() == want
    assert any(want), "the tiny model answers something for at least one record"
    assert "3 answers" in p.stderr


def test_pipeline_batching_and_sampling_do_not_depend_on_batch_size(model, fasta):
    rows = {}
    for bs in (1, 2, 3):
        for temp in (0.0, 1.3):
            eng = P.ChatEngine(model, max_new_tokens=6, temperature=temp, seed=5)
            frames = []
            eng.run(P.fasta_jobs(str(fasta), Q), bs, frames.append)
            rows[bs, temp] = pl.concat(frames)["answer"].to_list()
    assert rows[1, 0.0] == rows[2, 0.0] == rows[3, 0.0]
    assert rows[1, 1.3] == rows[2, 1.3] == rows[3, 1.3]
    assert rows[1, 0.0] == [expected_answer(model, Q, [s]) for s in SEQS.values()]
    # job i is drawn with seed + i: the second record's sampled answer is the API's with seed 6
    assert rows[1, 1.3][1] == expected_answer(model, Q, [SEQS["seqB"]], temperature=1.3, seed=[6])


def test_questions_file_tsv_jsonl_parquet(chat_model_dir, fasta, model, tmp_path, capsys):
    q2 = "Are these two sequences the same species ? <DNA> and <DNA>"
    tsv = tmp_path / "q.tsv"
    tsv.write_text("name\tquestion\trecords\n"
                   f"first\t{Q}\tseqB\n"
                   f"pair\t{q2}\tseqA,seqC\n"
                   f"\t{Q}\tseqC\n")
    out = tmp_path / "a.parquet"
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-f", fasta, "--questions", tsv, "--max-new-tokens",
                          "6", "-o", out, "--batch-size", "4")
    assert rc == 0, err
    df = pl.read_parquet(out)
    assert df["name"].to_list() == ["first", "pair", "seqC"]
    assert df["question"].to_list() == [Q, q2, Q]
    assert df["answer"].fill_null("").to_list() == [expected_answer(model, Q, [SEQS["seqB"]]),
                                                    expected_answer(model, q2, [SEQS["seqA"], SEQS["seqC"]]),
                                                    expected_answer(model, Q, [SEQS["seqC"]])]
    jl = tmp_path / "q.jsonl"
    jl.write_text(json.dumps({"question": q2, "sequences": [SEQS["seqB"], SEQS["seqA"]]}) + "\n"
                  + json.dumps({"name": "x", "question": Q, "sequence": SEQS["seqA"]}) + "\n")
    rc, out, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "--questions", jl, "--max-new-tokens", "6")
    assert rc == 0, err
    df = pl.read_csv(io.StringIO(out), separator="\t")
    assert df["name"].to_list() == ["row1", "x"]
    assert df["answer"].fill_null("").to_list() == [expected_answer(model, q2, [SEQS["seqB"], SEQS["seqA"]]),
                                                    expected_answer(model, Q, [SEQS["seqA"]])]


def test_regions_with_reference(chat_model_dir, model, tmp_path, capsys):
    genome = tmp_path / "g.fa"
    chrom = "".join(SEQS.values())
    genome.write_text(f">chr1\n{chrom}\n")
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t30\tfirst\t0\t+\nchr1\t30\t65\t.\t0\t-\n")
    rc, out, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-R", bed, "--reference", genome, "-q", Q,
                            "--max-new-tokens", "6")
    assert rc == 0, err
    df = pl.read_csv(io.StringIO(out), separator="\t")
    assert df["name"].to_list() == ["first", "chr1:31-65"]
    rc = ntk.model.tokenizer.reverse_complement(chrom[30:65])
    assert df["answer"].fill_null("").to_list() == [expected_answer(model, Q, [chrom[:30]]),
                                                    expected_answer(model, Q, [rc])]


def test_cli_error_is_one_line(chat_model_dir, fasta):
    """The real console script: one `ntk: error:` line, exit 2, no traceback, nothing on stdout."""
    p = run_ntk("chat", "-m", chat_model_dir, "-f", fasta, "-q", "Is this sequence a promoter ?")
    assert p.returncode == 2
    assert p.stderr.startswith("ntk: error: -q: the question has no <DNA> placeholder") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("args,needle", [
    (["-q", "Is <DNA> the same as <DNA> ?"], "-q: the question has 2 <DNA> placeholders, more than its 1 sequence(s)"),
    (["-q", Q, "--max-new-tokens", "30"], "record seqA: the prompt (12 tokens) + 1x4 DNA embeddings + "
                                          "--max-new-tokens 30 need 46 positions, more than the 39"),
    (["-q", Q, "--temperature", "-1"], "--temperature must be >= 0"),
    (["-q", Q, "--questions", "x.tsv"], "either -q QUESTION or --questions FILE"),
])
def test_cli_errors(chat_model_dir, fasta, args, needle, capsys):
    rc, out, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-f", fasta, *args)
    assert rc == 2 and "ntk: error:" in err and needle in err, err
    assert out == ""


def test_cli_errors_inputs(chat_model_dir, golden_dir, tmp_path, capsys):
    long = tmp_path / "long.fa"
    long.write_text(">big\n" + "ACGT" * 40 + "\n")  # 160 nt = 81 tokens > 64
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-f", long, "-q", Q, "--max-new-tokens", "6")
    assert rc == 2 and "record big: 160 nt make 81 tokens; the ChatNT DNA encoder takes at most 64" in err, err
    bad = tmp_path / "q.tsv"
    bad.write_text(f"question\tsequences\n{Q}\tACGT,ACGA\n")
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "--questions", bad)
    assert rc == 2 and f"{bad} line 2: the question has 1 <DNA> placeholders, fewer than its 2" in err, err
    bad.write_text(f"question\tsequence\n{Q}\tACGTXX\n")
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "--questions", bad, "-o", tmp_path / "o.tsv")
    assert rc == 2 and "line 2: sequence 1: invalid nucleotide 'X' at position 5" in err, err
    assert not (tmp_path / "o.tsv").exists()
    bad.write_text(f"question\trecords\n{Q}\tnope\n")
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "--questions", bad, "-f", long)
    assert rc == 2 and f"{long}: no record named 'nope'" in err, err
    # the golden directory has no English tokenizer; an NT model is not a chat model
    rc, _, err = ntk_main(capsys, "chat", "-m", golden_dir / "chatnt_tiny", "-f", long, "-q", Q)
    assert rc == 2 and "no English tokenizer" in err
    rc, _, err = ntk_main(capsys, "chat", "-m", golden_dir / "nt_v2_tiny", "-f", long, "-q", Q)
    assert rc == 2 and "not a ChatNT checkpoint" in err
    rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-f", long)  # pytest's stdin is not a terminal
    assert rc == 2 and "interactive mode needs a terminal" in err


def test_interactive_pipeline(model):
    seqs = list(SEQS.items())[:2]
    eng = P.ChatEngine(model, max_new_tokens=6)
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO(f"{Q}\nno placeholder here\nAre these two <DNA> <DNA> ?\n\n")
    assert P.interactive(eng, seqs, 2, stdin, out, err) == 2
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"{n}\t{expected_answer(model, Q, [s])}" for n, s in seqs]
    assert lines[2] == "seqA,seqB\t" + expected_answer(model, "Are these two <DNA> <DNA> ?", [s for _, s in seqs])
    assert "it has 0" in err.getvalue()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_interactive_cli_on_a_terminal(chat_model_dir, fasta, model):
    import pty

    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-m", "ntk.cli.main", "chat", "-m", str(chat_model_dir), "-f", str(fasta),
                          "--max-new-tokens", "6"], stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, text=True)
    os.close(follower)
    os.write(leader, f"{Q}\n\n".encode())
    out, err = p.communicate(timeout=120)
    os.close(leader)
    assert p.returncode == 0, err
    assert out.splitlines() == [f"{n}\t{expected_answer(model, Q, [s])}" for n, s in SEQS.items()]
    assert "3 sequence(s) loaded" in err


def test_shards_cover_the_jobs(chat_model_dir, fasta, tmp_path, capsys):
    parts = []
    for i in (1, 2):
        o = tmp_path / f"p{i}.tsv"
        rc, _, err = ntk_main(capsys, "chat", "-m", chat_model_dir, "-f", fasta, "-q", Q, "--max-new-tokens", "4",
                              "--shard", f"{i}/2", "-o", o)
        assert rc == 0, err
        parts.append(pl.read_csv(o, separator="\t"))
    assert pl.concat(parts)["name"].to_list() == list(SEQS)


def test_generation_on_cpu_uses_the_cache(model):
    eng = P.ChatEngine(model, max_new_tokens=6)
    frames = []
    eng.run([P.ChatJob("a", Q, [("a", SEQS["seqA"])])], 1, frames.append)
    ref = P.ChatEngine(model, max_new_tokens=6, use_cache=False)
    frames2 = []
    ref.run([P.ChatJob("a", Q, [("a", SEQS["seqA"])])], 1, frames2.append)
    assert frames[0]["answer"].to_list() == frames2[0]["answer"].to_list()
    assert torch.get_num_threads() == 1
