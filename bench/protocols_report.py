"""The online report's rows for the protocol endpoints: a table beside /predict's runs on the
same API process, and the target on their req/s (issue 18)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from bench.protocols import ENDPOINTS, V2_BINARY_HEADER

if TYPE_CHECKING:
    from bench.loadgen import LoadResult
    from bench.scenarios import Config, Results

PROTOCOL_FACTOR = 0.9  # each endpoint's req/s over /predict's, at concurrency 16
KEYS = tuple(endpoint.key for endpoint in ENDPOINTS)


def _at(results: Results, label: str, key: str, concurrency: int) -> LoadResult | None:
    return next((r for r in results.runs.get((label, key), []) if r.concurrency == concurrency),
                None)


def protocol_check(results: Results, label: str) -> tuple[str, str, str, bool | None]:
    """(what, measured, required, passed) of the target for one model: the median of the
    interleaved rounds' ratios where they ran, else the sweeps' ratio."""
    what = f"{label}: each protocol endpoint's req/s ÷ /predict's, same API, c=16"
    required = f"each ≥ {PROTOCOL_FACTOR:g}×"
    rounds = results.protocol_rounds.get(label)
    if rounds and all(rounds.get(e.key) for e in ENDPOINTS):
        medians = {e.key: statistics.median(rounds[e.key]) for e in ENDPOINTS}
        measured = "; ".join(
            f"{key} {m:.2f}× ({min(rounds[key]):.2f}-{max(rounds[key]):.2f})"
            for key, m in medians.items())
        return (what + f", median of {len(rounds[ENDPOINTS[0].key])} interleaved rounds",
                measured, required, all(m >= PROTOCOL_FACTOR for m in medians.values()))
    predict = _at(results, label, "tabserve", 16)
    runs = [(e, r) for e in ENDPOINTS if (r := _at(results, label, e.key, 16))]
    if not predict or not runs:
        return what, "not measured", required, None
    ratios = [(e, r.rps / predict.rps) for e, r in runs]
    measured = "; ".join(f"{e.key} {ratio:.2f}×" for e, ratio in ratios)
    missing = len(runs) < len(ENDPOINTS)
    if missing:
        measured += f" ({len(ENDPOINTS) - len(runs)} not measured)"
    passed = all(ratio >= PROTOCOL_FACTOR for _, ratio in ratios)
    return what, measured, required, (None if missing and passed else passed)


def protocol_tables(results: Results, config: Config) -> list[str]:
    """Per model, /predict and each protocol endpoint at each concurrency."""
    lines: list[str] = []
    for label, _ in results.models:
        if not any((label, key) in results.runs for key in KEYS):
            continue
        lines += ["", f"### {label}: protocol endpoints vs /predict, same API", "",
                  "| concurrency | endpoint | req/s | ÷ /predict | p50 ms | p99 ms | errors "
                  "| other CPU % |", "|---|---|---|---|---|---|---|---|"]
        for c in config.concurrency:
            predict = _at(results, label, "tabserve", c)
            for key, title in (("tabserve", "`/predict`"),
                               *((e.key, e.title) for e in ENDPOINTS)):
                r = _at(results, label, key, c)
                if r is None:
                    lines.append(f"| {c} | {title} | not measured | | | | | |")
                    continue
                ratio = f"{r.rps / predict.rps:.2f}×" if predict and predict.rps else ""
                kinds = ", ".join(f"{k} {v}" for k, v in r.error_kinds.items())
                lines.append(f"| {c} | {title} | {r.rps:,.0f} | {ratio} | {r.p50_ms:.2f} | "
                             f"{r.p99_ms:.2f} | {r.errors}{f' ({kinds})' if kinds else ''} | "
                             f"{r.other_cpu or 0:.0f} |")
    if lines:
        lines += ["", METHOD]
    return lines


METHOD = (
    "The protocol endpoints run on the API process that served `/predict`, right after its "
    "runs, with the same rows one per request and the same client: `/invocations?model=N:V` "
    "with MLflow's bodies (`dataframe_split` and `inputs`, the files sent to MLflow; the "
    "answer is labels, MLflow's default); `/v2/models/N/versions/V/infer` with "
    '`{"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": [...]}]}` '
    "(both outputs, `predict` and `predict_proba`, in JSON); and the same tensor as binary "
    f"data: a {len(V2_BINARY_HEADER)}-byte JSON header (`binary_data_size` 240, "
    "`binary_data_output` true) then the row's 240 little-endian bytes, with "
    "`Content-Type: application/octet-stream` and `Inference-Header-Content-Length`, both "
    "outputs answered as binary data. Before the load, every 57th row's answer is checked "
    "against the fitted model (class and probabilities; /invocations' probabilities asked "
    "with `params.predict_method`). The table's runs are minutes apart, so the machine's "
    "drift falls on its ratios; the target uses rounds run after them, each /predict and "
    "every endpoint back to back at concurrency 16 (the order rotating from round to round, "
    "so that no endpoint always runs last), and the median of each endpoint's ratio to the "
    "/predict run of its round.")
