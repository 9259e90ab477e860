"""Math accuracy by generation: the paper's ``####`` prompt, answer extraction, scoring.

The paper's utility score on math is GSM8K accuracy with 5 samples per question: each
question scores the fraction of its samples whose final answer is right, and accuracy is the
mean over questions (Table 1, "math utility"). A response gives its final answer after a
``####`` delimiter; a response without one counts as wrong and is also counted as "no answer".

Prompt styles: ``paper`` wraps the question in the Appendix F instruction (for real instruct
models); ``plain`` asks the question as it is, which is what the built-in ``arithmetic`` stage
trains on — evaluate the built-in tiny model with ``plain``.

Answers are compared as exact fractions (:class:`fractions.Fraction`): ``1,000 == 1000``,
``42.0 == 42``, ``3.50 == 3.5``, ``6/3 == 2``; a fraction that is not whole (``1/2``) is kept as
the number it denotes (0.5) and compared like any other.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pathunlearn import metrics as M
from pathunlearn.config import MathConfig, ModelConfig
from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError

PromptStyle = Literal["paper", "plain"]
PROMPT_STYLES: tuple[str, ...] = ("paper", "plain")

# Our wording of the structure of the paper's Appendix F prompt.
MATH_PROMPT = """Solve the following math problem.

### Problem
{question}

### Output Requirement
Explain your solution step by step. After the explanation, write a delimiter line that \
contains exactly "####", followed by only the final numerical answer: no words, symbols or \
units. For example, if the answer is 42, your response ends with "#### 42"."""

# a delimiter is exactly four '#' (a markdown "### Problem" heading or "#####" is not one)
_DELIMITER = re.compile(r"(?<!#)####(?!#)")
# sign and currency in either order, thousands separated by commas or (thin, no-break) spaces,
# decimals, an exponent, an optional "/ b"
_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212])?(?:[$€£¥]\s*)?(?P<sign2>[-+\u2212])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?!\d)|\d+)?"
    r"(?P<frac>\.\d+)?(?P<exp>[eE][-+\u2212]?\d+)?"
    r"(?:\s*/\s*(?P<den>\d+)(?![.\d]))?"
)


def math_prompt(question: str, style: PromptStyle | str = "paper") -> str:
    """The user message that asks ``question``: the Appendix F prompt (``paper``), the
    question as is (``plain``), or a template with ``{question}`` where the question goes (the
    rest of the template is kept verbatim, braces included)."""
    if style == "plain":
        return question
    if style == "paper":
        return MATH_PROMPT.format(question=question.strip())
    if "{question}" in style:
        return style.replace("{question}", question.strip())
    raise ValueError(f"prompt style must be one of {PROMPT_STYLES} or a template with "
                     f"{{question}}, got {style!r}")


def _last_user(conv: Conversation) -> tuple[list[dict[str, str]], int]:
    """The messages before the last assistant turn (all when there is none) and the index of
    the last user message among them."""
    has_answer = any(m["role"] == "assistant" for m in conv.messages)
    messages = [dict(m) for m in (conv.prompt if has_answer else conv.messages)]
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise DataError("a math question needs a user message")
    return messages, last


def question_messages(conv: Conversation, style: PromptStyle = "paper") -> list[dict[str, str]]:
    """The messages to generate from: the conversation before its reference answer, its last
    user message (the question) put through :func:`math_prompt`."""
    messages, last = _last_user(conv)
    messages[last]["content"] = math_prompt(messages[last]["content"], style)
    return messages


def _question(conv: Conversation) -> str:
    messages, last = _last_user(conv)
    return messages[last]["content"]


# ---------------------------------------------------------------------------------------------
# answers


def parse_number(text: str) -> Fraction | None:
    """The first number in ``text`` as an exact fraction, or None.

    Accepts a sign (``+``, ``-``, the unicode minus), a currency sign before or after it
    (``$``, ``€``, ``£``, ``¥``), thousands separators (``1,234``, ``1 234`` with a space, a
    thin or a no-break space), decimals (``3.50``, ``.5``), an exponent (``2e3``, ``1.5E-2``)
    and ``a/b``; words, units and punctuation around the number are ignored.
    """
    for m in _NUMBER.finditer(text):
        if m["int"] is None and m["frac"] is None:
            continue
        digits = re.sub(r"[, \u00a0\u2009\u202f]", "", m["int"] or "0") + (m["frac"] or "")
        value = Fraction(digits)
        if m["exp"] is not None:
            value *= Fraction(10) ** int(m["exp"][1:].replace("\u2212", "-"))
        if m["den"] is not None:
            if int(m["den"]) == 0:
                return None
            value /= int(m["den"])
        negative = (m["sign"] or m["sign2"] or "") in ("-", "\u2212")
        return -value if negative else value
    return None


def extract_answer(text: str) -> Fraction | None:
    """The final answer of a response: the first number after its last ``####`` delimiter.

    The number is looked for on the rest of the delimiter's line (the inline ``#### 42``
    form) or, when that is blank, on the next non-blank line (a line that is exactly
    ``####`` followed by the answer). None when there is no delimiter or no number there.
    """
    delimiters = list(_DELIMITER.finditer(text))
    if not delimiters:
        return None
    rest = text[delimiters[-1].end():]
    line = next((ln for ln in rest.splitlines() if ln.strip()), "")
    return parse_number(line)


def to_number(answer: Any) -> Fraction | None:
    """A gold answer (int, float, Fraction or text such as ``"1,234"``) as a fraction."""
    if isinstance(answer, bool) or answer is None:
        return None
    if isinstance(answer, int | Fraction):
        return Fraction(answer)
    if isinstance(answer, float):
        if answer != answer or answer in (float("inf"), float("-inf")):
            return None
        return Fraction(repr(answer))  # 0.1 means one tenth, not its binary approximation
    return parse_number(str(answer))


def is_correct(text: str, answer: Any) -> bool:
    """Whether the response's extracted answer equals ``answer`` numerically."""
    got, gold = extract_answer(text), to_number(answer)
    return got is not None and gold is not None and got == gold


def gold_answer(conv: Conversation) -> Fraction | None:
    """``meta["answer"]`` when present, else the answer after ``####`` in the reference response."""
    if "answer" in conv.meta:
        return to_number(conv.meta["answer"])
    if any(m["role"] == "assistant" for m in conv.messages):
        return extract_answer(conv.response)
    return None


def gold_answers(conversations: list[Conversation]) -> list[Fraction]:
    """The gold answer of every conversation; a :class:`DataError` naming the first record
    without one (or for no records at all)."""
    if not conversations:
        raise DataError("no math questions to evaluate")
    golds = [gold_answer(c) for c in conversations]
    missing = [i for i, g in enumerate(golds) if g is None]
    if missing:
        raise DataError(f"math record {missing[0]} ({len(missing)} of {len(golds)} in all) has "
                        "no answer: give meta.answer or end the reference response with '#### N'")
    return golds


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class QuestionResult:
    """One question: its prompt text, gold answer, samples and what was extracted from them."""

    question: str
    answer: Fraction
    responses: list[str]
    extracted: list[Fraction | None]

    @property
    def correct(self) -> list[bool]:
        return [x is not None and x == self.answer for x in self.extracted]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def no_answer(self) -> float:
        return sum(x is None for x in self.extracted) / len(self.extracted)


@dataclass(frozen=True)
class MathResult:
    """Generation-based math accuracy (the paper's math utility).

    ``accuracy``: mean over questions of the fraction of correct samples. ``no_answer_rate``:
    fraction of all samples without a ``####`` answer. ``shuffled_accuracy``: the same score
    against other questions' gold answers (see :func:`shuffled_baseline`; None for fewer than
    two questions). ``settings``: how the samples were drawn.
    """

    accuracy: float
    no_answer_rate: float
    shuffled_accuracy: float | None
    n: int
    num_questions: int
    questions: list[QuestionResult] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self, details: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; fractions as numbers (int when whole), details per question."""
        out = {"accuracy": self.accuracy, "no_answer_rate": self.no_answer_rate,
               "shuffled_accuracy": self.shuffled_accuracy, "n": self.n,
               "num_questions": self.num_questions, "settings": dict(self.settings)}
        if details:
            out["questions"] = [
                {"question": q.question, "answer": _json_number(q.answer),
                 "responses": q.responses, "extracted": [_json_number(x) for x in q.extracted],
                 "correct": q.correct}
                for q in self.questions
            ]
        return out


    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MathResult:
        """The scores of :meth:`to_json` read back (the per-question details are not: their
        answers were written as floats, not fractions; ``questions`` is empty)."""
        return cls(accuracy=data["accuracy"], no_answer_rate=data["no_answer_rate"],
                   shuffled_accuracy=data["shuffled_accuracy"], n=data["n"],
                   num_questions=data["num_questions"], questions=[],
                   settings=dict(data.get("settings", {})))


def _json_number(x: Fraction | None) -> int | float | None:
    if x is None:
        return None
    return int(x) if x.denominator == 1 else float(x)


def shuffled_baseline(questions: list[QuestionResult]) -> float | None:
    """Accuracy when each question's samples are scored against another question's gold answer.

    Exactly the mean over all derangements (every question matched with a different one):
    question i's sample agrees with the gold answer of a uniformly chosen other question j
    with probability (#{j != i : gold_j = x}) / (Q - 1), so no seed is needed. It is the
    accuracy a model reaches by answering with numbers of the right distribution but
    unrelated to the question (the issue's shuffled-answer baseline). None when Q < 2.
    """
    q = len(questions)
    if q < 2:
        return None
    golds = Counter(r.answer for r in questions)
    total = 0.0
    for r in questions:
        hits = sum(golds[x] - (x == r.answer) for x in r.extracted if x is not None)
        total += hits / (len(r.extracted) * (q - 1))
    return total / q


_DEFAULT = MathConfig()
"""The math settings' defaults, defined once (:class:`~pathunlearn.config.MathConfig`): what a
run's ``unlearning.math``, ``pathunlearn eval math`` and :func:`evaluate_math` use when told
nothing."""

GENERATE_BATCH = 16
"""Sequences generated at once (a cell's and ``eval math``'s default; samples do not depend
on it, see :mod:`pathunlearn.eval.generate`)."""


def evaluate_math(model, tokenizer, conversations: list[Conversation], *,
                  n: int = _DEFAULT.samples, temperature: float = _DEFAULT.temperature,
                  top_p: float = _DEFAULT.top_p, max_new_tokens: int = _DEFAULT.max_new_tokens,
                  greedy: bool = _DEFAULT.greedy, seed: int = 0,
                  prompt_style: PromptStyle | str = "paper", max_questions: int | None = None,
                  batch_size: int = GENERATE_BATCH,
                  progress: Callable[[int, int], None] | None = None) -> MathResult:
    """Sample ``n`` responses per question and score them (greedy decoding: one per question).

    The defaults are :class:`~pathunlearn.config.MathConfig`'s; ``prompt_style`` is a resolved
    one (:func:`prompt_style`: ``auto`` means ``paper`` for questions not from a built-in
    source). The gold answer is ``conv.meta["answer"]`` or the ``####`` answer of the
    reference response; a conversation with neither is a :class:`DataError` (see
    :func:`gold_answers`). ``progress``: as :func:`pathunlearn.eval.generate.generate`'s.
    """
    from pathunlearn.eval.generate import generate

    conversations = conversations[:max_questions] if max_questions else conversations
    golds = gold_answers(conversations)
    n = 1 if greedy else n
    prompts = [question_messages(c, prompt_style) for c in conversations]
    samples = generate(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, greedy=greedy, seed=seed,
                       batch_size=batch_size, progress=progress)
    questions = [QuestionResult(_question(c), g, s, [extract_answer(t) for t in s])
                 for c, g, s in zip(conversations, golds, samples, strict=True)]
    settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "greedy": greedy, "seed": seed, "prompt_style": prompt_style}
    return MathResult(
        accuracy=sum(q.accuracy for q in questions) / len(questions),
        no_answer_rate=sum(q.no_answer for q in questions) / len(questions),
        shuffled_accuracy=shuffled_baseline(questions),
        n=n, num_questions=len(questions), questions=questions, settings=settings,
    )


def prompt_style(config: MathConfig) -> str:
    """``config.prompt`` resolved: ``auto`` is ``plain`` for a built-in source (what the
    built-in arithmetic stage trains on) and ``paper`` otherwise."""
    if config.prompt == "auto":
        return "plain" if config.source.startswith("builtin:") else "paper"
    return config.prompt


def math_questions(config: MathConfig) -> list[Conversation]:
    """The first ``config.questions`` questions of ``config.source`` (all of them for 0)."""
    from pathunlearn.data.sources import load_source

    return load_source(config.source, max_examples=config.questions or None)


def measure_math(config: MathConfig, model, tokenizer, seed: int, *,
                 questions: list[Conversation] | None = None,
                 batch_size: int = GENERATE_BATCH,
                 progress: Callable[[int, int], None] | None = None) -> MathResult | None:
    """Math accuracy on the first ``config.questions`` questions of ``config.source`` as
    ``unlearning.math`` asks for it: what a cell measures before and after unlearning, and
    what ``pathunlearn eval math`` measures (which passes the ``questions`` it checked before
    loading the model); None when it is off (``questions`` 0 and none given)."""
    if questions is None:
        if config.questions == 0:
            return None
        questions = math_questions(config)
    return evaluate_math(model, tokenizer, questions, n=config.samples,
                         temperature=config.temperature, top_p=config.top_p,
                         greedy=config.greedy, max_new_tokens=config.max_new_tokens, seed=seed,
                         prompt_style=prompt_style(config), batch_size=batch_size,
                         progress=progress)


def cached_math(config: MathConfig, model, tokenizer, seed: int, cache_file: Path,
                progress: Callable[[int, int], None] | None = None) -> MathResult | None:
    """:func:`measure_math`, kept in ``cache_file`` (a JSON file with every answer, for people
    to read; rank 0 alone writes it): read back when it exists, else measured and written.
    The caller names the file by what the result depends on (a path model's math accuracy
    before unlearning: the model, the settings, the questions' content and the seed)."""
    from pathunlearn import distributed
    from pathunlearn.files import write_json

    if config.questions == 0:
        return None
    if cache_file.is_file():
        return MathResult.from_json(json.loads(cache_file.read_text()))
    result = measure_math(config, model, tokenizer, seed, progress=progress)
    if result is not None and distributed.is_main():
        write_json(cache_file, result.to_json())
    return result


def math_fields(before: MathResult | None, after: MathResult | None) -> dict[str, float | None]:
    """A cell's summary.json fields of the math accuracy before and after unlearning."""
    if before is None:
        return {}
    fields = {M.MATH_BEFORE: before.accuracy, M.MATH_NO_ANSWER_BEFORE: before.no_answer_rate,
              M.MATH_SHUFFLED: before.shuffled_accuracy}
    if after is not None:
        fields |= {M.MATH_AFTER: after.accuracy, M.MATH_NO_ANSWER_AFTER: after.no_answer_rate}
    return fields


# ---------------------------------------------------------------------------------------------
# `pathunlearn eval math`

FLAGS: dict[str, str] = {"data": "source", "max_questions": "questions", "n": "samples",
                         "temperature": "temperature", "top_p": "top_p", "greedy": "greedy",
                         "max_new_tokens": "max_new_tokens", "prompt": "prompt"}
"""``pathunlearn eval math``'s options -> the :class:`~pathunlearn.config.MathConfig` field
each one sets."""


@dataclass(frozen=True)
class MathRequest:
    """What ``pathunlearn eval math`` measures: a cell's measurement, with its settings."""

    settings: MathConfig
    seed: int
    device: str
    model: ModelConfig | None
    """How to load the model: the run's ``model`` settings (dtype, attention), as a cell
    loads its path model; None without a run (the checkpoint's own float32)."""


def math_request(run_config: Path | None, flags: dict[str, Any], seed: int | None,
                 device: str | None) -> MathRequest:
    """The settings of ``pathunlearn eval math``: ``unlearning.math`` of the run whose
    config.yaml is ``run_config`` (else :class:`MathConfig`'s defaults), each option given in
    ``flags`` (``FLAGS``' names; None: not given) overriding its field; the seed defaults to
    the run's first experiment seed (else 0), the device to the run's ``runtime.device``
    (else auto). A value the config would refuse is one line naming the option."""
    from pydantic import ValidationError

    from pathunlearn.config import error_items, run_config_file
    from pathunlearn.errors import UserError

    cfg = run_config_file(run_config)
    base = cfg.unlearning.math if cfg is not None else _DEFAULT
    given = {FLAGS[k]: v for k, v in flags.items() if v is not None}
    try:
        settings = MathConfig.model_validate(base.model_dump() | given)
    except ValidationError as e:
        raise UserError("\n".join(_option_problem(loc, msg, given)
                                   for loc, msg, _ in error_items(e, MathConfig))) from None
    seed = seed if seed is not None else (cfg.seeds[0] if cfg is not None else 0)
    device = device or (cfg.runtime.device if cfg is not None else "auto")
    return MathRequest(settings, seed, device, cfg.model if cfg is not None else None)


def math_report(result: MathResult, want: MathRequest, seconds: float,
                kept: MathResult | None = None) -> str:
    """What ``pathunlearn eval math`` prints: the data and settings, the scores and, for a
    run's path model, whether its cells measured the same before unlearning."""
    s, b = want.settings, result.shuffled_accuracy
    lines = [f"data: {s.source} ({result.num_questions} questions, {result.n} samples each, "
             f"prompt {prompt_style(s)}, seed {want.seed})",
             f"accuracy: {result.accuracy:.3f}  no answer: {result.no_answer_rate:.3f}  "
             f"shuffled baseline: {'n/a' if b is None else f'{b:.3f}'}  ({seconds:.1f}s)"]
    if kept is not None:
        same = kept.to_json(details=False) == result.to_json(details=False)
        lines.append(f"the run's cells measured {kept.accuracy:.3f} before unlearning: "
                     + ("the same" if same else "NOT the same (other settings or model?)"))
    return "\n".join(lines)


def _option_problem(loc: str, msg: str, given: dict[str, Any]) -> str:
    """A MathConfig problem as ``--OPTION VALUE: problem``; a problem of the whole section
    (a validator's) is the option whose field it names in backquotes."""
    field = loc if loc in given else next((f for f in given if f"`{f}`" in msg), None)
    if field is None:
        return f"unlearning.math.{loc}: {msg}"
    flag = next(k for k, v in FLAGS.items() if v == field).replace("_", "-")
    return f"--{flag} {given[field]!r}: {msg}"
