"""The ``pathunlearn`` command line: parse, call the library, print.

Every user error (bad config, malformed data) is printed as one line and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pathunlearn.errors import UserError

app = typer.Typer(
    help="Measure how the order of finetuning stages changes what local unlearning does.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        app()
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


def split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """Split positional arguments into a config path and ``key.sub=value`` overrides."""
    config, overrides = None, []
    for a in args or []:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise UserError(f"unexpected argument {a!r}: give one config file, then key=value overrides")
    return config, overrides


ConfigArgs = Annotated[
    list[str] | None,
    typer.Argument(help="Config YAML (default: the built-in demo), then key.sub=value overrides.",
                   show_default=False),
]


# ---------------------------------------------------------------------------- config

config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(args: ConfigArgs = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML.

    Example: pathunlearn config show configs/demo.yaml training.lr=1e-3 seeds=[0,1,2]
    """
    from pathunlearn.config import dump_config, load_config

    config, overrides = split_args(args)
    print(dump_config(load_config(config, overrides)), end="")


# ---------------------------------------------------------------------------- data

data_app = typer.Typer(help="Convert, inspect and export chat data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Argument(help="Input .json/.jsonl/.csv/.parquet file.")],
    out: Annotated[Path, typer.Argument(help="Output .jsonl in the OpenAI chat format.")],
    question_key: Annotated[str | None, typer.Option(help="Field holding the question.")] = None,
    answer_key: Annotated[str | None, typer.Option(help="Field holding the answer.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt put before each question.")] = None,
) -> None:
    """Convert records to the OpenAI chat format ({"messages": [...]} per line).

    Example: pathunlearn data convert tofu.json tofu.jsonl --question-key question --answer-key answer
    """
    from pathunlearn.data.io import load_conversations, write_jsonl

    if (question_key is None) != (answer_key is None):
        raise UserError("give both --question-key and --answer-key, or neither")
    conversations = load_conversations(src, question_key, answer_key, system)
    write_jsonl(out, (c.to_json() for c in conversations))
    console.print(f"wrote {len(conversations)} conversations to {out}")


@data_app.command("list")
def data_list() -> None:
    """List the built-in sources with their splits and sizes.

    Example: pathunlearn data list
    """
    from rich.table import Table

    from pathunlearn.data.suite import builtin_names, builtin_splits, describe_builtin, load_builtin

    table = Table("source", "splits (examples)", "description")
    for name in builtin_names():
        sizes = ", ".join(f"{s} ({len(load_builtin(name, s))})" for s in builtin_splits(name))
        table.add_row(f"builtin:{name}", sizes, describe_builtin(name))
    console.print(table)


@data_app.command("show")
def data_show(
    source: Annotated[str, typer.Argument(help="builtin:NAME[:SPLIT] or a data file.")],
    n: Annotated[int, typer.Option(help="How many examples to print.")] = 3,
    split: Annotated[str | None, typer.Option(help="Split of a built-in source.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of a built-in source.")] = 0,
) -> None:
    """Print the first N conversations of a source.

    Example: pathunlearn data show builtin:arithmetic:test --n 2
    """
    from rich.markup import escape

    from pathunlearn.data.sources import load_source

    conversations = load_source(source, split=split, seed=seed, max_examples=n)
    for i, conv in enumerate(conversations, 1):
        console.rule(f"{source} #{i}")
        for m in conv.messages:
            console.print(f"[bold]{m['role']}:[/] {escape(m['content'])}", highlight=False)
        if conv.meta:
            console.print(f"[dim]meta: {escape(str(conv.meta))}[/]", highlight=False)


@data_app.command("export")
def data_export(
    source: Annotated[str, typer.Argument(help="builtin:NAME[:SPLIT] or a data file.")],
    out: Annotated[Path, typer.Argument(help="Output .jsonl (OpenAI chat format).")],
    split: Annotated[str | None, typer.Option(help="Split of a built-in source.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of a built-in source.")] = 0,
) -> None:
    """Write a source's conversations as JSONL in the OpenAI chat format.

    Example: pathunlearn data export builtin:authors authors.jsonl
    """
    from pathunlearn.data.io import write_jsonl
    from pathunlearn.data.sources import load_source

    conversations = load_source(source, split=split, seed=seed)
    write_jsonl(out, (c.to_json() for c in conversations))
    console.print(f"wrote {len(conversations)} conversations to {out}")


# ---------------------------------------------------------------------------- model

model_app = typer.Typer(help="Load and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("info")
def model_info(args: ConfigArgs = None) -> None:
    """Load the config's model (building the tiny preset if needed) and describe it.

    Example: pathunlearn model info model.preset=null model.path=/models/Llama-3.2-1B-Instruct
    """
    from pathunlearn.config import load_config
    from pathunlearn.data.chat import render
    from pathunlearn.models import count_parameters, load_model, model_location

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    model, tokenizer = load_model(cfg.model)
    _, total = count_parameters(model)
    directory, gguf = model_location(cfg.model)
    console.print(f"model: {type(model).__name__} from {directory}{'/' + gguf if gguf else ''}")
    console.print(f"parameters: {total:,}  vocabulary: {len(tokenizer):,}  dtype: {model.dtype}")
    sample = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    console.print("chat template renders:", repr(render(tokenizer, sample)), highlight=False)


# ---------------------------------------------------------------------------- run


@app.command("run")
def run(args: ConfigArgs = None) -> None:
    """Run the whole path-dependence study (train paths, unlearn, evaluate, report).

    Example: pathunlearn run            # the built-in demo on the tiny model
    """
    from pathunlearn.config import load_config

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    raise UserError(
        f"config {cfg.name!r} is valid, but the end-to-end study is not implemented yet: "
        "staged training arrives with issue 3, unlearning with issue 4, `run` with issue 5"
    )


# ---------------------------------------------------------------------------- theory
# (section for `pathunlearn theory`, issue 7)
