from conftest import run_ntk

import ntk


def test_version_and_help():
    p = run_ntk("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"ntk {ntk.__version__}"
    p = run_ntk("--help")
    assert p.returncode == 0
    for cmd in ("segment", "embed", "score-variants", "pretrain", "finetune", "models"):
        assert cmd in p.stdout


def test_models_list_and_info(golden_dir):
    p = run_ntk("models", "list")
    assert p.returncode == 0
    for name in ("nt-v2-50m", "segment-nt", "agro-nt-1b", "nt-2.5b-multi-species", "segment-nt-multi-species",
                 "InstaDeepAI/nucleotide-transformer-v2-500m-multi-species"):
        assert name in p.stdout.split(), name  # the table is data (stdout); names and repo ids never shortened
    # one parameter count, one way of counting: list and info agree for the embedded model
    from ntk.cli.models import fmt_count
    from ntk.model.checkpoint import EMBEDDED_DEFAULT, EMBEDDED_DIR

    n = ntk.load_model(EMBEDDED_DIR / EMBEDDED_DEFAULT).num_parameters()
    row = next(line for line in p.stdout.splitlines() if line.startswith(EMBEDDED_DEFAULT))
    assert row.split()[2] == fmt_count(n)
    p = run_ntk("models", "info", EMBEDDED_DIR / EMBEDDED_DEFAULT)
    assert f"{n:,} ({fmt_count(n)})" in p.stderr
    assert "nucleotide head" in p.stderr and "32 channels" in p.stderr  # ntk's head, named
    p = run_ntk("models", "info", golden_dir / "segment_nt_tiny")
    assert p.returncode == 0, p.stderr
    assert "214,020" in p.stderr and "splice_donor" in p.stderr and "nucleotide head" not in p.stderr


def test_preset_parameter_counts():
    """Presets reproduce the released architectures (counts exclude v2's unused learned position table)."""
    from ntk.cli.models import count_parameters
    from ntk.model.config import preset_config

    # NT-v2-50M: 55,904,779 with the 2050x512 unused position table (HF hub: 55.9M)
    assert count_parameters(preset_config("nt-v2-50m")) + 2050 * 512 == 55_904_779
    assert count_parameters(preset_config("nt-v2-100m")) + 2050 * 512 == 97_888_779
    # AgroNT 1B: 991,260,405 = model_num_parameters in the released hyperparams
    assert count_parameters(preset_config("agro-nt-1b")) == 991_260_405


def test_usage_errors_are_short():
    for args in (("score-variants",), ("segment", "--bogus", "x"), ("embed", "x.fa")):
        p = run_ntk(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr and "error" in p.stderr.lower()


def test_closed_pipe_is_not_an_error(tmp_path, sample_dir):
    """`ntk segment --bedgraph F | head` exits quietly when head closes the pipe."""
    import subprocess
    import sys

    cmd = (f"{sys.executable} -m ntk.cli.main segment {sample_dir / 'genome.fa.gz'} -r I:1-20000 "
           "--bedgraph exon -q | head -n 2")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert len(p.stdout.splitlines()) == 2 and "Traceback" not in p.stderr, p.stderr
