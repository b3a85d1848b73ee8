"""Parity: does a backend compute what the PyTorch model computes, step after step?

Both backends roll out the same tokens from their own initial state, each feeding back ITS OWN
state (a candidate is never handed the reference's state), so errors that build up in the
recurrence show up. At every step and for every output (``logits`` and each
``state_out.{layer}.{role}``) the report records

- max abs error   ``max|Δ|``
- max rel error   ``max(|Δ| / max(|ref|, REL_EPS))``
- scaled error    ``max|Δ| / std(ref)``, the std taken over that output at that step (for a
  constant reference its largest magnitude, and 1 for an all-zero one)

and whether the logits agree on the top-1 token. The scaled error and the top-1 agreement are
judged against a per-precision ``Tolerance``; the other two are reported only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import OptionError
from .backend import Backend, NamedState, check_token_ids
from .generate import Sampler, generate

# Limits on max|Δ|/std(ref) and top-1 agreement, against the fp32 PyTorch model over 64 steps.
# Measured worst cases (onnxruntime 1.32 CPU; v4-v7 random 2x128 models, v7 with a 65536 vocabulary,
# the demo model; `rwkv-edge export onnx ... && rwkv-edge verify ...`):
#   fp32: logits 3.1e-06, state 1.6e-05, top-1 always 100%
#   fp16: logits 1.8e-02 (65536 vocabulary), state 2.3e-02 (demo model, wkv), top-1 always 100%
FP32_LOGITS_SCALED_MAX = 1e-4  # max|Δ|/std(ref) of the logits
FP32_STATE_SCALED_MAX = 1e-4  # max|Δ|/std(ref) of every state tensor
FP32_TOP1_MIN = 1.0  # fraction of steps whose argmax agrees
FP16_LOGITS_SCALED_MAX = 5e-2  # fp16 rounding of weights and activations: ~3x the worst measured
FP16_STATE_SCALED_MAX = 5e-2
FP16_TOP1_MIN = 0.95  # near-ties may flip in fp16; 3 flips in 64 steps are tolerated
# Compressed weights (Core ML, fp16 compute), 64 steps of `verify`; measured worst cases
# (scripts/coreml_figures.py, demo model and v4-v6 random 2x128 models, first 100 steps):
#   int8: logits 6.6e-02, top-1 >= 99.5%        int4: logits 1.22, top-1 95% (demo)
INT8_LOGITS_SCALED_MAX = 0.15  # int8 per output channel: ~2x the worst measured
INT8_TOP1_MIN = 0.9
INT4_LOGITS_SCALED_MAX = 1.5  # int4 in blocks of 32: random 128-wide weights quantize worst
INT4_TOP1_MIN = 0.8

# Floor of the denominator of the relative error: reference values closer to zero than this (the
# exact zeros of a fresh or saturated state, say) are divided by REL_EPS instead of by themselves.
# RWKV's activations and states are of order 1, where 1e-6 is a few fp32 rounding steps: a value
# that small carries no relative precision worth reporting.
REL_EPS = 1e-6


@dataclass(frozen=True)
class Tolerance:
    """What a backend must meet at one precision."""

    logits_scaled: float  # max over steps of max|Δ|/std(ref) of the logits
    state_scaled: float | None  # the same for every state tensor; None: reported, not judged
    top1: float  # minimum fraction of steps whose top-1 token agrees
    greedy_identical: bool  # whether greedy generation must produce the very same tokens


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(FP32_LOGITS_SCALED_MAX, FP32_STATE_SCALED_MAX, FP32_TOP1_MIN, greedy_identical=True),
    "fp16": Tolerance(FP16_LOGITS_SCALED_MAX, FP16_STATE_SCALED_MAX, FP16_TOP1_MIN, greedy_identical=False),
    # Compressed weights (Core ML, fp16 compute) are a different model by design: the logits and the
    # top-1 token are judged, the state is reported only.
    "int8": Tolerance(INT8_LOGITS_SCALED_MAX, None, INT8_TOP1_MIN, greedy_identical=False),
    "int4": Tolerance(INT4_LOGITS_SCALED_MAX, None, INT4_TOP1_MIN, greedy_identical=False),
}


@dataclass
class OutputErrors:
    """The errors of one output, one entry per step."""

    max_abs: list[float] = field(default_factory=list)
    max_rel: list[float] = field(default_factory=list)
    scaled: list[float] = field(default_factory=list)  # max|Δ| / std(ref)

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r, c = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
        delta = np.abs(c - r)
        max_abs = float(delta.max())
        scale = float(r.std()) or float(np.abs(r).max()) or 1.0
        self.max_abs.append(max_abs)
        self.max_rel.append(float((delta / np.maximum(np.abs(r), REL_EPS)).max()))
        self.scaled.append(max_abs / scale)


@dataclass(frozen=True)
class GreedyResult:
    """Greedy (argmax) generation from the same prompt on both backends."""

    prompt: list[int]
    reference_tokens: list[int]
    candidate_tokens: list[int]
    identical: bool
    first_divergence: int | None  # index into the generated tokens of the first difference


@dataclass
class ParityReport:
    """The verdict on one candidate backend and the numbers behind it."""

    reference: str  # backend names
    candidate: str
    precision: str
    tolerance: Tolerance
    tokens: list[int]  # the token ids of the rollout asked for
    n_steps: int = 0  # steps compared; fewer than len(tokens) when the rollout stopped early
    errors: dict[str, OutputErrors] = field(default_factory=dict)  # "logits", "state_out.{layer}.{role}"
    top1: list[bool] = field(default_factory=list)  # per step: same argmax of the logits
    greedy: GreedyResult | None = None
    failures: list[str] = field(default_factory=list)
    what_ran: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # backend-specific facts, e.g. the Core ML op list

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def top1_agreement(self) -> float:
        return sum(self.top1) / len(self.top1) if self.top1 else 0.0

    def add_greedy(self, result: GreedyResult) -> None:
        """Attach a greedy-identity result; a divergence fails when the tolerance demands identity."""
        self.greedy = result
        n, prompt = len(result.reference_tokens), len(result.prompt)
        self.what_ran.append(f"greedy generation of {n} tokens from a {prompt}-token prompt on both backends")
        if self.tolerance.greedy_identical and not result.identical:
            self.failures.append(f"greedy generation diverges at generated token {result.first_divergence} of {n}")

    def to_json(self) -> dict:
        """A JSON-serialisable dict; non-finite errors become null."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "precision": self.precision,
            "passed": self.passed,
            "failures": list(self.failures),
            "what_ran": list(self.what_ran),
            **self.details,
            "tolerance": asdict(self.tolerance),
            "tokens": list(self.tokens),
            "n_steps": self.n_steps,
            "top1": {"agreement": self.top1_agreement, "per_step": list(self.top1)},
            "outputs": {
                name: {metric: [_finite_or_none(v) for v in values] for metric, values in asdict(e).items()}
                for name, e in self.errors.items()
            },
            "greedy": asdict(self.greedy) if self.greedy else None,
        }

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``parity.json`` and ``parity.png`` into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, png_path = directory / "parity.json", directory / "parity.png"
        with atomic_path(json_path) as tmp:
            text = json.dumps(self.to_json(), indent=1, allow_nan=False, ensure_ascii=False)
            tmp.write_text(text + "\n", encoding="utf-8")
        with atomic_path(png_path) as tmp:
            _plot(self, tmp)
        return json_path, png_path

    def summary(self) -> str:
        """A few lines: the verdict first, then the worst error per output group, top-1 and greedy."""
        t = self.tolerance
        lines = [
            f"{'PASS' if self.passed else 'FAIL'}  {self.candidate} vs {self.reference}, {self.precision}, "
            f"{self.n_steps}/{len(self.tokens)} steps (limits: max|Δ|/std {_sci(t.logits_scaled)} logits, "
            f"{_sci(t.state_scaled) if t.state_scaled is not None else 'not judged on the'} state; "
            f"top-1 >= {t.top1:.1%})"
        ]
        lines += [f"  - {failure}" for failure in self.failures]
        for group, names in _groups(self.errors).items() if self.n_steps else ():
            name, step, scaled = _worst_of(self.errors, names)
            where = "" if scaled == 0 else f" (step {step})" if name == group else f" ({name}, step {step})"
            worst_abs = float(np.max([self.errors[n].max_abs for n in names]))
            lines.append(f"  {group:<10} max|Δ|/std {_sci(scaled)}{where}, max|Δ| {_sci(worst_abs)}")
        lines.append(f"  top-1      {sum(self.top1)}/{len(self.top1)} steps agree ({self.top1_agreement:.1%})")
        lines.append(f"  greedy     {_describe_greedy(self.greedy)}")
        return "\n".join(lines)


def compare_rollouts(reference: Backend, candidate: Backend, tokens: list[int], precision: str) -> ParityReport:
    """Roll out ``tokens`` on both backends, each on its own state, and judge them at ``precision``."""
    if precision not in TOLERANCES:
        raise OptionError(f"unknown precision {precision!r}; expected one of {', '.join(TOLERANCES)}")
    if not tokens:
        raise OptionError("parity needs at least one token to roll out")
    check_token_ids(tokens, reference.vocab_size)
    report = ParityReport(reference.name, candidate.name, precision, TOLERANCES[precision], list(tokens))
    stopped = _roll_out(report, reference, candidate)
    report.what_ran.append(
        f"rollout of {report.n_steps}/{len(tokens)} steps on {reference.name} and {candidate.name}, "
        f"each feeding back its own state{stopped}"
    )
    report.what_ran.append(f"compared logits and {len(report.errors) - 1} state outputs at every step")
    report.failures += _over_limits(report)
    return report


def greedy_identity(reference: Backend, candidate: Backend, prompt: list[int], n: int = 128) -> GreedyResult:
    """Generate ``n`` tokens greedily from ``prompt`` on each backend (each on its own state) and compare."""
    greedy = Sampler(temperature=0.0)
    ref_tokens = list(generate(reference, prompt, n, greedy))
    cand_tokens = list(generate(candidate, prompt, n, greedy))
    diverge = next((i for i, (a, b) in enumerate(zip(ref_tokens, cand_tokens)) if a != b), None)
    return GreedyResult(list(prompt), ref_tokens, cand_tokens, diverge is None, diverge)


def _roll_out(report: ParityReport, reference: Backend, candidate: Backend) -> str:
    """Fill ``report.errors`` and ``report.top1`` step by step; return why it stopped early, or ""."""
    ref_state, cand_state = reference.init_state(), candidate.init_state()
    report.errors = {"logits": OutputErrors(), **{_output_name(k): OutputErrors() for k in ref_state}}
    problems = _structure(ref_state, cand_state, "initial state")
    if candidate.vocab_size != reference.vocab_size:
        problems.append(f"vocab_size: the candidate has {candidate.vocab_size}, expected {reference.vocab_size}")
    if problems:
        report.failures += problems
        return " (stopped before step 0: the candidate does not match the contract)"
    for step, token in enumerate(report.tokens):
        ref_logits, ref_state = reference.step(token, ref_state)
        cand_logits, cand_state = candidate.step(token, cand_state)
        ref_out = {"logits": ref_logits, **_as_outputs(ref_state)}  # logits (V,), then state_out.*
        cand_out = {"logits": cand_logits, **_as_outputs(cand_state)}
        problems = _structure(ref_out, cand_out, f"outputs at step {step}")
        if problems:
            report.failures += problems
            return f" (stopped at step {step}: the candidate's outputs do not match the contract)"
        for name, ref in ref_out.items():
            report.errors[name].add(ref, cand_out[name])
        report.top1.append(bool(np.argmax(ref_logits) == np.argmax(cand_logits)))
        report.n_steps = step + 1
    return ""


def _output_name(input_name: str) -> str:
    """``state.3.wkv`` -> ``state_out.3.wkv``."""
    return input_name.replace("state.", "state_out.", 1)


def _as_outputs(state: NamedState) -> dict[str, np.ndarray]:
    return {_output_name(k): v for k, v in state.items()}


def _structure(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], where: str) -> list[str]:
    """Contract mismatches in the candidate's ``where``: missing, unexpected or mis-shaped tensors."""
    problems = [f"{name}: missing from the candidate's {where}" for name in ref if name not in cand]
    problems += [f"{name}: unexpected in the candidate's {where}" for name in cand if name not in ref]
    problems += [
        f"{name}: shape {np.shape(cand[name])} in the candidate's {where}, expected {np.shape(value)}"
        for name, value in ref.items()
        if name in cand and np.shape(cand[name]) != np.shape(value)
    ]
    return problems


def _over_limits(report: ParityReport) -> list[str]:
    """One failure per output whose scaled error exceeds its limit, and one for top-1 agreement."""
    t, failures = report.tolerance, []
    for name, e in report.errors.items():
        limit = t.logits_scaled if name == "logits" else t.state_scaled
        step, worst = _worst(e.scaled)
        if limit is not None and step is not None and not worst <= limit:  # `not <=` so that NaN fails
            failures.append(f"{name}: max|Δ|/std {_sci(worst)} at step {step} exceeds {_sci(limit)}")
    if report.top1 and report.top1_agreement < t.top1:
        first = report.top1.index(False)
        failures.append(
            f"top-1 agreement {sum(report.top1)}/{len(report.top1)} ({report.top1_agreement:.1%}) is below "
            f"{t.top1:.1%}; first disagreement at step {first}"
        )
    return failures


def _worst(values: list[float]) -> tuple[int | None, float]:
    """(step, value) of the largest value, the first NaN winning; (None, nan) when empty."""
    if not values:
        return None, float("nan")
    arr = np.asarray(values)
    nan = np.flatnonzero(np.isnan(arr))
    step = int(nan[0]) if nan.size else int(np.argmax(arr))
    return step, float(arr[step])


def _worst_of(errors: dict[str, OutputErrors], names: list[str]) -> tuple[str, int | None, float]:
    """(name, step, value) of the largest scaled error over several outputs."""
    candidates = [(name, *_worst(errors[name].scaled)) for name in names]
    return max(candidates, key=lambda c: np.inf if np.isnan(c[2]) else c[2])


def _groups(errors: dict[str, OutputErrors]) -> dict[str, list[str]]:
    """Outputs by group: logits alone, then each state role over all layers ({"wkv": [...], ...})."""
    groups: dict[str, list[str]] = {}
    for name in errors:
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return groups


def _describe_greedy(greedy: GreedyResult | None) -> str:
    if greedy is None:
        return "not run"
    n = len(greedy.reference_tokens)
    if greedy.identical:
        return f"identical over {n} tokens"
    return f"diverges at generated token {greedy.first_divergence} of {n}"


def _sci(x: float) -> str:
    """Three significant digits, trailing zeros dropped: 1.04e-04, 1e-04, 0, nan."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _finite_or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _plot(report: ParityReport, path: Path) -> None:
    """Scaled error per step, log y: logits and each state role (max over layers), with the limits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = report.tolerance
    curves = {  # group -> (T,) scaled error, max over layers
        group: np.max([report.errors[n].scaled for n in names], axis=0)
        for group, names in (_groups(report.errors).items() if report.n_steps else ())
    }
    limits = [limit for limit in (t.logits_scaled, t.state_scaled) if limit is not None]
    smallest = min([v for c in curves.values() for v in c if v > 0] + limits)
    floor = 10.0 ** np.floor(np.log10(smallest) - 1)  # exact zeros are drawn here, below every measured value
    for group, curve in curves.items():
        ax.plot(np.arange(report.n_steps), np.maximum(curve, floor), label=group, lw=2 if group == "logits" else 1)
    if t.state_scaled in (t.logits_scaled, None):
        ax.axhline(t.logits_scaled, color="k", ls="--", lw=1, label="limit")
    else:
        ax.axhline(t.logits_scaled, color="k", ls="--", lw=1, label="limit (logits)")
        ax.axhline(t.state_scaled, color="k", ls=":", lw=1, label="limit (state)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"max|Δ| / std(ref)   (0 drawn at {_sci(floor)})")
    verdict = "PASS" if report.passed else "FAIL"
    ax.set_title(f"{verdict}: {report.candidate} vs {report.reference}, {report.precision}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
