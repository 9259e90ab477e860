"""Benchmark (not a test): the cost of scoring a config's probe sets once, with the rows scored
as token tries (every distinct prefix forwarded once) and one row per sequence.

Prints the rows, the tokens forwarded each way (and for the label probes alone), the wall time
of each (best of --repeat, the batches worked out once as a cell does), and the largest difference of a row's per-token average
log-probability between the two.

    python bench/probe_scoring.py [CONFIG] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from pathunlearn.config import load_config
from pathunlearn.eval.logprob import pad_token_id, prepare_scoring, score_prepared, tree_rows
from pathunlearn.eval.probes import encode_probes, resolve_probes
from pathunlearn.models import load_model


def forwarded(encoded) -> int:
    """Tokens forwarded when ``encoded`` is scored as tries."""
    return sum(t.length for t in tree_rows(encoded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    probes = [p for p in resolve_probes(cfg) if p.scored]
    model, tok = load_model(cfg.model)
    encoded = encode_probes(tok, probes, cfg.model.max_length)
    label = [p for p in probes if p.kind == "forget_label"]
    label_encoded = encode_probes(tok, label, cfg.model.max_length)
    plain = sum(len(e.input_ids) for e in encoded)
    print(f"{len(probes)} probe sets, {len(encoded)} rows; tokens forwarded: {plain} one row "
          f"per sequence, {forwarded(encoded)} as tries "
          f"(x{plain / forwarded(encoded):.2f})")
    if label_encoded:
        lp = sum(len(e.input_ids) for e in label_encoded)
        print(f"label probes alone: {len(label_encoded)} rows, {lp} -> "
              f"{forwarded(label_encoded)} tokens "
              f"(x{lp / forwarded(label_encoded):.2f})")
    pad = pad_token_id(tok)
    timings = {}
    for share in (False, True):
        start = time.perf_counter()
        prepared = prepare_scoring(model, encoded, pad, share_prompts=share)
        setup = time.perf_counter() - start
        best = float("inf")
        for _ in range(args.repeat):  # what every eval point of a cell pays
            start = time.perf_counter()
            result = score_prepared(model, prepared)
            best = min(best, time.perf_counter() - start)
        timings[share] = (best, setup, result)
    (t_rows, s_rows, rows), (t_packed, s_packed, packed) = timings[False], timings[True]
    print(f"wall time per evaluation: {t_rows:.3f} s one row per sequence, {t_packed:.3f} s as "
          f"tries (x{t_rows / t_packed:.2f}); threads {torch.get_num_threads()}")
    print(f"once per cell (batches, tries, masks worked out): {s_rows:.3f} s one row per "
          f"sequence, {s_packed:.3f} s as tries")
    print(f"max |difference| of a row's per-token log-probability: "
          f"{float((rows.mean - packed.mean).abs().max()):.2e}")


if __name__ == "__main__":
    main()
