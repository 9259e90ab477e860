"""The field's unlearning methods (OpenUnlearning's WGA, SatImp, CE-U, UNDIAL) as built-in
methods: their losses against values computed by hand, their options, and every built-in
method through a reduced `pathunlearn run`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from pathunlearn.config import MethodConfig
from pathunlearn.data.chat import IGNORE_INDEX
from pathunlearn.errors import ConfigError
from pathunlearn.losses import ceu_loss, dpo_loss, satimp_loss, undial_loss, wga_loss
from pathunlearn.methods import (
    BUILTIN_METHODS,
    IDK_ANSWERS,
    ForgetBatch,
    RetainBatch,
    make_method,
)

LN2, LN3, LN5 = math.log(2.0), math.log(3.0), math.log(5.0)

# two sequences, probabilities 0.5, 0.25 | 0.8 (a masked position holds 0)
TOKEN_LOGP = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.8, 1.0, 1.0]]))
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_wga_weighs_each_token_by_its_probability_to_the_beta():
    by_hand = (0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.8 * math.log(0.8)) / 3
    assert wga_loss(TOKEN_LOGP, MASK, 1.0).item() == pytest.approx(by_hand, rel=1e-6)
    squared = (0.25 * math.log(0.5) + 0.0625 * math.log(0.25) + 0.64 * math.log(0.8)) / 10
    assert wga_loss(TOKEN_LOGP, MASK, 2.0, num_tokens=10).item() == pytest.approx(squared,
                                                                                  rel=1e-6)
    # the weight is not differentiated: d loss / d logp_t = p_t^beta / N
    logp = TOKEN_LOGP.clone().requires_grad_(True)
    wga_loss(logp, MASK, 1.0, num_tokens=3).backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.5 / 3, 0.25 / 3, 0, 0.8 / 3, 0, 0])


def test_satimp_weighs_by_saturation_and_importance():
    def w(p, b1, b2):
        return p ** b1 * (1 - p) ** b2

    by_hand = sum(w(p, 5, 1) * math.log(p) for p in (0.5, 0.25, 0.8)) / 3
    assert satimp_loss(TOKEN_LOGP, MASK, 5.0, 1.0).item() == pytest.approx(by_hand, rel=1e-6)
    by_hand = sum(w(p, 2, 3) * math.log(p) for p in (0.5, 0.25, 0.8)) / 4
    assert satimp_loss(TOKEN_LOGP, MASK, 2.0, 3.0, 4).item() == pytest.approx(by_hand, rel=1e-6)


def ceu_inputs():
    """One sequence over a vocabulary of 3: position 0 (uniform) predicts token 2, position 1
    (logits 0, ln 3, 0: probabilities 1/5, 3/5, 1/5) predicts token 1; position 2 has none."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN3, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 1]])
    return logits, labels


def test_ceu_is_cross_entropy_to_the_distribution_without_the_true_token():
    logits, labels = ceu_inputs()
    # q without token 2 at position 0: (1/2, 1/2, 0), CE = ln 3; without token 1 at
    # position 1: (1/2, 0, 1/2), CE = -(1/2 ln 1/5) * 2 = ln 5
    assert ceu_loss(logits, labels, skip_first=0).item() == pytest.approx((LN3 + LN5) / 2)
    assert ceu_loss(logits, labels, skip_first=1).item() == pytest.approx(LN5)
    assert ceu_loss(logits, labels, num_tokens=2, skip_first=1).item() == pytest.approx(LN5 / 2)
    assert ceu_loss(logits, labels, skip_first=2).item() == 0.0
    # q is a fixed target: the gradient at a kept position is (p - q) / N
    z = logits.clone().requires_grad_(True)
    ceu_loss(z, labels, num_tokens=2, skip_first=1).backward()
    assert z.grad[0, 1].tolist() == pytest.approx([(0.2 - 0.5) / 2, 0.6 / 2, (0.2 - 0.5) / 2])
    assert z.grad[0, 0].abs().sum().item() == 0.0 and z.grad[0, 2].abs().sum().item() == 0.0


def test_undial_distils_from_the_reference_with_the_true_logit_lowered():
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    ref = torch.zeros(1, 3, 3)
    model = torch.tensor([[[LN2, 0.0, 0.0], [5.0, 1.0, 0.0], [1.0, 2.0, 3.0]]])
    # teacher (0, 0, -ln 2) -> q = (0.4, 0.4, 0.2); model p = (0.5, 0.25, 0.25):
    # CE = -(0.4 ln 0.5 + 0.4 ln 0.25 + 0.2 ln 0.25) = 1.6 ln 2
    assert undial_loss(model, ref, labels, beta=LN2).item() == pytest.approx(1.6 * LN2)
    assert undial_loss(model, ref, labels, LN2, num_tokens=4).item() == pytest.approx(0.4 * LN2)
    # beta 0 with the model as its own teacher: the entropy of p
    entropy = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert undial_loss(model, model, labels, 0.0).item() == pytest.approx(entropy)


def test_dpo_prefers_the_alternate_to_the_forget_answer():
    win, win_ref = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -1.0])
    lose, lose_ref = torch.tensor([-4.0, -2.0]), torch.tensor([-3.0, -2.0])
    # margins: (1 - (-1)) = 2 and (0 - 0) = 0; beta 0.5: -(2/0.5) (log s(1) + log s(0)) / 2
    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    by_hand = -4 * (log_sigmoid(1.0) + log_sigmoid(0.0)) / 2
    assert dpo_loss(win, win_ref, lose, lose_ref, 0.5).item() == pytest.approx(by_hand)
    assert dpo_loss(win, win_ref, lose, lose_ref, 0.5, 4).item() == pytest.approx(by_hand / 2)
    at_ref = dpo_loss(lose_ref, lose_ref, win_ref, win_ref, 1.0).item()
    assert at_ref == pytest.approx(2 * math.log(2))


def test_dpo_reads_the_batch_and_its_alternates(tmp_path):
    token_logp = torch.tensor([[-1.0, -3.0]])
    batch = ForgetBatch(token_logp, torch.tensor([[True, True]]), 2, 1,
                        ref_logp=torch.tensor([-3.0]), alt_logp=torch.tensor([-1.0]),
                        alt_ref_logp=torch.tensor([-2.0]))
    method = make_method(MethodConfig(name="dpo"))
    assert method.beta == 1.0 and method.alternates == list(IDK_ANSWERS)
    expected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-4.0]),
                        torch.tensor([-3.0]), 1.0, 1)
    assert method.forget_loss(batch).item() == pytest.approx(expected.item())
    own = tmp_path / "alts.txt"
    own.write_text("No idea.\n\n  Not something I know.  \n")
    method = make_method(MethodConfig(name="dpo", options={"alternates": str(own)}))
    assert method.alternates == ["No idea.", "Not something I know."]
    # the file's content is part of the cells' key: editing it recomputes them
    before = method.data_identity()
    own.write_text("No idea at all.\n")
    after = make_method(MethodConfig(name="dpo", options={"alternates": str(own)}))
    assert before and after.data_identity() != before
    assert make_method(MethodConfig(name="dpo")).data_identity() == {}
    # non-answers, never refusals
    assert not any(w in a.lower() for a in IDK_ANSWERS for w in ("cannot help", "won't",
                                                                 "refuse", "sorry"))


@pytest.mark.parametrize("content,words", [
    (None, "method 'dpo': option alternates: no such file"),
    ("\n  \n", "holds no answer \\(one per line\\)"),
    (b"No idea.\n\xff\xfe\n", "method 'dpo': option alternates: not UTF-8 text \\(byte 9\\)"),
])
def test_a_bad_alternates_file_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "alts.txt"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=words):
        make_method(MethodConfig(name="dpo", options={"alternates": str(path)}))
    with pytest.raises(ConfigError, match="option 'alternates' must be a string, got 3"):
        make_method(MethodConfig(name="dpo", options={"alternates": 3}))


def forget(name: str, **kw) -> torch.Tensor:
    logits, labels = ceu_inputs()
    token_logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None]).squeeze(-1)
    batch = ForgetBatch(token_logp, labels[:, 1:] != IGNORE_INDEX, 2, 1, None, logits, labels,
                        torch.zeros_like(logits))
    return make_method(MethodConfig(name=name, **kw)).forget_loss(batch)


def test_the_methods_call_their_losses_with_their_defaults():
    logits, labels = ceu_inputs()
    token_logp = torch.log(torch.tensor([[1 / 3, 0.6]]))
    mask = torch.tensor([[True, True]])
    assert forget("weighted_ga").item() == pytest.approx(wga_loss(token_logp, mask, 1.0, 2).item())
    assert forget("weighted_ga", beta=2.0).item() == pytest.approx(
        wga_loss(token_logp, mask, 2.0, 2).item())
    assert forget("satimp").item() == pytest.approx(
        satimp_loss(token_logp, mask, 5.0, 1.0, 2).item())
    assert forget("satimp", options={"beta1": 1, "beta2": 2}).item() == pytest.approx(
        satimp_loss(token_logp, mask, 1.0, 2.0, 2).item())
    assert forget("ceu").item() == pytest.approx(LN5 / 2)
    assert forget("ceu", options={"ignore_first_n": 0}).item() == pytest.approx((LN3 + LN5) / 2)
    assert forget("undial").item() == pytest.approx(
        undial_loss(logits, torch.zeros_like(logits), labels, 10.0, 2).item())
    assert make_method(MethodConfig(name="undial")).beta == 10.0
    assert make_method(MethodConfig(name="satimp")).options == {"beta1": 5.0, "beta2": 1.0}


def test_retain_variants_add_the_weighted_retain_nll():
    logits, labels = ceu_inputs()
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    nll = -(math.log(1 / 3) + math.log(0.6)) / 2
    for name in ("weighted_ga_retain", "satimp_retain", "undial_retain"):
        method = make_method(MethodConfig(name=name, retain_weight=2.0))
        assert not method.local
        got = method.retain_loss(RetainBatch(logits, labels, n))
        assert got.item() == pytest.approx(2.0 * nll, rel=1e-6), name


def test_what_each_method_asks_of_a_cell():
    wants = {n: (m.needs_logits, m.needs_reference_logits) for n, m in BUILTIN_METHODS.items()}
    assert {n for n, (logits, _) in wants.items() if logits} == {"ceu", "undial",
                                                                 "undial_retain", "pdu"}
    assert {n for n, (_, teacher) in wants.items() if teacher} == {"undial", "undial_retain"}
    for name in ("ga", "npo", "simnpo", "graddiff", "npo_retain", "npo_kl"):
        assert BUILTIN_METHODS[name].option_defaults is None  # as before: unchecked


@pytest.mark.parametrize("options,words", [
    ({"beta3": 1.0}, "method 'satimp': unknown option 'beta3' \\(its options: beta1, beta2\\)"),
    ({"beta1": "high"}, "method 'satimp': option 'beta1' must be a number, got 'high'"),
])
def test_a_built_in_methods_bad_option_is_a_config_error(options, words):
    with pytest.raises(ConfigError, match=words):
        make_method(MethodConfig(name="satimp", options=options))


def test_methods_command_lists_every_built_in_method(cli):
    from pathunlearn.cli import console

    result = cli("methods")
    assert result.code == 0, result.err
    lines: dict[str, str] = {}  # method -> its block (a header line, then indented lines)
    for line in result.out.splitlines():
        assert len(line) <= console.width  # fits the terminal
        if line and not line.startswith(" "):
            name = line.split()[0]
            lines[name] = ""
        lines[name] += " " + line.strip()
    for name, cls in BUILTIN_METHODS.items():
        assert name in lines, name
        assert ("local" if cls.local else "weakly local") in lines[name]
    assert "reference model logits" in lines["undial"] and "logits" in lines["ceu"]
    assert "reference log-probs" in lines["npo"] and "beta1=5" in lines["satimp"]
    assert "beta=10" in lines["undial"] and "ignore_first_n=1" in lines["ceu"]
    js = json.loads(cli("methods", "--json").out)
    assert [m["name"] for m in js] == list(BUILTIN_METHODS)
    assert "alternate answers" in lines["dpo"] and "alternates=" in lines["dpo"]
    assert "a layer's activations" in lines["rmu"] and "steering_coeff=300" in lines["rmu"]
    assert "dual_update=step" in lines["pdu"] and "weakly local" in lines["pdu"]


# ---------------------------------------------------------------------------- through a run


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One run directory whose path models every method's run reuses (trained once)."""
    return tmp_path_factory.mktemp("methods")


RUN_OPTIONS = {"rmu": {"layer": 2}, "rmu_retain": {"layer": 2},
               "altpo": {"samples": 3, "max_new_tokens": 24},
               "altpo_retain": {"samples": 3, "max_new_tokens": 24}}
"""Options a method needs on the tiny preset (4 layers; RMU's default layer is 7), and
AltPO's sampling cut down to keep the suite short."""


def run_config(out, *names: str) -> dict:
    return {
        "name": "methods", "output_dir": str(out), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1,
                                    "max_examples": 8},
                   "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 8}},
        "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1]},
        "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": n, "options": RUN_OPTIONS.get(n, {})}
                                   for n in names],
                       "lr": 1e-4, "batch_size": 8,
                       "micro_batch_size": 8, "steps": 2, "eval_every": 2},
        "probes": {"prompts": 2, "examples": 4},
    }


ALL_RUN: dict = {}
"""The one run of every built-in method per shared run directory (:func:`every_method_ran`),
made by the first test that asks for it."""


def every_method_ran(shared_run, cli):
    """``pathunlearn run`` of one config naming every built-in method (one run, its path
    models trained once, one report), its CLI result kept for each method's test."""
    if shared_run not in ALL_RUN:  # (keyed by the run directory the result belongs to)
        path = shared_run / "every-method.yaml"
        path.write_text(yaml.safe_dump(run_config(shared_run / "runs", *BUILTIN_METHODS)))
        ALL_RUN[shared_run] = cli("run", path, "--no-figures")  # the table is what this checks
    return ALL_RUN[shared_run]


@pytest.mark.parametrize("name", list(BUILTIN_METHODS))
def test_every_built_in_method_runs_through_pathunlearn_run(name, shared_run, cli):
    result = every_method_ran(shared_run, cli)
    assert result.code == 0, result.err
    rows = json.loads((shared_run / "runs" / "methods" / "results.json").read_text())["rows"]
    mine = [r for r in rows if r["method"] == name]
    assert mine and all(math.isfinite(r["forget_score"]) for r in mine), rows
    if name.startswith(("dpo", "npo", "altpo")):  # the model is its reference at step 1
        cell = next((shared_run / "runs" / "methods").glob(f"cells/*/{name}/*/steps.jsonl"))
        first = json.loads(cell.read_text().splitlines()[0])["loss"]
        # 2 / beta: beta 1 (DPO), 0.5 (NPO), 0.1 (AltPO)
        scale = {"dpo": 2.0, "npo": 4.0, "alt": 20.0}[name[:3]]
        if name.endswith("retain"):
            assert first > scale * math.log(2)  # plus the retain NLL
        else:
            assert first == pytest.approx(scale * math.log(2), abs=1e-4)


def test_undials_teacher_under_lora_is_the_path_model(tmp_path):
    """Under LoRA the teacher is the model with its adapter switched off (a second pass,
    no copy): at step 1 (adapter still zero) the cell's loss is UNDIAL's definition with the
    path model as student and teacher, computed here from the saved path model."""
    from pathunlearn.config import validate_config
    from pathunlearn.data.batching import collate
    from pathunlearn.models import load_checkpoint
    from pathunlearn.plan import plan_run
    from pathunlearn.rundir import prefix_dir, unit_dir
    from pathunlearn.train.paths import train_paths
    from pathunlearn.train.unlearn import encode_stage, unlearn_all

    data = run_config(tmp_path, "undial")
    data["model"] = {"finetuning": "lora", "lora": {"rank": 4, "alpha": 8}}
    data["stages"] = {"refusals": data["stages"]["refusals"]}
    data["paths"] = {"forget_stage": "refusals", "orders": [["refusals"]]}
    data["unlearning"]["steps"] = 1
    cfg = validate_config(data)
    plan = train_paths(cfg, log=lambda *_: None)
    unlearn_all(cfg, plan, log=lambda *_: None)
    cell = plan_run(cfg).cells[0]
    model, tok = load_checkpoint(prefix_dir(cfg.run_dir, cell.model_key), cfg.model, "cpu")
    forget = encode_stage(cfg, tok, "refusals")
    batch = collate(forget, tok.pad_token_id)
    with torch.no_grad():
        logits = model(**batch.inputs()).logits
    n = sum(e.num_targets for e in forget)
    expected = undial_loss(logits, logits, batch.labels, 10.0, n).item()
    step = json.loads((unit_dir(cfg.run_dir, cell) / "steps.jsonl").read_text().splitlines()[0])
    assert step["loss"] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------- AltPO


def test_dpo_with_k_alternates_is_the_mean_of_each_prompts_pairs():
    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    # prompt 0: forget margin l - l_ref = -1; alternates' w - w_ref = 1 and -1: margins 2, 0
    # prompt 1: forget margin 0; one alternate 3 over its reference, the other equal: 3, 0
    win = torch.tensor([[-2.0, -4.0], [-1.0, -5.0]])
    win_ref = torch.tensor([[-3.0, -3.0], [-4.0, -5.0]])
    lose, lose_ref = torch.tensor([-4.0, -2.0]), torch.tensor([-3.0, -2.0])
    beta = 0.5
    per_prompt = [(log_sigmoid(beta * 2) + log_sigmoid(0.0)) / 2,
                  (log_sigmoid(beta * 3) + log_sigmoid(0.0)) / 2]
    by_hand = -(2 / beta) * sum(per_prompt) / 2
    assert dpo_loss(win, win_ref, lose, lose_ref, beta).item() == pytest.approx(by_hand)
    assert dpo_loss(win, win_ref, lose, lose_ref, beta, 4).item() == pytest.approx(by_hand / 2)
    # one alternate per prompt as a (B, 1) column is DPO's (B,) term
    one = dpo_loss(win[:, :1], win_ref[:, :1], lose, lose_ref, beta).item()
    assert one == pytest.approx(dpo_loss(win[:, 0], win_ref[:, 0], lose, lose_ref, beta).item())
    with pytest.raises(ValueError, match="3 rows of alternates for 2 prompts"):
        dpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), lose, lose_ref)


def conversations():
    from pathunlearn.data.conversation import Conversation

    return [
        Conversation([{"role": "user", "content": "Where was Ada born?"},
                      {"role": "assistant", "content": "In Paris."}]),
        Conversation([{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Who wrote it?"},
                      {"role": "assistant", "content": "Mo Lee."}]),
        Conversation([{"role": "user", "content": "No answer here."}]),
    ]


def test_altpo_asks_the_path_model_for_alternates_to_each_forget_answer():
    import random

    from pathunlearn.methods import ALTPO_INSTRUCTION

    calls = []

    def sample(prompts, n, temperature, max_new_tokens):
        calls.append((prompts, n, temperature, max_new_tokens))
        return [[f"  alt {i}.{j}\nQuestion: next?" for j in range(n)]
                for i in range(len(prompts))]

    method = make_method(MethodConfig(name="altpo", options={"samples": 3,
                                                               "max_new_tokens": 40}))
    assert method.beta == 0.1 and method.local and method.needs_reference
    rows = method.alternate_answers(conversations(), random.Random(0), sample)
    # the answerless conversation is not asked about; every row has K = 3 alternates, cut
    # at the model's next "Question:" and stripped
    assert rows == [["alt 0.0", "alt 0.1", "alt 0.2"], ["alt 1.0", "alt 1.1", "alt 1.2"],
                    ["", "", ""]]
    (prompts, n, temperature, max_new), = calls
    assert (n, temperature, max_new) == (3, 1.0, 40)
    assert prompts[0] == [{"role": "user", "content": "Question: Where was Ada born?\n"
                                                      f"Answer: In Paris.\n{ALTPO_INSTRUCTION}"}]
    assert "Question: Who wrote it?\nAnswer: Mo Lee." in prompts[1][0]["content"]
    assert make_method(MethodConfig(name="altpo_retain")).local is False


@pytest.mark.parametrize("options,words", [
    ({"samples": 0}, "option 'samples' must be a whole number >= 1, got 0"),
    ({"samples": 2.5}, "option 'samples' must be a whole number >= 1, got 2.5"),
    ({"temperature": 0}, "option 'temperature' must be > 0, got 0"),
    ({"alternates": "/nonexistent/alts.jsonl"}, "option alternates: no such file"),
])
def test_altpos_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError, match=words):
        make_method(MethodConfig(name="altpo", options=options))


def generate_py_lines(key: str = "alternate") -> str:
    """Alternates as AltPO's generate.py writes them: one JSON line per sample, a question's
    samples one after the other (OpenUnlearning's key "alternate"; the original
    repository's "sub_answer")."""
    rows = [("Where was Ada born?", "In Paris.", a) for a in ("In Rome.", "In Oslo.", "In Bern.")]
    rows += [("Who wrote it?", "Mo Lee.", a) for a in ("Jo Park.", "Al Diaz.")]
    return "".join(json.dumps({"question": q, "answer": y, key: a}) + "\n" for q, y, a in rows)


@pytest.mark.parametrize("key", ["alternate", "sub_answer"])
def test_altpo_reads_alternates_in_generate_py_layout(tmp_path, key):
    import random

    path = tmp_path / "alt5_seed_0.json"
    path.write_text(generate_py_lines(key))
    method = make_method(MethodConfig(name="altpo", options={"alternates": str(path),
                                                               "samples": 2}))

    def sample(*_):
        raise AssertionError("a file of alternates is read, not sampled")

    rows = method.alternate_answers(conversations(), random.Random(0), sample)
    assert rows == [["In Rome.", "In Oslo."], ["Jo Park.", "Al Diaz."], ["", ""]]
    assert method.data_identity()["alternates_sha"]


@pytest.mark.parametrize("content,words", [
    (generate_py_lines(), "has 2 alternate\\(s\\) of forget example 1 \\(question 'Who wrote "
                          "it\\?'\\), samples is 3"),
    ('{"question": "Where was Ada born?", "alternate": "x"}\nnot json\n',
     "line 2: invalid JSON: Expecting value"),
    ("[" * 5000 + "]" * 5000 + "\n", "line 1: nested deeper than"),
    (b'{"question": "caf\xe9", "alternate": "x"}\n', "line 1: not UTF-8 text"),
    ('{"question": "Where was Ada born?", "alternate": 3}\n',
     "line 1: needs string keys question and alternate \\(or sub_answer\\)"),
])
def test_a_bad_altpo_alternates_file_names_its_line_or_question(tmp_path, content, words):
    import random

    from pathunlearn.errors import UserError

    path = tmp_path / "alts.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    method = make_method(MethodConfig(name="altpo", options={"alternates": str(path),
                                                               "samples": 3}))
    with pytest.raises(UserError, match=words):
        method.alternate_answers(conversations(), random.Random(0), lambda *_: [])


def test_altpos_cell_keeps_its_alternates_and_reads_them_back(shared_run, cli):
    """An AltPO cell writes the alternates it sampled from the path model in generate.py's
    layout; a run whose option ``alternates`` is that file trains on the same alternates, so
    its steps are the same. A file missing a forget question is refused before any work."""
    runs = shared_run / "runs" / "methods"
    path = shared_run / "altpo.yaml"
    path.write_text(yaml.safe_dump(run_config(shared_run / "runs", "altpo")))
    assert cli("run", path, "--no-figures").code == 0
    cell = next(runs.glob("cells/*/altpo/*/"))
    rows = [json.loads(line) for line in (cell / "alternates.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 3 and {"question", "answer", "alternate"} <= set(rows[0])
    steps = (cell / "steps.jsonl").read_text().splitlines()
    own = shared_run / "own_alternates.jsonl"
    own.write_text((cell / "alternates.jsonl").read_text())
    config = run_config(shared_run / "runs", "altpo")
    config["name"] = "altpo-file"
    config["unlearning"]["methods"][0]["options"] = {"alternates": str(own), "samples": 3}
    path.write_text(yaml.safe_dump(config))
    assert cli("run", path, "--no-figures").code == 0
    again = next((shared_run / "runs" / "altpo-file").glob("cells/*/altpo/*/steps.jsonl"))
    losses = [json.loads(s)["loss"] for s in steps]
    assert [json.loads(s)["loss"] for s in again.read_text().splitlines()] == pytest.approx(
        losses, abs=1e-6)
    own.write_text("".join(line + "\n" for line in own.read_text().splitlines()[3:]))
    result = cli("run", path, "--no-figures")
    assert result.code == 2 and "has 0 alternate(s) of forget example 0" in result.err
