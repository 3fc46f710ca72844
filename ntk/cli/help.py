"""Help that reads at 80 columns, for every ntk command, including commands added later.

``polish(root)`` walks the click command tree that Typer builds from the ``ntk`` app and, for every command and
option it finds:

- gives each option a metavar users recognise (``FASTA``, ``VCF``, ``OUTDIR``, ``N``, ``FEATURE``...) unless the
  option declares one; flags get none (no ``<bool>``), and no Python type name is ever shown;
- puts each option in a panel (Input / Model & device / Output / Scale-out / Training / Options) unless the option
  declares ``rich_help_panel``;
- renders the help itself: options as ``-o, --output OUTDIR`` in one column and their help in a column at least
  40 characters wide (a label too long for the first column gets a line of its own), paragraphs re-flowed (single
  line breaks in a help text are joined), ``\\b`` paragraphs (examples) printed verbatim, defaults inline.

Command authors only write short help strings and, where the table below has no entry for a new option, a
``metavar=`` and ``rich_help_panel=`` (see the constants here); everything else is picked up automatically.
"""
from __future__ import annotations

import inspect
import io
import os
import shutil
import sys
import textwrap
import types

# panels, in display order
INPUT = "Input"
MODEL = "Model & device"
OUTPUT = "Output"
SCALE = "Scale-out"
TRAINING = "Training"
OTHER = "Options"
PANEL_ORDER = (INPUT, MODEL, OUTPUT, SCALE, TRAINING, OTHER)

# option -> panel (inference commands); TRAINING_PANEL overrides it for the training commands
PANEL = {
    "--region": INPUT, "--regions": INPUT, "--chr-map": INPUT, "--reference": INPUT, "--sequence-col": INPUT,
    "--name-col": INPUT, "--label-col": INPUT, "--annotation": INPUT, "--annotation-format": INPUT,
    "--multi-label": INPUT, "--classes": INPUT, "--weights": INPUT, "--split-col": INPUT, "--fasta": INPUT,
    "--question": INPUT, "--questions": INPUT,
    "--model": MODEL, "--device": MODEL, "--precision": MODEL, "--batch-size": MODEL, "--threads": MODEL,
    "--window": MODEL, "--crop": MODEL, "--blend": MODEL, "--rc-average": MODEL, "--config": MODEL, "--init-from": MODEL,
    "--grad-checkpointing": MODEL, "--layer": MODEL, "--pool": MODEL, "--scores": MODEL, "--segment-radius": MODEL,
    "--method": MODEL, "--lora-rank": MODEL, "--lora-alpha": MODEL, "--lora-dropout": MODEL,
    "--lora-targets": MODEL, "--ia3-targets": MODEL, "--merge": MODEL,
    "--output": OUTPUT, "--table": OUTPUT, "--force": OUTPUT, "--quiet": OUTPUT, "--threshold": OUTPUT,
    "--min-length": OUTPUT, "--merge-gap": OUTPUT, "--bedgraph": OUTPUT, "--bedgraph-precision": OUTPUT,
    "--zoom-levels": OUTPUT, "--format": OUTPUT, "--features": OUTPUT,
    "--shard": SCALE, "--resume": SCALE,
    "--epochs": TRAINING, "--steps": TRAINING, "--lr": TRAINING, "--warmup": TRAINING, "--weight-decay": TRAINING,
    "--eval-every": TRAINING, "--patience": TRAINING, "--monitor": TRAINING, "--seed": TRAINING,
    "--save-every": TRAINING, "--schedule": TRAINING, "--grad-clip": TRAINING, "--log-every": TRAINING,
    "--keep-checkpoints": TRAINING, "--stop-after": TRAINING, "--tokens-per-batch": TRAINING,
    "--val-chroms": TRAINING, "--val-regions": TRAINING, "--val-frac": TRAINING, "--val-windows": TRAINING,
    "--val-fraction": TRAINING, "--test-fraction": TRAINING, "--test-chroms": TRAINING, "--train-chroms": TRAINING,
    "--folds": TRAINING, "--seq-len": TRAINING, "--max-n-frac": TRAINING, "--rc-aug": TRAINING,
    "--rc-augment": TRAINING, "--eval-crop": TRAINING, "--max-eval-windows": TRAINING, "--pos-weight": TRAINING,
    "--nucleotide-head": TRAINING,
}
TRAINING_COMMANDS = {"pretrain", "classify", "regress", "finetune segment"}
TRAINING_PANEL = {"--resume": TRAINING, "--batch-size": TRAINING, "--window": TRAINING, "--features": INPUT}

# option -> metavar, unless the option declares one; METAVAR_BY_COMMAND[(command, option)] first
METAVAR = {
    "--output": "OUT", "--model": "MODEL", "--device": "DEVICE", "--precision": "PREC", "--batch-size": "N|auto",
    "--threads": "N", "--shard": "I/N", "--region": "REGION", "--regions": "BED", "--chr-map": "FILE",
    "--reference": "FASTA", "--features": "F1,F2", "--window": "NT", "--crop": "NT", "--threshold": "P",
    "--min-length": "NT", "--merge-gap": "NT", "--bedgraph": "FEATURE", "--bedgraph-precision": "N|full",
    "--zoom-levels": "N", "--table": "PARQUET", "--scores": "S1,S2", "--segment-radius": "NT", "--blend": "MODE",
    "--layer": "L",
    "--pool": "MODE", "--format": "FMT", "--config": "CONFIG", "--init-from": "MODEL", "--weights": "W1,W2",
    "--val-chroms": "CHROMS", "--test-chroms": "CHROMS", "--train-chroms": "CHROMS", "--val-regions": "BED",
    "--val-frac": "F", "--val-windows": "N", "--seq-len": "TOKENS", "--max-n-frac": "F", "--seed": "N",
    "--steps": "N", "--tokens-per-batch": "N", "--lr": "LR", "--warmup": "W", "--schedule": "NAME",
    "--weight-decay": "WD", "--grad-clip": "NORM", "--save-every": "N", "--eval-every": "N", "--log-every": "N",
    "--keep-checkpoints": "N", "--stop-after": "STEP", "--method": "METHOD", "--lora-rank": "R",
    "--lora-alpha": "A", "--lora-dropout": "P", "--lora-targets": "LAYERS", "--ia3-targets": "LAYERS",
    "--epochs": "N", "--patience": "N", "--monitor": "METRIC", "--label-col": "COL", "--sequence-col": "COL",
    "--name-col": "COL", "--split-col": "COL", "--val-fraction": "F", "--test-fraction": "F", "--folds": "K",
    "--classes": "NAMES", "--annotation": "GTF", "--annotation-format": "FMT", "--eval-crop": "NT",
    "--max-eval-windows": "N", "--pos-weight": "W", "--nucleotide-head": "C",
}
METAVAR_BY_COMMAND = {
    ("segment", "--output"): "OUTDIR", ("embed", "--output"): "OUT", ("score-variants", "--output"): "VCF",
    ("pretrain", "--output"): "RUN_DIR", ("classify", "--output"): "RUN_DIR", ("regress", "--output"): "RUN_DIR",
    ("finetune segment", "--output"): "RUN_DIR", ("predict", "--output"): "PARQUET", ("merge", "--output"): "OUT",
    ("plot", "--output"): "PNG", ("finetune segment", "--features"): "F1,F2", ("chat", "--output"): "OUT",
}
# fallback by type (numbers), else the option's name (--dtype -> DTYPE); never a Python type name
TYPE_METAVAR = {"int": "N", "float": "X"}
PYTHON_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "tuple", "path", "none", "bytes", "choice",
                     "text", "integer", "boolean"}

LABEL_MAX = 26  # widest first column; longer labels get a line of their own
MAX_WIDTH = 100


def walk(cmd, path=()):
    """Yield (path, command) for cmd and every sub-command (hidden ones included)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, path + (name,))


def polish(root) -> None:
    """Metavars, panels and the 80-column help renderer for every command under root (idempotent)."""
    root.context_settings = {**(root.context_settings or {}), "help_option_names": ["-h", "--help"]}
    for path, cmd in walk(root):
        key = " ".join(path[-2:]) if path[-2:-1] == ("finetune",) and path[-1] == "segment" else (path[-1] if path
                                                                                                      else "")
        for p in cmd.params:
            _polish_param(p, key)
        cmd.format_help = types.MethodType(_format_help, cmd)


def _type_name(p) -> str:
    desc = getattr(p, "type_descriptor", None)
    ann = getattr(desc, "annotation", None)
    if ann is not None:
        import typing

        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) is list and args:
            ann = args[0]
        elif args and not isinstance(ann, type):
            ann = args[0]
        if typing.get_origin(ann) is list:
            ann = (typing.get_args(ann) or (str,))[0]
        return getattr(ann, "__name__", str(ann))
    t = getattr(p, "type", None)
    return getattr(t, "name", "text")


def _is_flag(p) -> bool:
    return bool(getattr(p, "is_flag", False)) or getattr(p, "count", False)


def _polish_param(p, key: str) -> None:
    if p.param_type_name == "argument":
        if p.metavar is None:
            p.metavar = p.name.upper()
        label = p.metavar if p.required else f"[{p.metavar}]"
        if p.nargs != 1:
            label += "..."
        p.get_usage_pieces = lambda ctx, _label=label: [_label]
        if getattr(p, "rich_help_panel", None) is None:
            p.rich_help_panel = INPUT
        return
    long = next((o for o in p.opts if o.startswith("--")), p.opts[0] if p.opts else "")
    if _is_flag(p):
        p.metavar = ""
    elif p.metavar is None:
        p.metavar = (METAVAR_BY_COMMAND.get((key, long)) or METAVAR.get(long) or TYPE_METAVAR.get(_type_name(p))
                     or long.lstrip("-").replace("-", "_").upper() or "VALUE")
    if getattr(p, "rich_help_panel", None) is None:
        if long in ("--help", "--version", "--install-completion", "--show-completion"):
            p.rich_help_panel = OTHER
        elif key in TRAINING_COMMANDS and long in TRAINING_PANEL:
            p.rich_help_panel = TRAINING_PANEL[long]
        else:
            p.rich_help_panel = PANEL.get(long, OTHER)


def option_label(p) -> str:
    """The first column of an option's help row: '-o, --output OUTDIR', '    --force', 'FASTA...'."""
    if p.param_type_name == "argument":
        return p.metavar + ("..." if p.nargs != 1 else "")
    shorts = [o for o in p.opts if not o.startswith("--")]
    longs = [o for o in p.opts if o.startswith("--")]
    names = ", ".join(shorts + longs)
    if p.secondary_opts:
        names += " / " + ", ".join(p.secondary_opts)
    if not shorts:
        names = "    " + names
    mv = "" if _is_flag(p) else (p.metavar or "")
    return f"{names} {mv}".rstrip()


def _default_text(p, ctx) -> str:
    if _is_flag(p) or p.param_type_name == "argument" or p.required:
        return ""
    show = getattr(p, "show_default", None)
    if isinstance(show, str):
        return f"[default: {show}]"
    d = p.default
    if show is False or d is None or d == "" or d == [] or callable(d):
        return ""
    if "default" in (p.help or "").lower():  # the help already says it
        return ""
    if isinstance(d, (list, tuple)):
        d = ",".join(map(str, d))
    return f"[default: {d}]"


def _paragraphs(text: str) -> list[tuple[bool, str]]:
    """(verbatim, text) paragraphs: '\\b' paragraphs keep their lines, others are re-flowed."""
    out = []
    for para in inspect.cleandoc(text or "").split("\n\n"):
        if not para.strip():
            continue
        if para.startswith("\b"):
            out.append((True, para.lstrip("\b").strip("\n")))
        else:
            out.append((False, " ".join(line.strip() for line in para.splitlines())))
    return out


def short_help(cmd) -> str:
    text = cmd.short_help or ""
    if not text:
        paras = _paragraphs(cmd.help or "")
        text = paras[0][1] if paras else ""
        for stop in (". ", "; "):
            if stop in text:
                text = text.split(stop, 1)[0] + ("." if stop == ". " else "")
                break
    return text.strip()


def _width() -> int:
    return max(40, min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH))


def render_help(cmd, ctx, width: int | None = None, color: bool = False) -> str:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.text import Text

    width = width or _width()
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None,
                  highlight=False, soft_wrap=False, emoji=False, markup=False)
    pieces = cmd.collect_usage_pieces(ctx)
    usage = Text("Usage: ", style="yellow")
    usage.append(" ".join([ctx.command_path, *pieces]), style="bold")
    con.print(usage)
    con.print()
    for verbatim, para in _paragraphs(cmd.help or ""):
        if verbatim:
            for line in para.splitlines():
                con.print(Text(" " + line), soft_wrap=True)  # verbatim: never re-wrapped
        else:
            for line in textwrap.wrap(para, width - 2, break_on_hyphens=False, break_long_words=False):
                con.print(Text(" " + line))
        con.print()
    inner = width - 4
    panels: dict[str, list] = {}
    if hasattr(cmd, "commands"):
        names = [n for n, c in cmd.commands.items() if not getattr(c, "hidden", False)]
        lw = min(max((len(n) for n in names), default=0), LABEL_MAX)
        panels["Commands"] = [_row(n, short_help(cmd.commands[n]), lw, inner, "bold cyan") for n in names]
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    labels = {id(p): option_label(p) for p in params}
    fitting = [len(lbl) for lbl in labels.values() if len(lbl) <= LABEL_MAX]
    lw = max(fitting, default=10)
    for p in params:
        help_text = " ".join(t for _, t in _paragraphs(p.help or ""))
        extra = " ".join(x for x in (_default_text(p, ctx), "[required]" if p.required else "") if x)
        panel = getattr(p, "rich_help_panel", None) or (INPUT if p.param_type_name == "argument" else OTHER)
        panels.setdefault(panel, []).append(_row(labels[id(p)], help_text, lw, inner, "bold cyan", extra))
    order = ["Commands", *PANEL_ORDER]
    for name in sorted(panels, key=lambda n: order.index(n) if n in order else len(order)):
        lines = [line for row in panels[name] for line in row]
        con.print(Panel(Group(*lines), title=name, title_align="left", border_style="dim", padding=(0, 1),
                        width=width))
    if cmd.epilog:
        for _, para in _paragraphs(cmd.epilog):
            con.print(Text(" " + para))
    return buf.getvalue().rstrip("\n")


def _row(label: str, help_text: str, lw: int, inner: int, style: str, extra: str = "") -> list:
    from rich.text import Text

    hw = inner - lw - 2
    words = (help_text + (" " if help_text and extra else "") + extra).strip()
    wrapped = textwrap.wrap(words, hw, break_on_hyphens=False, break_long_words=False) or [""]
    lines = []
    if len(label) > lw:
        lines.append(Text(label, style=style, no_wrap=True, overflow="ellipsis"))
        first = Text(" " * (lw + 2))
    else:
        first = Text(label.ljust(lw + 2), style=style)
    for i, w in enumerate(wrapped):
        t = first if i == 0 else Text(" " * (lw + 2))
        if extra and w.endswith(extra) and i == len(wrapped) - 1:
            t.append(w[: len(w) - len(extra)])
            t.append(extra, style="dim")
        else:
            t.append(w)
        t.no_wrap, t.overflow = True, "ellipsis"
        lines.append(t)
    return lines


def _format_help(self, ctx, formatter) -> None:
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    formatter.write(render_help(self, ctx, color=color) + "\n")
