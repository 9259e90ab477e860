"""The ``pathunlearn`` command line: parse, call the library, print.

Every user error (bad config, malformed data) is printed as one line and exits with code 2.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pathunlearn.errors import UserError

app = typer.Typer(
    help="Measure how the order of finetuning stages changes what local unlearning does.\n\n"
         "A mistake in the input (config, data, model files, arguments) is reported as one "
         "line per problem and exit code 2; add --debug (anywhere) or set "
         "PATHUNLEARN_DEBUG=1 to see the traceback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


DEBUG_ENV = "PATHUNLEARN_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback behind a one-line error."""

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EPERM}
"""Errors of a failed write that the user's machine causes (disk full, file too large,
read-only or forbidden directory): one line, not a traceback."""


def main() -> None:
    """Console-script entry point. A user's error (bad config, data, model files, arguments)
    is one line per problem on stderr and exit code 2; a write the machine refuses (disk full,
    read-only directory) is one line and exit code 1; ``--debug`` or PATHUNLEARN_DEBUG=1 adds
    the traceback. Anything else is a bug and keeps its traceback."""
    exceptions = _click_exceptions()
    no_args = getattr(exceptions, "NoArgsIsHelpError", ())
    debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = app(args=[a for a in sys.argv[1:] if a != "--debug"], prog_name="pathunlearn",
                   standalone_mode=False)
    except UserError as e:
        _fail(e, debug, [f"error: {line}" for line in str(e).splitlines() or [repr(e)]], 2)
    except no_args as e:
        console.print(e.ctx.get_help() if e.ctx else str(e), highlight=False)
        sys.exit(2)
    except exceptions.UsageError as e:
        command = e.ctx.command_path if e.ctx else "pathunlearn"
        _fail(e, debug, [f"error: {e.format_message()} (see: {command} --help)"], 2)
    except (typer.Abort, KeyboardInterrupt) as e:
        _fail(e, debug, [INTERRUPTED_LINE], INTERRUPTED)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        _fail(e, debug, [f"error: {where}{e.strerror or e}: the run stopped; what was being "
                         "written is discarded, what finished is kept (rerun to resume)"], 1)
    if code == INTERRUPTED:  # typer turns a KeyboardInterrupt into exit code 130 silently
        _fail(KeyboardInterrupt(), False, [INTERRUPTED_LINE], INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


INTERRUPTED = 130
INTERRUPTED_LINE = "interrupted: finished stages and cells are kept; rerun to resume"


def _click_exceptions():
    """The click exceptions typer raises: typer >= 0.20 vendors click as ``typer._click``."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(e: BaseException, debug: bool, lines: list[str], code: int) -> None:
    from rich.markup import escape

    if code == 2 and "WORLD_SIZE" in os.environ:  # under torchrun: every rank met this error
        from pathunlearn.distributed import exit_quietly_unless_rank_0

        exit_quietly_unless_rank_0(code)  # rank 0 alone prints it
    if debug:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    for line in lines:
        head, _, rest = line.partition(": ")
        err_console.print(f"[bold red]{escape(head)}:[/] {escape(rest)}", highlight=False,
                          soft_wrap=True)
    sys.exit(code)


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
    typer.Argument(help="Config YAML (default: the built-in demo), then key.sub=value overrides "
                        "(relative paths: the config file's folder in the file, the working "
                        "directory in an override).", show_default=False),
]

NoFigures = Annotated[bool, typer.Option(
    "--no-figures", help="Write the tables and report.html without the figures (for sweeps "
    "and quick checks; seconds a report); the figures of an earlier report are removed. "
    "`pathunlearn report RUN_DIR` draws them.")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Print errors and the final summary only: no progress bars, no "
    "line per finished unit, no notices.")]


def event_log(quiet: bool):
    """The ``log`` of a long command: the console, one line per event (on a terminal or
    not: an event's line is never wrapped at the console's width, so a log piped to a file
    keeps one line per finished unit), or with ``--quiet`` nothing (errors are raised, and
    printed by :func:`main`)."""
    if quiet:
        return lambda *args, **kwargs: None
    return lambda *args, **kwargs: console.print(*args, **{"soft_wrap": True, **kwargs})


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


@config_app.command("check")
def config_check(args: ConfigArgs = None) -> None:
    """Check a config and every input it names, without training: every stage's data (each
    record), method, probe source, the model's files and the output directory. Lists every
    problem, one line each, and exits with code 2; prints what was checked otherwise.

    Example: pathunlearn config check configs/paper/smollm2.yaml
    """
    from pathunlearn.checks import inspect_inputs, used_stages
    from pathunlearn.config import load_config

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    inspection = inspect_inputs(cfg)
    if inspection.problems:
        raise UserError("\n".join(inspection.problems)) from inspection.cause
    for note in inspection.notes:  # default probes left out (their fields are absent)
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"ok: {len(used_stages(cfg))} stages, {len(cfg.unlearning.methods)} methods, "
                  f"the probe sets, the model and {cfg.run_dir} checked", highlight=False)


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
    source: Annotated[str, typer.Argument(help="builtin:NAME[:SPLIT], ADAPTER:FILE[:SPLIT] (gsm8k, sorry-bench, tofu, skillmix), a data file, or a hub dataset hf:ORG/NAME[:SUBSET[:SPLIT]] (also ADAPTER:hf:...).")],
    n: Annotated[int, typer.Option(help="How many examples to print.")] = 3,
    split: Annotated[str | None, typer.Option(
        help="Split of a built-in source, of sorry-bench:FILE|DIR or of tofu:FILE|DIR[:SUBSET].")] = None,
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
    source: Annotated[str, typer.Argument(help="builtin:NAME[:SPLIT], ADAPTER:FILE[:SPLIT] (gsm8k, sorry-bench, tofu, skillmix), a data file, or a hub dataset hf:ORG/NAME[:SUBSET[:SPLIT]] (also ADAPTER:hf:...).")],
    out: Annotated[Path, typer.Argument(help="Output .jsonl (OpenAI chat format).")],
    split: Annotated[str | None, typer.Option(
        help="Split of a built-in source, of sorry-bench:FILE|DIR or of tofu:FILE|DIR[:SUBSET].")] = None,
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


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(
        help="hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]] (the hf: may be left out).")],
) -> None:
    """Download a dataset from the Hugging Face hub into the HF cache ahead of a run (HF_HOME /
    HF_HUB_CACHE; HF_TOKEN for gated ones), so `hf:` sources load offline (HF_HUB_OFFLINE=1).
    Prints where it is and the commit it resolved to; with HF_HUB_OFFLINE set, only says
    whether the cache holds it.

    Example: pathunlearn data fetch hf:locuslab/TOFU
    """
    from pathunlearn.hub import fetch_dataset

    console.print(fetch_dataset(dataset), highlight=False, soft_wrap=True)


@data_app.command("samples")
def data_samples(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the sample files.")],
    n: Annotated[int, typer.Option(min=1, help="Records per file, at most.")] = 64,
) -> None:
    """Write small files in the release formats of Instruct-SkillMix, TOFU, GSM8K and
    SORRY-BENCH, made from the built-in suite (invented facts, sanitized placeholder prompts),
    so a study on the benchmark adapters runs offline (configs/paper/smollm2.yaml reads them).

    Example: pathunlearn data samples data/paper-samples
    """
    from pathunlearn.data.samples import write_release_samples

    for name, path in write_release_samples(out_dir, n).items():
        console.print(f"{name}: {path}", highlight=False)


# the options of `data rewrite`, declared once (the command's signature names them)
_RwTask = Annotated[str, typer.Argument(
        help="safety: SORRY-BENCH prompts -> the refusal sentence plus a reason; math: GSM8K "
             "-> step-by-step solutions kept when '#### N' matches the gold answer.",
        metavar="safety|math", show_default=False)]
_RwSrc = Annotated[Path, typer.Argument(help="SORRY-BENCH or GSM8K records (.json/.jsonl/"
                                        ".csv/.parquet).", metavar="INPUT",
                                        show_default=False)]
_RwOut = Annotated[Path, typer.Argument(help="Output .jsonl (loads with sorry-bench:/gsm8k:).",
                                        metavar="OUTPUT", show_default=False)]
_RwBaseUrl = Annotated[str, typer.Option(help="OpenAI-compatible endpoint, e.g. "
                                          "http://127.0.0.1:8000/v1.", show_default=False)]
_RwModel = Annotated[str, typer.Option(help="Model name the endpoint serves.",
                                       show_default=False)]
_RwApiKeyEnv = Annotated[str, typer.Option(
        help="Environment variable holding the API key (never written anywhere).")]
_RwCache = Annotated[Path | None, typer.Option(
        help="JSONL cache of finished records [default: OUT.cache.jsonl].")]
_RwTemplate = Annotated[Path | None, typer.Option(
        help="YAML with `user` (and `system`) texts replacing the built-in instructions.")]
_RwSplit = Annotated[str, typer.Option(help="safety: the sorry-bench split to rewrite "
                                       "(train, test, all).")]
_RwOutputFormat = Annotated[str, typer.Option(
        "--format", help="release (input records + answer) or chat (messages).")]
_RwTemperature = Annotated[float, typer.Option(min=0.0, max=2.0)]
_RwMaxTokens = Annotated[int | None, typer.Option(
        min=1, help="Completion tokens per request [default: 200 safety, 600 math].")]
_RwSeed = Annotated[int | None, typer.Option(help="Seed sent to the endpoint.")]
_RwConcurrency = Annotated[int, typer.Option(min=1, help="Requests in flight.")]
_RwMaxRetries = Annotated[int, typer.Option(
        min=0, help="Retries after 429/5xx/timeouts/drops/malformed replies.")]
_RwBackoff = Annotated[float, typer.Option(min=0.0, help="First retry delay (s), doubled "
                                           "each retry, full jitter.")]
_RwBackoffMax = Annotated[float, typer.Option(min=0.0, help="Longest retry delay (s).")]
_RwTimeout = Annotated[float, typer.Option(min=0.001, help="Seconds per request.")]
_RwContentRetries = Annotated[int, typer.Option(
        min=0, help="Asks again for a reply failing the check, before dropping it.")]
_RwPriceIn = Annotated[float, typer.Option(min=0.0, help="$ per 1k prompt tokens.")]
_RwPriceOut = Annotated[float, typer.Option(min=0.0, help="$ per 1k completion tokens.")]
_RwRetryErrors = Annotated[bool, typer.Option(
        help="Send again records a 4xx refused in an earlier run.")]
_RwMaxFailedFraction = Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Exit with code 1 when more than this fraction of the records "
        "is not kept (always when none is).")]
_RwDryRun = Annotated[bool, typer.Option(
        help="Print the requests and a bound on their cost; send and write nothing.")]


@data_app.command("rewrite")
def data_rewrite(
    task: _RwTask,
    src: _RwSrc,
    out: _RwOut,
    base_url: _RwBaseUrl,
    model: _RwModel,
    api_key_env: _RwApiKeyEnv = "OPENAI_API_KEY",
    cache: _RwCache = None,
    template: _RwTemplate = None,
    split: _RwSplit = "all",
    output_format: _RwOutputFormat = "release",
    temperature: _RwTemperature = 0.7,
    max_tokens: _RwMaxTokens = None,
    seed: _RwSeed = None,
    concurrency: _RwConcurrency = 8,
    max_retries: _RwMaxRetries = 6,
    backoff: _RwBackoff = 1.0,
    backoff_max: _RwBackoffMax = 30.0,
    timeout: _RwTimeout = 60.0,
    content_retries: _RwContentRetries = 1,
    price_in: _RwPriceIn = 0.0,
    price_out: _RwPriceOut = 0.0,
    retry_errors: _RwRetryErrors = False,
    max_failed_fraction: _RwMaxFailedFraction = 0.5,
    dry_run: _RwDryRun = False,
) -> None:
    """Write the paper's LLM-made stages with any OpenAI-compatible endpoint (docs/llm.md).

    Resumable: every finished record is appended to the cache; a rerun sends no cached
    request again. OUT is written atomically in input order, the other records (with
    reasons) to OUT's stem + .dropped.jsonl. Exit code 2: bad input, nothing sent; 1: the
    job failed (records left unanswered, none kept, or more than --max-failed-fraction not
    kept; the summary gives the top reasons).

    Example: pathunlearn data rewrite math gsm8k/train.jsonl math.jsonl --base-url
    http://127.0.0.1:8000/v1 --model tiny --dry-run
    """
    from pathunlearn import rewrite as rewriting

    # every option is checked by RewriteOptions (one UserError naming it); nothing here
    opts = rewriting.RewriteOptions(
        task=task, input=src, output=out, base_url=base_url, model=model,
        api_key_env=api_key_env, cache=cache, template=template, split=split,
        format=output_format, temperature=temperature, max_tokens=max_tokens, seed=seed,
        concurrency=concurrency, max_retries=max_retries, backoff=backoff,
        backoff_max=backoff_max, timeout=timeout, content_retries=content_retries,
        price_in=price_in, price_out=price_out, retry_errors=retry_errors,
        max_failed_fraction=max_failed_fraction)
    if dry_run:
        _print_dry_run(rewriting.dry_run(opts))
        return
    summary = rewriting.rewrite(opts, log=console.print, progress=True)
    if _print_rewrite(summary, rewriting.failures(summary, opts), out):
        sys.exit(1)


def _print_dry_run(p: dict) -> None:
    """What `data rewrite --dry-run` would send, and a bound on its cost."""
    from rich.markup import escape

    console.print(f"{p['records']} records, {p['cached']} cached: {p['requests']} requests "
                  f"(at most {p['max_requests']} with content retries), at most "
                  f"{p['max_prompt_tokens']:,} prompt + {p['max_completion_tokens']:,} "
                  f"completion tokens, cost at most ${p['max_cost']:.4f}", highlight=False,
                  soft_wrap=True)
    if p["first_request"]:
        console.print("first request:", escape(str(p["first_request"])), highlight=False,
                      soft_wrap=True)


def _print_rewrite(summary, failures: list[str], out: Path) -> bool:
    """The summary of a finished `data rewrite`, then its failures; True if it failed."""
    from rich.markup import escape

    for line in summary.lines():
        console.print(escape(line), highlight=False, soft_wrap=True)
    console.print(f"wrote {summary.kept} records to {escape(str(out))}", highlight=False,
                  soft_wrap=True)
    for line in failures:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False,
                          soft_wrap=True)
    return bool(failures)


# ---------------------------------------------------------------------------- model

model_app = typer.Typer(help="Build, load and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("info")
def model_info(args: ConfigArgs = None) -> None:
    """Load the config's model and describe it (a preset must be built: `model build`).

    Example: pathunlearn model info model.preset=null model.path=/models/Llama-3.2-1B-Instruct
    """
    from pathunlearn.config import load_config
    from pathunlearn.data.chat import render
    from pathunlearn.models import check_model_files, count_parameters, load_model, model_location

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    problems = check_model_files(cfg.model)
    if problems:
        raise UserError("\n".join(problems))
    model, tokenizer = load_model(cfg.model)
    _, total = count_parameters(model)
    directory, gguf = model_location(cfg.model)
    console.print(f"model: {type(model).__name__} from {directory}{'/' + gguf if gguf else ''}")
    console.print(f"parameters: {total:,}  vocabulary: {len(tokenizer):,}  dtype: {model.dtype}")
    sample = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    console.print("chat template renders:", repr(render(tokenizer, sample)), highlight=False)


@model_app.command("build")
def model_build(args: ConfigArgs = None) -> None:
    """Build the config's base model when it is a preset built locally (the tiny preset:
    tokenizer + pretraining on builtin:general, ~3.5 min on 2 cores, once, cached).

    Loading a model never builds one; `pathunlearn run` and `train` build the base model of
    their plan first when it is missing.

    Example: pathunlearn model build
    """
    from pathunlearn.config import load_config
    from pathunlearn.train.pretrain import ensure_base

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    ensure_base(cfg.model, progress=True, log=console.print)
    if cfg.model.preset == "tiny":
        from pathunlearn.tiny import tiny_location

        console.print(f"tiny preset: {tiny_location()}")
    else:
        console.print(f"nothing to build: model.{'preset' if cfg.model.preset else 'path'} "
                      f"{cfg.model.preset or cfg.model.path} is loaded as it is")


@model_app.command("fetch")
def model_fetch(
    model_id: Annotated[str, typer.Argument(help="A hub id: ORG/NAME[@REVISION].")],
) -> None:
    """Download a model from the Hugging Face hub into the HF cache ahead of a run (its
    config, safetensors weights and tokenizer; HF_HOME / HF_HUB_CACHE; HF_TOKEN for gated
    ones), so `model.path=ORG/NAME` loads offline (HF_HUB_OFFLINE=1). Prints where it is and
    the commit it resolved to; with HF_HUB_OFFLINE set, only says whether the cache holds it.

    Example: pathunlearn model fetch HuggingFaceTB/SmolLM2-135M-Instruct
    """
    from pathunlearn.hub import fetch_model

    console.print(fetch_model(model_id), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------- train


@app.command("train")
def train(
    args: ConfigArgs = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="Print the plan and exit.")] = False,
    quiet: Quiet = False,
) -> None:
    """Finetune the base model along every path (and retrain baseline), stage after stage.

    Paths sharing a prefix share its training (each distinct prefix is trained once and
    cached in RUN_DIR/prefixes); rerunning resumes at the first unfinished prefix.

    Example: pathunlearn train configs/demo.yaml --plan
    """
    from pathunlearn.config import load_config

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    if plan_only:
        from pathunlearn.plan import plan_run
        from pathunlearn.report.terminal import print_plan

        print_plan(plan_run(cfg), cfg, console)
        return
    from pathunlearn.experiment import train as train_run

    train_run(cfg, progress=not quiet, log=event_log(quiet))
    console.print(f"path models in {cfg.run_dir / 'prefixes'}")


# ---------------------------------------------------------------------------- eval

eval_app = typer.Typer(help="Evaluate models by generation.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("math")
def eval_math(
    model_dir: Annotated[str, typer.Argument(show_default=False, help=(
        "A local model directory (a path model RUN/prefixes/KEY, a cell's model/) or 'tiny'."))],
    run: Annotated[Path | None, typer.Option("--run", show_default=False, help=(
        "A run directory: its unlearning.math and seed are the defaults, its model settings "
        "load the model: on a path model, the cells' math before unlearning again."))] = None,
    data: Annotated[str | None, typer.Option(show_default=False, help=(
        "builtin:NAME[:SPLIT], gsm8k:FILE (gsm8k:hf:openai/gsm8k:main:test) or a data file; "
        "gold answers from meta.answer or '#### N'. Default: unlearning.math.source."))] = None,
    n: Annotated[int | None, typer.Option(min=1, show_default=False, help=(
        "Samples per question (the paper: 5). Default: unlearning.math.samples."))] = None,
    max_questions: Annotated[int | None, typer.Option(min=1, show_default=False, help=(
        "Evaluate only the first N questions. Default: all; the run's unlearning.math.questions."))
    ] = None,
    temperature: Annotated[float | None, typer.Option(show_default=False, help=(
        "Sampling temperature (> 0). Default: unlearning.math.temperature."))] = None,
    top_p: Annotated[float | None, typer.Option(show_default=False, help=(
        "Nucleus (top-p) sampling mass, in (0, 1]. Default: unlearning.math.top_p."))] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, show_default=False, help=(
        "Tokens per response, at most. Default: unlearning.math.max_new_tokens."))] = None,
    greedy: Annotated[bool | None, typer.Option("--greedy/--no-greedy", show_default=False,
        help="Greedy decoding: one response per question. Default: unlearning.math.greedy.")] = None,
    seed: Annotated[int | None, typer.Option(show_default=False, help=(
        "Sampling seed (same seed, same samples). Default: 0; the run's first seed."))] = None,
    prompt: Annotated[str | None, typer.Option(show_default=False, help=(
        "paper: the Appendix F '####' prompt; plain: the question as is; auto: plain for "
        "built-in data; or a template with {question}. Default: unlearning.math.prompt."))] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, show_default=False, help=(
        "Sequences generated at once (samples do not depend on it). Default: a cell's."))] = None,
    device: Annotated[str | None, typer.Option(show_default=False, help=(
        "auto, cpu, cuda, cuda:1 ... Default: auto; the run's runtime.device."))] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (summary and every response).")] = False,
) -> None:
    """Math accuracy by sampling, measured as a run's cells measure it (unlearning.math).

    Accuracy: mean over questions of the fraction of correct samples (the paper's GSM8K
    utility); no answer: responses without '####'; shuffled baseline: scored against other
    questions' answers. Defaults are unlearning.math's, the run's with --run.

    Example: pathunlearn eval math runs/demo/prefixes/KEY --run runs/demo
    """
    import json

    from pathunlearn.eval.math import math_report, math_request
    from pathunlearn.rundir import CONFIG
    from pathunlearn.train.unlearn import model_math

    flags = {"data": data, "max_questions": max_questions, "n": n, "temperature": temperature,
             "top_p": top_p, "greedy": greedy, "max_new_tokens": max_new_tokens, "prompt": prompt}
    want = math_request(run / CONFIG if run else None, flags, seed, device)
    directory = _model_directory(model_dir)
    result, seconds, kept = model_math(directory, want, batch_size, run)
    if json_output:
        sys.stdout.write(json.dumps({"model": str(directory), "data": want.settings.source,
                                     "seconds": seconds, **result.to_json(),
                                     "run_math_before": kept and kept.to_json(False)}) + "\n")
    else:
        console.print(f"model: {directory}\n{math_report(result, want, seconds, kept)}",
                      highlight=False, soft_wrap=True)


@eval_app.command("forget-quality")
def eval_forget_quality(
    run: Annotated[Path, typer.Argument(show_default=False, help="A run directory whose "
                                        "probes have a forget set with truth_ratio.")],
    reference: Annotated[str, typer.Option("--reference", show_default=False, help=(
        "A model directory (another run's prefix, a retain model saved with "
        "save_pretrained) or 'tiny': the one reference every cell is tested against."))],
    device: Annotated[str | None, typer.Option(show_default=False, help=(
        "auto, cpu, cuda, cuda:1 ... Default: the run's runtime.device."))] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (the reference's truth ratios, every cell).")
    ] = False,
) -> None:
    """Forget quality of every finished cell against one reference model, beside the value
    against the cell's own path's retrain model (as OpenUnlearning compares every unlearned
    model with one retain model; docs/metrics.md).

    The reference's truth ratios are measured on the run's forget set; each cell's come from
    its items.jsonl at its last eval point.

    Example: pathunlearn eval forget-quality runs/demo --reference runs/demo/prefixes/KEY
    """
    import json

    from pathunlearn.eval.cell import field_reference
    from pathunlearn.models import load_checkpoint, resolve_device
    from pathunlearn.report.field import against_lines, against_reference
    from pathunlearn.rundir import load_run

    loaded = load_run(run)
    directory = _model_directory(reference)
    model, tok = load_checkpoint(directory, loaded.config.model,
                                 resolve_device(device or loaded.config.runtime.device))
    ref = field_reference(model, tok, loaded.probes, loaded.config.model.max_length)
    rows = against_reference(loaded, ref.truth_ratios)
    if json_output:
        sys.stdout.write(json.dumps({"run": str(run), "reference": str(directory),
                                     "reference_truth_ratios": ref.truth_ratios,
                                     "cells": [r.to_json() for r in rows]}) + "\n")
        return
    console.print(f"reference: {directory}", highlight=False, soft_wrap=True)
    for line in against_lines(rows):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _model_directory(model_dir: str) -> Path:
    """The directory of MODEL_DIR: the tiny preset for 'tiny', else a checked local path."""
    if model_dir == "tiny":
        from pathunlearn.tiny import tiny_location

        return tiny_location()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{model_dir}: not a Hugging Face model directory (no config.json); "
                        "give a directory written by save_pretrained, or 'tiny'")
    return path


@eval_app.command("lmeval")
def eval_lmeval(
    model_dir: Annotated[str, typer.Argument(show_default=False, help=(
        "A local model directory (a path model RUN/prefixes/KEY, a cell's model/) or 'tiny'."))],
    tasks: Annotated[str, typer.Option("--tasks", show_default=False, help=(
        "lm-eval task, group or tag names, comma-separated (hellaswag,arc_easy), or tasks "
        "defined in --include-path."))],
    include_path: Annotated[list[Path] | None, typer.Option(
        "--include-path", show_default=False,
        help="A directory of lm-eval task YAML files (repeat for more); relative data files "
             "in a task are read relative to its YAML.")] = None,
    run: Annotated[Path | None, typer.Option("--run", show_default=False, help=(
        "A run directory: its model settings (dtype, attention) load the model, as its cells "
        "load their path model, and its runtime.device is the default device."))] = None,
    limit: Annotated[int | None, typer.Option(min=1, show_default=False, help=(
        "Score only the first N documents of each task. Default: all."))] = None,
    num_fewshot: Annotated[int | None, typer.Option(min=0, show_default=False, help=(
        "Few-shot examples per prompt. Default: each task's own, else 0."))] = None,
    batch_size: Annotated[int, typer.Option(min=1, help=(
        "Requests scored at once (scores do not depend on it beyond float rounding)."))] = 8,
    device: Annotated[str | None, typer.Option(show_default=False, help=(
        "auto, cpu, cuda, cuda:1 ... Default: auto; the run's runtime.device."))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", show_default=False, help=(
        "Also write the record (model, tasks, results, documents scored) to this JSON file "
        "(atomically)."))] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the record as one JSON object.")] = False,
) -> None:
    """Run lm-evaluation-harness tasks on a saved model (needs the lmeval extra).

    Scores per task and metric as lm-eval reports them, with their standard errors. A local
    task over local files needs no network: see docs/lmeval.md.

    Example: pathunlearn eval lmeval tiny --tasks pathunlearn_everyday --include-path
    tests/eval/lmeval_task
    """
    import json
    from functools import partial

    from pathunlearn.eval.lmeval import evaluate_saved, format_results, model_request
    from pathunlearn.models import load_checkpoint, load_pretrained, resolve_device
    from pathunlearn.rundir import CONFIG

    model_cfg, device_name = model_request(run / CONFIG if run else None, device)
    where = resolve_device(device_name)
    load = (partial(load_checkpoint, cfg=model_cfg, device=where) if model_cfg is not None
            else partial(load_pretrained, device=where))
    directory = _model_directory(model_dir)
    got = evaluate_saved(directory, load, tasks.split(","), include_path=include_path or None,
                         limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                         output=output)
    if json_output:
        sys.stdout.write(json.dumps(got) + "\n")
    else:
        console.print(f"model: {directory} ({got['seconds']:.1f}s, lm-eval {got['lm_eval']})\n"
                      f"{format_results(got['results'])}", highlight=False, markup=False,
                      soft_wrap=True)


# ---------------------------------------------------------------------------- methods


@app.command("methods")
def methods_command(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON list.")] = False,
) -> None:
    """List the built-in unlearning methods: locality, what a cell caches for each, their
    settings and defaults (docs/methods.md)."""
    import json

    from pathunlearn.methods import method_listing

    rows = method_listing()
    if json_output:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    from pathunlearn.report.terminal import methods_lines

    for line in methods_lines(rows, console.width):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


# ---------------------------------------------------------------------------- serve


@app.command("serve")
def serve_command(
    model: Annotated[str, typer.Argument(
        help="A checkpoint directory (a path model, an unlearned model: anything "
             "save_pretrained wrote), a .gguf file, tiny or smollm2.",
        metavar="CHECKPOINT|tiny|smollm2", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only by "
                                      "default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 8000,
    name: Annotated[str | None, typer.Option(
        help="Model name clients use [default: tiny, smollm2 or the directory name].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    max_batch: Annotated[int, typer.Option(
        help="Queued requests decoded together (rows).")] = 8,
    max_tokens_limit: Annotated[int, typer.Option(
        help="Largest max_tokens a request may ask for.")] = 1024,
    default_max_tokens: Annotated[int, typer.Option(
        help="max_tokens of a request that gives none.")] = 256,
    max_request_bytes: Annotated[int, typer.Option(
        help="Largest request body in bytes; bigger is a 413, read no further.")] = 2**20,
    max_messages: Annotated[int, typer.Option(
        help="Most messages in one request.")] = 256,
    max_content_chars: Annotated[int, typer.Option(
        help="Most characters of message content in one request, all messages.")] = 200_000,
    max_stop_chars: Annotated[int, typer.Option(
        help="Longest stop string (at most 4 of them, as OpenAI).")] = 64,
    request_timeout: Annotated[float, typer.Option(
        help="Seconds a request may take: decoding stops there (finish_reason length); "
             "one still queued then is a 503.")] = 120.0,
    max_queued: Annotated[int, typer.Option(
        help="Most requests held at once (queued or decoding); one more is a 503.")] = 256,
) -> None:
    """Serve a model through an OpenAI-compatible API (/v1/chat/completions, streaming too,
    /v1/models, /health), with its chat template and the project's sampler (docs/llm.md).

    Example: pathunlearn serve runs/demo/prefixes/<key> --port 8000
    """
    from pathunlearn.serve import ServeOptions, serve

    options = ServeOptions(
        host=host, port=port, name=name, device=device, dtype=dtype, threads=threads,
        max_batch=max_batch, max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens, max_request_bytes=max_request_bytes,
        max_messages=max_messages, max_content_chars=max_content_chars,
        max_stop_chars=max_stop_chars, request_timeout=request_timeout, max_queued=max_queued)
    serve(model, options, log=lambda line: console.print(line, highlight=False, soft_wrap=True))


# ---------------------------------------------------------------------------- unlearn


@app.command("unlearn")
def unlearn(args: ConfigArgs = None, quiet: Quiet = False) -> None:
    """Unlearn the forget stage from every path model (training any missing path first).

    Runs every cell (path x method x seed x swept lr/scheduler), tracking the probes before
    the first step and every `unlearning.eval_every` steps; finished cells are skipped (the
    same plan as `pathunlearn run`, so a later `run` recomputes none of them).

    Example: pathunlearn unlearn configs/demo.yaml unlearning.lr=3e-5 unlearning.steps=10
    """
    from pathunlearn.config import load_config
    from pathunlearn.experiment import unlearn as unlearn_run

    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    summaries = unlearn_run(cfg, progress=not quiet, log=event_log(quiet))
    diverged = [s for s in summaries if s["diverged_at"]]
    console.print(f"{len(summaries)} cells in {cfg.run_dir / 'cells'}"
                  + (f"; {len(diverged)} diverged" if diverged else ""))


# ---------------------------------------------------------------------------- report


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds config.yaml, plan.json "
                                            "and cells/).", metavar="RUN_DIR",
                                            show_default=False)],
    details: Annotated[bool, typer.Option(
        "--details", help="Print the whole table, its notes and the verdicts in full, not "
        "the summary.")] = False,
    width: Annotated[int | None, typer.Option(
        min=60, show_default=False, help="Columns the summary fits in [default: the "
        "terminal's].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the summary only (not "
                                        "the files written).")] = False,
    no_figures: NoFigures = False,
) -> None:
    """Rebuild the table, recency verdict, figures and report.html from RUN_DIR's cells.

    Reads RUN_DIR/config.yaml (validated) and RUN_DIR/plan.json, and every finished cell of
    the plan. Writes RUN_DIR/results.{json,csv,md}, RUN_DIR/figures/*.{png,svg} and
    RUN_DIR/report.html, then prints the summary: one verdict line per method and a table
    that fits the terminal (--details: everything). Safe to rerun while cells are still being
    added.

    Example: pathunlearn report runs/demo --width 80
    """
    from rich.markup import escape

    from pathunlearn.report import make_report
    from pathunlearn.report.terminal import print_results
    from pathunlearn.rundir import load_run

    results, figures, page = make_report(load_run(run_dir), figures=not no_figures)
    print_results(results, console, details=details, width=width)
    files = [*results.files, *figures, page]
    event_log(quiet)(f"wrote {len(files)} files: results.{{json,csv,md}}, {len(figures)} "
                     f"figure files in {escape(str(run_dir / 'figures'))}, {escape(str(page))}",
                     highlight=False)


# ---------------------------------------------------------------------------- run


@app.command("run")
def run(
    args: ConfigArgs = None,
    executor: Annotated[str | None, typer.Option(
        "--executor", metavar="local|ray",
        help="Where prefixes and cells run: local (this process, the default) or ray (a Ray "
             "task each; docs/distributed.md). Overrides executor.kind.", show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", metavar="auto|HOST:PORT|ray://HOST:PORT",
        help="The Ray cluster to join (default: start Ray on this machine). Overrides "
             "executor.address.", show_default=False)] = None,
    quiet: Quiet = False,
    no_figures: NoFigures = False,
) -> None:
    """Run the whole path-dependence study: train every path (and its retrain baseline),
    unlearn with every method and seed, then write the table, the recency verdict, figures
    and report.html. Rerunning resumes and skips what is done.

    Example: pathunlearn run            # the built-in demo (tiny model, built-in suite)

    Example: pathunlearn run my.yaml --executor ray --address auto   # on a Ray cluster
    """
    from pathunlearn.config import load_config
    from pathunlearn.experiment import run_experiment
    from pathunlearn.report.terminal import print_results

    config, overrides = split_args(args)
    overrides += executor_overrides(executor, address)
    cfg = load_config(config, overrides)
    results, _, page = run_experiment(cfg, log=event_log(quiet), progress=not quiet,
                                      figures=not no_figures)
    print_results(results, console)
    console.print(f"report: {page}")


def executor_overrides(executor: str | None, address: str | None) -> list[str]:
    """``--executor`` / ``--address`` as config overrides (checked like the config's keys);
    an address implies ``--executor ray``."""
    import json

    out = []
    if executor is not None or address is not None:
        out.append(f"executor.kind={json.dumps(executor or 'ray')}")
    if address is not None:
        out.append(f"executor.address={json.dumps(address)}")
    return out


# ---------------------------------------------------------------------------- theory
# (section for `pathunlearn theory`, issue 7)

TheoryArgs = Annotated[
    list[str] | None,
    typer.Argument(help="Theory YAML (default: the built-in configs/theory.yaml), then key=value "
                        "overrides.", show_default=False),
]


@app.command()
def theory(
    args: TheoryArgs = None,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for figures and theory.json.")
    ] = Path("runs/theory"),
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object (every quantity, per-t table) only."),
    ] = False,
    matrices: Annotated[
        bool, typer.Option("--matrices", help="Include the d×d matrices P_U and M_U in the JSON.")
    ] = False,
) -> None:
    """Run the paper's linear theory (Section 3) and check Theorem 3.1 numerically.

    Trains θ_AB and θ_BA by two proximal-ridge stages (closed form, cross-checked by gradient
    descent), unlearns both by gradient ascent on a forget set, and prints d(θ_AB^t, θ_BA^t)
    beside the bound σ_U²‖P_UΔθ₀‖²(1+ρ*)^{2t}/(4m); then the three-position study (stage U
    first, middle, last, against a model retrained on A and B) and the weakly-local λ sweep.
    Writes theory.json and figures (PNG, SVG) to --out.

    Parameters, read like an experiment config (a YAML file, then key=value overrides whose
    values are parsed as YAML): d, n_a, n_b, n_u, forget, k, m, mu_a, mu_b, mu_u, eta, steps,
    dist_a, shift_a, scale_a, dist_b, shift_b, scale_b, dist_u, shift_u, scale_u, noise,
    epsilon, lambdas, n_retain, seed. Each is documented in
    pathunlearn.theory.linear.TheoryParams; their defaults are src/pathunlearn/configs/theory.yaml.

    Example: pathunlearn theory d=200 eta=0.05 lambdas=[0,1,2] --json
    """
    import json

    from pathunlearn.theory import linear, plots
    from pathunlearn.theory.terminal import print_theory

    config, overrides = split_args(args)
    params = linear.load_params(config, overrides)
    result = linear.run_theory(params)
    report = plots.write_outputs(result, out, matrices=matrices)
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    print_theory(report, console)
