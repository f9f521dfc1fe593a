"""``bscrit demo``: the whole pipeline on the built-in digits example, offline, on CPU.

1. train the scale-invariant digits MLP (:mod:`bscrit.examples.digits`) with SGD + weight decay at
   a constant LR to equilibrium, saving checkpoints of the constant-LR phase;
2. ``measure`` G and N at those checkpoints (pooled, as [LMA21] F.2 averaged epochs);
3. ``predict`` B* and the recommended range (Thms 5.2, 5.5, 5.6);
4. ``scale`` the hyperparameters to the top of the range (linear rule);
5. a short ``svag`` run at the top of the range (l = 1, 2, 4): does SGD still track its SDE?
6. ``confirm`` by branched training at the top of the range and, when the training set allows,
   at twice that: does the scaled run reach the base run's loss for the same examples?

It ends with :func:`bscrit.workflows.conclusion.conclude`: what the user can do, how sure bscrit
is, and any disagreement between the steps, explained.

Every step writes its artifact into the work directory; the spec it writes there can be reused
with the individual commands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.specfile.document import Spec
    from bscrit.theory.prediction import Prediction
    from bscrit.workflows.conclusion import Conclusion, Confirmation

#: Base run: B = 32, η = 0.1, λ = 5e-4 reaches equilibrium of ‖x‖² by about epoch 500 (R flat).
BASE = {"batch_size": 32, "lr": 0.1, "weight_decay": 5e-4}
#: Steps per epoch of the base run: n = 1500 training examples of digits, full batches of 32.
STEPS_PER_EPOCH = 1500 // 32
#: Epochs between the full demo's checkpoints: one relaxation time τ = 1/(2ηλ) = 10,000 steps
#: ([LMA21] eq. 10) rounded up to whole epochs, so that each checkpoint is its own draw from the
#: equilibrium (docs/theory.md §8). Closer checkpoints are merged into draws of ≥ τ steps: five
#: checkpoints 100 epochs apart made 2 draws, and the NSR interval had no upper end.
DRAW_EPOCHS = math.ceil(1.0 / (2 * BASE["lr"] * BASE["weight_decay"]) / STEPS_PER_EPOCH)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run (``quick`` for CI: under a minute, not at equilibrium)."""

    epochs: int
    save_from: int
    save_every: int
    batches: int | None  # None: auto = max(200, ceil(n/B)) per checkpoint
    svag_ls: tuple[int, ...]
    svag_steps: int
    svag_eval_every: int
    confirm_examples: int | None  # None: confirm's default (2 relaxation times at B)
    confirm_seeds: int

    @staticmethod
    def full() -> DemoConfig:
        """Six checkpoints τ apart from epoch 500 (at equilibrium): six independent draws, so the
        interval over the equilibrium has Student's t at 5 degrees of freedom (2.57), not at 1
        (12.7) as for the 2 draws of five checkpoints 100 epochs apart, whose NSR interval had
        no upper end."""
        return DemoConfig(
            epochs=500 + 5 * DRAW_EPOCHS, save_from=500, save_every=DRAW_EPOCHS, batches=None,
            svag_ls=(1, 2, 4),
            svag_steps=300, svag_eval_every=30, confirm_examples=None, confirm_seeds=3,
        )  # fmt: skip

    @staticmethod
    def quick() -> DemoConfig:
        return DemoConfig(
            epochs=60, save_from=40, save_every=20, batches=60, svag_ls=(1, 2, 4),
            svag_steps=20, svag_eval_every=10, confirm_examples=6000, confirm_seeds=2,
        )  # fmt: skip


SPEC_TEMPLATE = """\
# Written by `bscrit demo`: the scale-invariant digits MLP, trained by SGD + weight decay.
model:
  factory: bscrit.examples.digits.model:make_model
  kwargs: {{width: 64, num_classes: 10, affine: false, seed: 0}}
checkpoint:
  path: [{checkpoints}]
  key: model
data:
  factory: bscrit.examples.digits.data:make_dataset
  kwargs: {{split: train}}
eval_data:
  factory: bscrit.examples.digits.data:make_dataset
  kwargs: {{split: test}}
loss: cross_entropy
batch_size: {batch_size}
optimizer: {{name: sgd, lr: {lr}, momentum: 0.0, weight_decay: {weight_decay}}}
schedule: {{name: constant}}
measure: {{batches: {batches}, groups: 10, seed: 0, device: {device}, mode: train}}
"""


#: The file an earlier demo left in its work directory: a rerun may replace its files.
MARKER = ".bscrit-demo"


def demo_files(workdir: Path, cfg: DemoConfig) -> list[Path]:
    """The files a demo of ``cfg`` writes into ``workdir`` (the confirm ones already there)."""
    from bscrit.runs.confirm.results import confirm_paths
    from bscrit.runs.svag.results import svag_paths

    ckpt = workdir / "checkpoints"
    epochs = range(cfg.save_from, cfg.epochs + 1, cfg.save_every)
    files = [workdir / n for n in ("spec.yaml", "measurement.json", "measurement.params.csv",
                                   "prediction.json", "svag.png")]  # fmt: skip
    files += [ckpt, ckpt / "final.pt", *(ckpt / f"final_epoch{e:04d}.pt" for e in epochs)]
    files += [workdir / "svag", *svag_paths(workdir / "svag")]
    files += sorted(workdir.glob("confirm-*.png"))
    for d in sorted(workdir.glob("confirm-*")):
        files += [d, *confirm_paths(d)] if d.is_dir() else []
    return files


@dataclass
class DemoResult:
    """Paths and headline numbers of one demo run."""

    workdir: Path
    spec: Path
    checkpoints: list[Path]
    measurement: Path
    prediction: Path
    svag_dir: Path | None
    svag_plot: Path | None
    train: dict[str, Any]
    b_star: float
    recommended_max: float
    svag_target: int | None
    svag_verdict: str | None
    confirmations: list[dict[str, Any]] = field(default_factory=list)  # per B': verdict, d, CI
    conclusion: Conclusion | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON summary ``bscrit demo --json`` prints."""
        return {
            "workdir": str(self.workdir),
            "spec": str(self.spec),
            "checkpoints": [str(c) for c in self.checkpoints],
            "measurement": str(self.measurement),
            "prediction": str(self.prediction),
            "b_star": self.b_star,
            "recommended_max": self.recommended_max,
            "svag_target_batch_size": self.svag_target,
            "svag_verdict": self.svag_verdict,
            "svag_plot": str(self.svag_plot) if self.svag_plot else None,
            "confirm": self.confirmations,
            "conclusion": None if self.conclusion is None else self.conclusion.to_dict(),
        }


def run_demo(
    workdir: Path,
    *,
    quick: bool = False,
    device: str = "cpu",
    svag: bool = True,
    confirm: bool = True,
    say: Callable[[str], None] = print,
    show: ModuleType | None = None,
) -> DemoResult:
    """Run the demo pipeline; ``say`` prints step headers, ``show`` (a module with the report
    functions, normally :mod:`bscrit.report`) prints each step's tables.

    The demo's network is tiny: one CPU thread runs it as fast as several and does not slow to a
    crawl when another process shares the cores, so torch is held to one thread meanwhile.
    """
    import torch

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_demo(
            workdir, quick=quick, device=device, svag=svag, confirm=confirm, say=say, show=show
        )
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Demo:
    """What the steps of one demo run share: where, how, and what was written so far."""

    workdir: Path
    cfg: DemoConfig
    quick: bool
    device: str
    say: Callable[[str], None]
    show: ModuleType | None
    files: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def _run_demo(
    workdir: Path,
    *,
    quick: bool,
    device: str,
    svag: bool,
    confirm: bool,
    say: Callable[[str], None],
    show: ModuleType | None,
) -> DemoResult:
    cfg = DemoConfig.quick() if quick else DemoConfig.full()
    from bscrit.artifacts.files import write_atomic

    workdir = workdir.resolve()
    write_atomic(workdir / MARKER, "written by `bscrit demo`: a rerun may replace its files\n")
    d = _Demo(workdir, cfg, quick, device, say, show)
    try:
        tr, ckpts = _train_step(d)
        spec, m, m_path = _measure_step(d, ckpts)
        p, p_path = _predict_step(d, m, m_path)
        _scale_step(d, m, p)
        target, verdict, svag_dir, svag_plot = _svag_step(d, spec, ckpts[-1], p, svag)
        confirmations = _confirm_step(d, spec, ckpts[-1], p, confirm)
        conclusion = _conclusion(p, m, target, verdict, confirmations)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the CLI says what is already written
        e.written = list(d.files) or _saved_checkpoints(d)  # type: ignore[attr-defined]
        raise
    return DemoResult(
        workdir=workdir,
        spec=workdir / "spec.yaml",
        checkpoints=ckpts,
        measurement=m_path,
        prediction=p_path,
        svag_dir=svag_dir,
        svag_plot=svag_plot,
        train=tr,
        b_star=p.base.b_star if p.measurements else math.nan,
        recommended_max=p.recommended.max,
        svag_target=target,
        svag_verdict=verdict,
        confirmations=[c.to_dict() for c in confirmations],
        conclusion=conclusion,
        files=d.files,
    )


def _saved_checkpoints(d: _Demo) -> list[Path]:
    """Checkpoints an interrupted training step had saved (it lists them only at its end)."""
    found = (d.workdir / "checkpoints").glob("*.pt")
    return sorted(p for p in found if p.stat().st_mtime >= d.started - 1)


def _train_step(d: _Demo) -> tuple[dict[str, Any], list[Path]]:
    from bscrit.examples.digits.train import train

    cfg = d.cfg
    d.say(
        f"[1/6] train the scale-invariant digits MLP: SGD, B={BASE['batch_size']}, "
        f"η={BASE['lr']}, λ={BASE['weight_decay']}, constant LR, {cfg.epochs} epochs"
        + (" (--quick: short, NOT at equilibrium)" if d.quick else " (to equilibrium)")
    )
    final = d.workdir / "checkpoints" / "final.pt"
    tr = train(
        out=final,
        epochs=cfg.epochs,
        batch_size=BASE["batch_size"],
        lr=BASE["lr"],
        weight_decay=BASE["weight_decay"],
        save_every=cfg.save_every,
        save_from=cfg.save_from,
        log_every=max(cfg.epochs // 5, 1),
        verbose=True,
    )
    # the phase checkpoints (the last one is the final state: final.pt is not measured twice)
    ckpts = [Path(p) for p in tr.get("checkpoints", []) if Path(p) != final] or [final]
    d.files += ckpts
    d.say(
        f"      train accuracy {tr['train_acc']:.3f}, test accuracy {tr['test_acc']:.3f}, "
        f"{len(ckpts)} checkpoints of the constant-LR phase, {tr['seconds']:.0f}s"
    )
    return tr, ckpts


def _measure_step(d: _Demo, ckpts: list[Path]) -> tuple[Spec, Measurement, Path]:
    from bscrit.artifacts.files import write_atomic
    from bscrit.artifacts.measurement import write_measurement
    from bscrit.specfile.document import load_spec
    from bscrit.workflows.measure import run_measurement
    from bscrit.workflows.plan import MeasureOptions

    spec_path = d.workdir / "spec.yaml"
    write_atomic(  # a link planted there is replaced, never followed
        spec_path,
        SPEC_TEMPLATE.format(
            checkpoints=", ".join(str(p) for p in ckpts),
            batches=d.cfg.batches if d.cfg.batches is not None else "auto",
            device=d.device,
            **BASE,
        ),
    )
    d.files.append(spec_path)
    apart = f"{d.cfg.save_every} epochs = {d.cfg.save_every * STEPS_PER_EPOCH} steps apart"
    d.say(
        f"[2/6] bscrit measure {spec_path.name}: G and N at {len(ckpts)} checkpoints {apart}, "
        "pooled; the checkpoints ≥ τ = 1/(2ηλ) apart are the draws of the equilibrium interval"
    )
    spec = load_spec(spec_path)
    show = d.show
    progress = None if show is None else (lambda desc, t: show.progress(desc, t, "batch"))
    m = run_measurement(spec, ckpts, MeasureOptions(), progress_factory=progress)
    m_path = d.workdir / "measurement.json"
    d.files += list(write_measurement(m, m_path))
    if show is not None:
        show.show(show.format_measurement(m))
        for w in m.warnings:
            show.warn(w)
    return spec, m, m_path


def _predict_step(d: _Demo, m: Measurement, m_path: Path) -> tuple[Prediction, Path]:
    from bscrit.artifacts.files import write_json
    from bscrit.theory.prediction import predict

    d.say("[3/6] bscrit predict measurement.json: B* and the recommended range")
    p = predict([(m_path.name, m)])
    p_path = d.workdir / "prediction.json"
    write_json(p_path, p.to_dict())
    d.files.append(p_path)
    if d.show is not None:
        d.show.show(d.show.format_prediction(p))
    return p, p_path


def _scale_step(d: _Demo, m: Measurement, p: Prediction) -> None:
    from bscrit.theory.scaled import scale_hyperparameters

    pow2 = p.recommended.max_pow2
    if pow2 is None or m.optimizer is None:
        d.say("[4/6] scale skipped (no power of two in the recommended range, or no optimizer)")
        return
    steps = d.cfg.epochs * (m.dataset_size // BASE["batch_size"])
    d.say(
        f"[4/6] bscrit scale --from-spec spec.yaml --target-batch-size {pow2}: the largest "
        "power of two in the recommended range, with the training length"
    )
    scaled = scale_hyperparameters(m.optimizer, m.batch_size, pow2, steps=steps)
    if d.show is not None:
        d.show.show(d.show.format_scaled(scaled))


def _svag_step(
    d: _Demo, spec: Spec, checkpoint: Path, p: Prediction, enabled: bool
) -> tuple[int | None, str | None, Path | None, Path | None]:
    from bscrit.theory.targets import confirmation_target

    if not enabled or p.recommended.target is None:
        why = "--no-svag" if not enabled else "no finite top of range"
        d.say(f"[5/6] svag skipped ({why})")
        return p.recommended.target, None, None, None
    target, why = confirmation_target(p, power_of_two=True)
    svag_dir, svag_plot = d.workdir / "svag", d.workdir / "svag.png"
    d.say(
        f"[5/6] bscrit svag at B' = {target} ({why}), l = {','.join(map(str, d.cfg.svag_ls))}, "
        f"{d.cfg.svag_steps} effective steps"
    )
    verdict = _run_svag(spec, checkpoint, target, d.cfg, d.device, svag_dir, svag_plot, d.show,
                        d.files)  # fmt: skip
    return target, verdict, svag_dir, svag_plot


def _run_svag(
    spec: Spec,
    checkpoint: Path,
    target: int,
    cfg: DemoConfig,
    device: str,
    out_dir: Path,
    plot: Path,
    show: ModuleType | None,
    files: list[Path],
) -> str:
    """Run the SVAG step; ``files`` gets the figure and the folder as each is written."""
    from bscrit.report.svag_plot import plot_svag
    from bscrit.runs.svag.plan import prepare_svag
    from bscrit.runs.svag.results import write_svag
    from bscrit.runs.svag.run import run_plan

    plan = prepare_svag(
        spec,
        target_batch_size=target,
        ls=cfg.svag_ls,
        effective_steps=cfg.svag_steps,
        checkpoint=checkpoint,
        eval_every=cfg.svag_eval_every,
        device=device,
    )
    if show is not None:
        show.show(show.format_svag_cost(
            plan.ls, plan.effective_steps, plan.forward_backward(), plan.target_batch_size,
            str(plan.device),
        ), stderr=True)  # fmt: skip
        with show.progress("SVAG", plan.total_steps, unit="step") as advance:
            result = run_plan(plan, on_step=advance)
        show.show(show.format_svag(result))
    else:
        result = run_plan(plan)
    plot_svag(result, plot)
    files.append(plot)
    write_svag(result, out_dir)
    files.append(out_dir)
    return result.verdict.code


def _confirm_targets(p: Prediction, n: int) -> list[int]:
    """B' of the branched runs: the one svag checks (the top of the recommended range, from
    :func:`~bscrit.theory.targets.confirmation_target`) and twice that when it fits the data."""
    from bscrit.theory.targets import confirmation_target

    target, _ = confirmation_target(p, power_of_two=True)
    return [b for b in (target, 2 * target) if b <= n]


def _confirm_step(
    d: _Demo, spec: Spec, checkpoint: Path, p: Prediction, enabled: bool
) -> list[Confirmation]:
    """Branched runs from the last checkpoint at each target; figure and folder per target."""
    from bscrit.report.confirm_plot import plot_confirm
    from bscrit.runs.confirm.plan import prepare_confirm
    from bscrit.runs.confirm.results import write_confirm
    from bscrit.runs.confirm.run import run_confirm
    from bscrit.workflows.conclusion import confirmation_of

    if not enabled or p.recommended.target is None:
        why = "--no-confirm" if not enabled else "no finite top of range"
        d.say(f"[6/6] confirm skipped ({why})")
        return []
    targets = _confirm_targets(p, p.base.dataset_size)
    d.say(
        f"[6/6] bscrit confirm at B' = {' and '.join(map(str, targets))}: train from the last "
        f"checkpoint at B = {BASE['batch_size']} and at B' (linear rule) for the same examples, "
        f"{d.cfg.confirm_seeds} seeds each"
    )
    out: list[Confirmation] = []
    for target in targets:
        plan = prepare_confirm(
            spec,
            target_batch_size=target,
            examples=d.cfg.confirm_examples,
            seeds=d.cfg.confirm_seeds,
            checkpoint=checkpoint,
            device=d.device,
        )
        show = d.show
        if show is not None:
            from bscrit.report.confirm import format_confirm, format_confirm_cost

            show.show(format_confirm_cost(plan), stderr=True)
            with show.progress(f"confirm {target}", plan.total_steps, unit="step") as advance:
                result = run_confirm(plan, on_step=advance)
            show.show(format_confirm(result))
        else:
            result = run_confirm(plan)
        figure, folder = d.workdir / f"confirm-{target}.png", d.workdir / f"confirm-{target}"
        plot_confirm(result, figure)
        d.files.append(figure)
        write_confirm(result, folder)
        d.files.append(folder)
        out.append(confirmation_of(result))
    return out


def _conclusion(
    p: Prediction,
    m: Measurement,
    svag_target: int | None,
    svag_verdict: str | None,
    confirmations: list[Confirmation],
) -> Conclusion:
    from bscrit.optim import registry as optim
    from bscrit.theory.prediction import b_star_lower
    from bscrit.workflows.conclusion import conclude

    rule = optim.get(m.optimizer.name).rule if m.optimizer is not None else "linear"
    return conclude(
        base_batch_size=m.batch_size,
        recommended_max=p.recommended.max,
        b_star_lower=b_star_lower(p),
        rule=rule,
        svag=None if svag_target is None or svag_verdict is None else (svag_target,
                                                                       svag_verdict),
        confirmations=confirmations,
    )  # fmt: skip
