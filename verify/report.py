"""Parity: does a backend compute what the PyTorch model computes, step after step?

The candidate rolls out the tokens from its own initial state, feeding back ITS OWN state (it is
never handed the reference's), so errors that build up in the recurrence show up. The reference
is the PyTorch model: live (``compare_rollouts``, a Backend stepping beside it) or as it was
recorded when the artifact was built (``compare_to_reference``, the artifact's reference.npz:
its logits at every step, its state after the last). For every compared output (``logits`` and
each ``state_out.{layer}.{role}``) the report records at each step

- max abs error   ``max|Δ|``
- max rel error   ``max(|Δ| / max(|ref|, REL_EPS))``
- scaled error    ``max|Δ| / std(ref)``, the std taken over that output at that step (for a
  constant reference its largest magnitude, and 1 for an all-zero one)

and whether the logits agree on the top-1 token. A recorded step whose logits row is kept in top-k
form (``TopLogits``: its K largest, the row's mean and std) gives max|Δ| over those K ids and of the
row's mean and std, each at most the whole row's max|Δ|: a lower bound of it, equal to it when the
largest difference is at one of the K ids; the max rel error over the K ids; the same scale and
top-1 token. The scaled error and the top-1 agreement are judged against a ``Tolerance``
(verify/tolerances.py); the other two are reported only.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifact.reference import Reference, TopLogits
from ..atomic import atomic_path
from ..errors import OptionError, printable
from ..runtime.backend import Backend, NamedState, check_token_ids
from ..runtime.generation import Sampler, generate
from .tolerances import LIMITS, Tolerance

# Floor of the denominator of the relative error: reference values closer to zero than this (the
# exact zeros of a fresh or saturated state, say) are divided by REL_EPS instead of by themselves.
# RWKV's activations and states are of order 1, where 1e-6 is a few fp32 rounding steps: a value
# that small carries no relative precision worth reporting.
REL_EPS = 1e-6


@dataclass
class OutputErrors:
    """The errors of one output, one entry per compared step."""

    steps: list[int] = field(default_factory=list)
    max_abs: list[float] = field(default_factory=list)
    max_rel: list[float] = field(default_factory=list)
    scaled: list[float] = field(default_factory=list)  # max|Δ| / std(ref)

    def add(self, step: int, ref: np.ndarray | TopLogits, cand: np.ndarray) -> None:
        """The errors of ``cand`` against ``ref``: a whole output, or a logits row in top-k form."""
        c = np.asarray(cand, dtype=np.float64)
        max_abs, max_rel, scale = _top_errors(ref, c) if isinstance(ref, TopLogits) else _errors(ref, c)
        self.steps.append(step)
        self.max_abs.append(max_abs)
        self.max_rel.append(max_rel)
        self.scaled.append(max_abs / scale)


def _errors(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float]:
    """(max|Δ|, max rel error, scale) of ``cand`` against the whole ``ref``."""
    r = np.asarray(ref, dtype=np.float64)
    delta = np.abs(cand - r)
    scale = float(r.std()) or float(np.abs(r).max()) or 1.0
    return float(delta.max()), float((delta / np.maximum(np.abs(r), REL_EPS)).max()), scale


def _top_errors(ref: TopLogits, cand: np.ndarray) -> tuple[float, float, float]:
    """(max|Δ|, max rel error, scale) of the row ``cand`` against a row in top-k form: max|Δ| over the K
    ids and of the row's mean and std (each at most the whole row's max|Δ|; a NaN anywhere in ``cand``
    makes it NaN), the max rel error over the K ids, the row's std as scale (a constant row: its value)."""
    r = ref.values.astype(np.float64)
    delta = np.abs(cand[ref.ids] - r)
    max_abs = float(np.max([delta.max(), abs(cand.mean() - ref.mean), abs(cand.std() - ref.std)]))
    scale = ref.std or float(abs(r[0])) or 1.0
    return max_abs, float((delta / np.maximum(np.abs(r), REL_EPS)).max()), scale


@dataclass(frozen=True)
class GreedyResult:
    """Greedy (argmax) generation from the same prompt on both backends."""

    prompt: list[int]
    reference_tokens: list[int]
    candidate_tokens: list[int]
    identical: bool
    first_divergence: int | None  # index into the generated tokens of the first difference
    # at the divergence, the candidate's logit of its token minus that of the reference's token, over the std of
    # its logits: below the logits limit the two tokens tie within the rounding the rollout allows
    tie_margin: float | None = None

    def tied(self, limit: float) -> bool:
        """Whether the generations agree up to a divergence at a tie within ``limit`` (max|Δ|/std)."""
        return self.identical or (self.tie_margin is not None and self.tie_margin <= limit)


class Verdict:
    """A report judged by its ``failures``: it passes with none; exit code 0 or 1."""

    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass
class ParityReport(Verdict):
    """The verdict on one candidate backend and the numbers behind it."""

    reference: str  # backend names
    candidate: str
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
    def top1_agreement(self) -> float:
        return sum(self.top1) / len(self.top1) if self.top1 else 0.0

    def add_greedy(self, result: GreedyResult) -> None:
        """Attach a greedy-identity result; a divergence fails when the tolerance demands identity."""
        self.greedy = result
        n, prompt = len(result.reference_tokens), len(result.prompt)
        self.what_ran.append(f"greedy generation of {n} tokens from a {prompt}-token prompt on both backends")
        if self.tolerance.greedy_identical and not result.tied(self.tolerance.logits_scaled):
            self.failures.append(f"greedy generation diverges at generated token {result.first_divergence} of {n}"
                                 f"{_margin(result)}")

    def to_json(self) -> dict:
        """A JSON-serialisable dict; non-finite errors become null."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "limits": self.tolerance.name,
            "passed": self.passed,
            "failures": list(self.failures),
            "what_ran": list(self.what_ran),
            **self.details,
            "tolerance": asdict(self.tolerance),
            "tokens": list(self.tokens),
            "n_steps": self.n_steps,
            "top1": {"agreement": self.top1_agreement, "per_step": list(self.top1)},
            "outputs": {
                name: {metric: [finite_or_none(v) for v in values] for metric, values in asdict(e).items()}
                for name, e in self.errors.items()
            },
            "greedy": asdict(self.greedy) if self.greedy else None,
        }

    def save(self, directory: str | Path, manifest_sha256: str | None = None) -> list[Path]:
        """Write ``parity.json`` (naming the manifest judged) and ``parity.png`` into ``directory``, each
        atomically (the plot only where matplotlib is installed: a runtime-only machine gets the JSON
        report alone)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, png_path = directory / "parity.json", directory / "parity.png"
        with atomic_path(json_path) as tmp:
            record = {**self.to_json(), "manifest_sha256": manifest_sha256}
            tmp.write_text(json.dumps(record, indent=1, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
        if importlib.util.find_spec("matplotlib") is None:
            png_path.unlink(missing_ok=True)  # an older plot would not show this report
            return [json_path]
        with atomic_path(png_path) as tmp:
            _plot(self, tmp)
        return [json_path, png_path]

    def summary(self) -> str:
        """A few lines: the verdict first, then the worst error per output group, top-1 and greedy."""
        t = self.tolerance
        lines = [
            f"{'PASS' if self.passed else 'FAIL'}  {self.candidate} vs {self.reference}, {self.tolerance.name}, "
            f"{self.n_steps}/{len(self.tokens)} steps (limits: max|Δ|/std {sci(t.logits_scaled)} logits, "
            f"{sci(t.state_scaled) if t.state_scaled is not None else 'not judged on the'} state; "
            f"top-1 >= {t.top1:.1%})"
        ]
        lines += [f"  - {failure}" for failure in self.failures]
        for group, names in _groups(self.errors).items():
            name, step, scaled = _worst_of(self.errors, names)
            where = "" if scaled == 0 else f" (step {step})" if name == group else f" ({name}, step {step})"
            worst_abs = float(np.max([self.errors[n].max_abs for n in names]))
            lines.append(f"  {group:<10} max|Δ|/std {sci(scaled)}{where}, max|Δ| {sci(worst_abs)}")
        lines.append(f"  top-1      {sum(self.top1)}/{len(self.top1)} steps agree ({self.top1_agreement:.1%})")
        lines.append(f"  greedy     {_describe_greedy(self.greedy)}")
        return "\n".join(map(printable, lines))  # manifest text escaped: one line stays one line


def compare_rollouts(reference: Backend, candidate: Backend, tokens: list[int],
                     tolerance: Tolerance | str) -> ParityReport:
    """Roll out ``tokens`` on both backends, each on its own state, and judge every step's logits and
    state by ``tolerance`` (a Tolerance, or the name of one in LIMITS)."""
    tolerance = _limits(tolerance)
    if not tokens:
        raise OptionError("parity needs at least one token to roll out")
    check_token_ids(tokens, reference.vocab_size)

    def outputs() -> Iterator[dict[str, np.ndarray]]:
        state = reference.init_state()
        for token in tokens:
            logits, state = reference.step(token, state)
            yield {"logits": logits, **_as_outputs(state)}

    report = ParityReport(reference.name, candidate.name, tolerance, list(tokens))
    problems = _structure(reference.init_state(), candidate.init_state(), "initial state", exact=True)
    stopped = _roll_out(report, candidate, outputs(), reference.vocab_size, problems)
    report.what_ran.append(f"rollout of {report.n_steps}/{len(tokens)} steps on {reference.name} and "
                           f"{candidate.name}, each feeding back its own state{stopped}")
    report.what_ran.append(f"compared logits and {len(report.errors) - 1} state outputs at every step")
    report.failures += _over_limits(report)
    return report


def compare_to_reference(reference: Reference, candidate: Backend, steps: int, tolerance: Tolerance) -> ParityReport:
    """Roll out the first ``steps`` tokens of the recorded reference on ``candidate`` and judge its
    logits at every step, and its state after the last recorded step, by ``tolerance``."""
    total = len(reference.tokens)
    if not 1 <= steps <= total:
        raise OptionError(f"the artifact's reference rollout holds {total} steps, not {steps}: verify at most "
                          f"{total} (or --against-checkpoint for longer rollouts)")
    tokens = reference.tokens[:steps].tolist()

    def outputs() -> Iterator[dict[str, np.ndarray | TopLogits]]:
        for step in range(steps):
            yield {"logits": reference.logits.at(step), **(reference.state if step == total - 1 else {})}

    report = ParityReport("torch (recorded at build)", candidate.name, tolerance, tokens)
    wanted = {name.replace("state_out.", "state.", 1): value for name, value in reference.state.items()}
    problems = _structure(wanted, candidate.init_state(), "initial state", exact=True)
    stopped = _roll_out(report, candidate, outputs(), reference.logits.vocab_size, problems)
    report.what_ran.append(f"rollout of {report.n_steps}/{steps} steps on {candidate.name}, feeding back its own "
                           f"state, against the PyTorch model's rollout recorded when the artifact was built{stopped}")
    whole = ", ".join(str(s) for s in reference.logits.steps if s < steps) or "none"
    report.what_ran.append(f"compared the logits at every step (whole rows at steps {whole}; elsewhere the recorded "
                           f"top {reference.logits.top_ids.shape[1]} and the row's mean and std)" + (
        f" and {len(reference.state)} state outputs after the last" if steps == total else
        f"; the state is recorded after step {total - 1} only, so it is compared with the full {total} steps"))
    report.failures += _over_limits(report)
    return report


def greedy_identity(reference: Backend, candidate: Backend, prompt: list[int], n: int = 128) -> GreedyResult:
    """Generate ``n`` tokens greedily from ``prompt`` on each backend (each on its own state) and compare."""
    return _greedy(prompt, list(generate(reference, prompt, n, Sampler(temperature=0.0))), candidate)


def greedy_against(reference: Reference, candidate: Backend, n: int) -> GreedyResult:
    """Greedy generation on ``candidate`` against the ``n`` first tokens the reference generated."""
    if not 0 < n <= len(reference.greedy_tokens):
        raise OptionError(f"the artifact's reference holds {len(reference.greedy_tokens)} greedy tokens, not {n}: "
                          "compare at most that many (or --against-checkpoint)")
    return _greedy(reference.greedy_prompt.tolist(), reference.greedy_tokens[:n].tolist(), candidate)


def _greedy(prompt: list[int], expected: list[int], candidate: Backend) -> GreedyResult:
    generated = list(generate(candidate, prompt, len(expected), Sampler(temperature=0.0)))
    diverge = next((i for i, (a, b) in enumerate(zip(expected, generated)) if a != b), None)
    margin = None if diverge is None else _tie_margin(candidate, prompt + expected[:diverge], generated[diverge],
                                                       expected[diverge])
    return GreedyResult(list(prompt), expected, generated, diverge is None, diverge, margin)


def _tie_margin(candidate: Backend, tokens: list[int], chosen: int, expected: int) -> float:
    """The candidate's logit of ``chosen`` minus that of ``expected`` after ``tokens``, over its logits' std."""
    logits, _ = candidate.prefill(tokens, candidate.init_state())
    logits = np.asarray(logits, np.float64)
    return float((logits[chosen] - logits[expected]) / logits.std())


def _limits(tolerance: Tolerance | str) -> Tolerance:
    if isinstance(tolerance, Tolerance):
        return tolerance
    if tolerance not in LIMITS:
        raise OptionError(f"unknown limits {tolerance!r}; expected one of {', '.join(LIMITS)}")
    return LIMITS[tolerance]


def _roll_out(report: ParityReport, candidate: Backend, reference: Iterable[dict[str, np.ndarray | TopLogits]],
              vocab_size: int, problems: list[str]) -> str:
    """Step ``candidate`` through ``report.tokens`` beside the ``reference`` outputs of each step (logits,
    and state_out.* where recorded); fill ``report.errors`` and ``report.top1``; return why it stopped early."""
    state = candidate.init_state()
    report.errors = {"logits": OutputErrors(), **{_output_name(k): OutputErrors() for k in state}}
    if candidate.vocab_size != vocab_size:
        problems = problems + [f"vocab_size: the candidate has {candidate.vocab_size}, expected {vocab_size}"]
    if problems:
        report.failures += problems
        return " (stopped before step 0: the candidate does not match the contract)"
    for step, (token, ref_out) in enumerate(zip(report.tokens, reference)):
        logits, state = candidate.step(token, state)
        cand_out = {"logits": logits, **_as_outputs(state)}  # logits (V,), then state_out.*
        problems = _structure(ref_out, cand_out, f"outputs at step {step}", exact=len(ref_out) > 1)
        if problems:
            report.failures += problems
            return f" (stopped at step {step}: the candidate's outputs do not match the contract)"
        for name, ref in ref_out.items():
            report.errors[name].add(step, ref, cand_out[name])
        report.top1.append(_argmax(ref_out["logits"]) == int(np.argmax(logits)))
        report.n_steps = step + 1
    return ""


def _argmax(logits: np.ndarray | TopLogits) -> int:
    """The first id of the largest logit (a row in top-k form records it first)."""
    return int(logits.ids[0]) if isinstance(logits, TopLogits) else int(np.argmax(logits))


def _output_name(input_name: str) -> str:
    """``state.3.wkv`` -> ``state_out.3.wkv``."""
    return input_name.replace("state.", "state_out.", 1)


def _as_outputs(state: NamedState) -> dict[str, np.ndarray]:
    return {_output_name(k): v for k, v in state.items()}


def _structure(ref: dict[str, np.ndarray | TopLogits], cand: dict[str, np.ndarray], where: str,
               exact: bool = False) -> list[str]:
    """Contract mismatches in the candidate's ``where``: missing or mis-shaped tensors (with ``exact``,
    unexpected ones too)."""
    problems = [f"{name}: missing from the candidate's {where}" for name in ref if name not in cand]
    problems += [f"{name}: unexpected in the candidate's {where}" for name in cand if exact and name not in ref]
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
        step, worst = _worst(e)
        if limit is not None and step is not None and not worst <= limit:  # `not <=` so that NaN fails
            failures.append(f"{name}: max|Δ|/std {sci(worst)} at step {step} exceeds {sci(limit)}")
    if report.top1 and report.top1_agreement < t.top1:
        first = report.top1.index(False)
        failures.append(
            f"top-1 agreement {sum(report.top1)}/{len(report.top1)} ({report.top1_agreement:.1%}) is below "
            f"{t.top1:.1%}; first disagreement at step {first}"
        )
    return failures


def _worst(errors: OutputErrors) -> tuple[int | None, float]:
    """(step, value) of the largest scaled error, the first NaN winning; (None, nan) when none was compared."""
    if not errors.scaled:
        return None, float("nan")
    arr = np.asarray(errors.scaled)
    nan = np.flatnonzero(np.isnan(arr))
    i = int(nan[0]) if nan.size else int(np.argmax(arr))
    return errors.steps[i], float(arr[i])


def _worst_of(errors: dict[str, OutputErrors], names: list[str]) -> tuple[str, int | None, float]:
    """(name, step, value) of the largest scaled error over several outputs."""
    candidates = [(name, *_worst(errors[name])) for name in names if errors[name].scaled]
    return max(candidates, key=lambda c: np.inf if np.isnan(c[2]) else c[2])


def _groups(errors: dict[str, OutputErrors]) -> dict[str, list[str]]:
    """Compared outputs by group: logits alone, then each state role over all layers ({"wkv": [...], ...})."""
    groups: dict[str, list[str]] = {}
    for name, e in errors.items():
        if e.steps:
            groups.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return groups


def _describe_greedy(greedy: GreedyResult | None) -> str:
    if greedy is None:
        return "not run"
    n = len(greedy.reference_tokens)
    if greedy.identical:
        return f"identical over {n} tokens"
    return f"diverges at generated token {greedy.first_divergence} of {n}{_margin(greedy)}"


def _margin(greedy: GreedyResult) -> str:
    if greedy.tie_margin is None:
        return ""
    return f" (where the candidate's logits part the two tokens by {sci(greedy.tie_margin)} std)"


def sci(x: float) -> str:
    """Three significant digits, trailing zeros dropped: 1.04e-04, 1e-04, 0, nan."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def finite_or_none(x: float) -> float | None:
    """``x``, or None for NaN and infinities (which JSON cannot hold)."""
    return x if np.isfinite(x) else None


def _plot(report: ParityReport, path: Path) -> None:
    """Scaled error per step, log y: logits and each state role (max over layers), with the limits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = report.tolerance
    curves = {  # group -> (steps compared, scaled error there: max over layers)
        group: (report.errors[names[0]].steps, np.max([report.errors[n].scaled for n in names], axis=0))
        for group, names in _groups(report.errors).items()
    }
    limits = [limit for limit in (t.logits_scaled, t.state_scaled) if limit is not None]
    smallest = min([v for _, c in curves.values() for v in c if v > 0] + limits)
    floor = 10.0 ** np.floor(np.log10(smallest) - 1)  # exact zeros are drawn here, below every measured value
    for group, (steps, curve) in curves.items():
        ax.plot(steps, np.maximum(curve, floor), marker="o" if len(steps) == 1 else None, label=group,
                lw=2 if group == "logits" else 1)
    if t.state_scaled in (t.logits_scaled, None):
        ax.axhline(t.logits_scaled, color="k", ls="--", lw=1, label="limit")
    else:
        ax.axhline(t.logits_scaled, color="k", ls="--", lw=1, label="limit (logits)")
        ax.axhline(t.state_scaled, color="k", ls=":", lw=1, label="limit (state)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"max|Δ| / std(ref)   (0 drawn at {sci(floor)})")
    verdict = "PASS" if report.passed else "FAIL"
    ax.set_title(f"{verdict}: {report.candidate} vs {report.reference}, {report.tolerance.name}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
