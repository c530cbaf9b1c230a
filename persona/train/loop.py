"""The training loop: accelerate, a reproducible batch order, checkpoints, clean stops.

One loop serves every objective: it is handed a ``collate`` (example indices ->
a batch of tensors) and a ``loss_fn`` (model, batch -> summed loss over the
batch's target tokens, and their count), so SFT and KL distillation differ only
in those two functions.

Reproducibility. The batch at global step ``s`` is a pure function of (seed, s):
epoch ``e``'s order is a permutation drawn from a generator seeded by (seed, e),
so a resumed run picks up the exact batch it would have seen, without saving a
data-loader's state. Deterministic algorithms are switched on for the run
(warn-only: an op without a deterministic kernel warns rather than fails). The
loss is the mean over the *global* batch's target tokens, computed the same way
on one process or many, so the result does not depend on how the batch was
split. On one machine, the same data, options and seed give bit-identical
factors, hence the same vector id.

Checkpoints (``checkpoint.pt`` in the run's cache folder, written atomically:
trainable weights, optimizer state, step, RNG state, losses so far) are taken
every ``checkpoint_every`` steps and when the run is interrupted between two
optimizer steps. ``resume`` restores the newest one; since the batch order and
all state are restored, the resumed run reaches exactly the weights the
uninterrupted one would have.

Interrupts. Ctrl-C raises KeyboardInterrupt wherever Python happens to be. If
that is inside ``optimizer.step()`` the weights may be half-updated, so the
loop tracks which phase it is in and only checkpoints the current step when
the weights are consistent (anywhere but the optimizer step); otherwise the
last periodic checkpoint stands. Either way it raises
:class:`TrainingInterrupted`, and the caller stores nothing.

Multi-GPU: ``accelerate launch -m persona train ...`` runs this unchanged. Each
process takes a strided share of every global batch (all processes load the
whole data set, so each knows the global token count), DDP averages the
gradients, and only the main process writes checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from persona.errors import Interrupted, InvalidInput, PersonaError
from persona.fsutil import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

Batch = dict[str, Any]
LossFn = Callable[[Any, Batch], tuple[Any, int]]


class TrainingInterrupted(Interrupted):
    """Ctrl-C during training; carries what the run did so far for its record."""

    def __init__(self, message: str, hint: str, step: int, losses: list[float], tokens: int,
                 seconds: float) -> None:
        super().__init__(message, hint)
        self.step = step
        self.losses = losses
        self.tokens = tokens
        self.seconds = seconds


class TrainingDiverged(PersonaError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    batch_size: int
    lr: float
    seed: int
    checkpoint_dir: Path
    run_key: str
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    resume: bool = False
    eval_every: int = 0  # validate every N steps (0: only when a validate function is given, at the end)
    optimizer: str = "adamw"


@dataclass(frozen=True)
class StepReport:
    step: int  # steps completed
    total: int
    loss: float
    tokens: int  # tokens processed so far
    seconds: float
    validation: float | None = None  # held-out loss measured after this step, if it was


@dataclass
class LoopOutcome:
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    best_step: int | None = None  # the step whose weights were kept (validation only)

    @property
    def steps(self) -> int:
        return len(self.losses)


# -- batch order -----------------------------------------------------------------------

def batches_per_epoch(examples: int, batch_size: int) -> int:
    return math.ceil(examples / batch_size)


def total_steps(examples: int, batch_size: int, epochs: float | None, steps: int | None) -> int:
    """``steps`` when given, else ``epochs`` passes over the data (at least one step)."""
    if steps is not None:
        return steps
    return max(1, math.ceil((epochs if epochs is not None else 1.0) * batches_per_epoch(examples, batch_size)))


@lru_cache(maxsize=8)
def epoch_order(examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Epoch ``epoch``'s example order: a permutation drawn from (seed, epoch) alone."""
    import torch

    mixed = int.from_bytes(hashlib.sha256(f"persona-train:{seed}:{epoch}".encode()).digest()[:8], "little")
    generator = torch.Generator().manual_seed(mixed & ((1 << 63) - 1))
    return tuple(torch.randperm(examples, generator=generator).tolist())


def batch_at(step: int, examples: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of the global batch at ``step`` (the last batch of an epoch may be short)."""
    per_epoch = batches_per_epoch(examples, batch_size)
    epoch, index = divmod(step, per_epoch)
    return list(epoch_order(examples, seed, epoch)[index * batch_size:(index + 1) * batch_size])


# -- environment -------------------------------------------------------------------------

def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda, but torch sees no CUDA GPU", "use --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        raise InvalidInput(f"unknown --device {device!r}", "use cpu, cuda or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if precision not in ("no", "bf16", "fp16"):
        raise InvalidInput(f"unknown --mixed-precision {precision!r}", "use no, bf16, fp16 or auto")
    if precision != "no" and device == "cpu":
        raise InvalidInput(f"--mixed-precision {precision} needs a GPU", "use --mixed-precision no on the CPU")
    return precision


def make_accelerator(device: str, precision: str) -> Any:
    """An ``accelerate.Accelerator``: a no-op wrapper on one CPU process, DDP under ``accelerate launch``."""
    import os

    from accelerate import Accelerator

    if device == "cuda":
        # cuBLAS needs this to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return Accelerator(cpu=device == "cpu", mixed_precision=precision)


@contextlib.contextmanager
def deterministic(strict: bool = False) -> Iterator[None]:
    """Deterministic kernels for the duration of a run, restoring the caller's setting after.

    ``strict`` (used on GPUs) makes an op without a deterministic kernel an error
    instead of a warning; it is also what makes cuDNN's attention backward pick
    its deterministic algorithm, which warn-only mode leaves non-deterministic.
    """
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# -- checkpoints -------------------------------------------------------------------------

def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / CHECKPOINT


def _optimizer_state(optimizer: Any) -> dict[str, Any]:
    from persona.train.apollo import strip_projectors

    return strip_projectors(optimizer.state_dict())


def save_checkpoint(path: Path, run_key: str, step: int, named: Sequence[tuple[str, Any]], optimizer: Any,
                    outcome: LoopOutcome, seconds: float, best: tuple[int, dict[str, Any]] | None = None) -> None:
    import torch

    state = {
        "format": CHECKPOINT_FORMAT, "run_key": run_key, "step": step,
        "params": {name: p.detach().to("cpu").clone() for name, p in named},
        "optimizer": _optimizer_state(optimizer),
        "rng_cpu": torch.get_rng_state(),
        "losses": list(outcome.losses), "tokens": outcome.tokens, "seconds": seconds,
        "validation": [[int(a), float(b)] for a, b in outcome.validation],
    }
    if best is not None:
        state["best_step"], state["best_params"] = best[0], best[1]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, run_key: str) -> dict[str, Any] | None:
    """The checkpoint's state, or None when there is none for this run."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: pickle, zip or torch errors
        raise PersonaError(f"cannot read training checkpoint {path}: {exc}",
                           "delete it and run without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("run_key") != run_key:
        raise PersonaError(f"training checkpoint {path} belongs to another run", "delete it and run without --resume")
    return state


def clear_checkpoint(directory: Path) -> None:
    """Remove a finished run's checkpoint folder (it is only a cache)."""
    path = checkpoint_path(directory)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        Path(directory).rmdir()


# -- the loop ----------------------------------------------------------------------------

def make_optimizer(named: Sequence[tuple[str, Any]], settings: LoopSettings) -> Any:
    """AdamW, or APOLLO (``apollo-torch``) with its projected scaling on every matrix."""
    import torch

    params = [p for _, p in named]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "apollo":
        from persona.train.apollo import apollo_optimizer

        return apollo_optimizer(named, settings.lr, settings.weight_decay)
    raise InvalidInput(f"unknown --optimizer {settings.optimizer!r}", "use adamw or apollo")


def run(accelerator: Any, model: Any, weights: Sequence[int], lengths: Sequence[int],
        collate: Callable[[list[int]], Batch], loss_fn: LossFn, settings: LoopSettings,
        on_step: Callable[[StepReport], None] | None = None,
        validate: Callable[[Any], float] | None = None) -> LoopOutcome:
    """Train ``model``'s trainable parameters for ``settings.steps`` steps.

    ``weights[i]`` is example i's number of target tokens (the loss's
    denominator), ``lengths[i]`` its token count (for throughput).

    ``validate(model) -> loss`` (held-out data, lower is better) runs before
    the first step, every ``settings.eval_every`` steps and after the last;
    the weights with the lowest held-out loss are the ones the run ends with
    (early stopping by checkpoint choice, never by the training loss). Its
    history and the best weights so far are part of every checkpoint, so a
    resumed run chooses exactly as an uninterrupted one.
    """
    import torch

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise PersonaError("the model has no trainable parameters", "this is a bug in persona")
    model.to(accelerator.device)
    optimizer = make_optimizer(named, settings)
    outcome = LoopOutcome()
    start, seconds_before = 0, 0.0
    best: tuple[int, dict[str, Any]] | None = None
    best_loss = math.inf
    path = checkpoint_path(settings.checkpoint_dir)
    state = load_checkpoint(path, settings.run_key) if settings.resume else None
    if state is not None:
        start = int(state["step"])
        if start > settings.steps:
            raise PersonaError(f"checkpoint {path} is at step {start}, past this run's {settings.steps} steps",
                               "delete it and run without --resume")
        with torch.no_grad():
            for name, p in named:
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        outcome.losses = [float(x) for x in state["losses"]]
        outcome.tokens = int(state["tokens"])
        outcome.validation = [(int(a), float(b)) for a, b in state.get("validation", [])]
        if "best_step" in state:
            best = (int(state["best_step"]), dict(state["best_params"]))
            best_loss = min((v for a, v in outcome.validation if a == best[0]), default=math.inf)
        seconds_before = float(state["seconds"])
        outcome.resumed_from = start
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    params = [p for _, p in named]
    began = time.perf_counter()
    phase, completed, saved = "idle", start, start if state is not None else None

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - began

    def checkpoint(step: int) -> None:
        nonlocal saved
        if accelerator.is_main_process:
            save_checkpoint(path, settings.run_key, step, named, optimizer, outcome, elapsed(), best)
        saved = step

    def run_validation(step: int) -> float | None:
        nonlocal best, best_loss
        if validate is None:
            return None
        model.eval()
        try:
            with torch.no_grad():
                value = float(validate(model))
        finally:
            model.train()
        outcome.validation.append((step, value))
        if value < best_loss:
            best_loss = value
            best = (step, {name: p.detach().to("cpu").clone() for name, p in named})
        return value

    try:
        if validate is not None and start == 0 and not outcome.validation:
            run_validation(0)
        for step in range(start, settings.steps):
            indices = batch_at(step, len(weights), settings.batch_size, settings.seed)
            count = sum(weights[i] for i in indices)
            share = indices[rank::world]
            factor = world / count
            if not share:  # more processes than examples in this batch: join the all-reduce with zero
                share, factor = indices[:1], 0.0
            phase = "compute"
            batch = {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in collate(share).items()}
            loss_sum, _ = loss_fn(model, batch)
            accelerator.backward(loss_sum * factor)
            total_loss = accelerator.reduce(loss_sum.detach() * (factor != 0.0), reduction="sum")
            value = float(total_loss) / count
            if not math.isfinite(value):
                raise TrainingDiverged(f"the loss became {value} at step {step + 1}",
                                       "lower --lr, or check the data")
            if settings.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, settings.max_grad_norm)
            # Everything from here to phase = "idle" changes the state a checkpoint
            # records, so an interrupt in between must not checkpoint.
            phase = "optimizer"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            outcome.losses.append(value)
            outcome.tokens += sum(lengths[i] for i in indices)
            completed = step + 1
            phase = "idle"
            measured = None
            if validate is not None and (completed == settings.steps or
                                         (settings.eval_every > 0 and completed % settings.eval_every == 0)):
                phase = "validate"
                measured = run_validation(completed)
                phase = "idle"
            if settings.checkpoint_every > 0 and completed % settings.checkpoint_every == 0 \
                    and completed < settings.steps:
                checkpoint(completed)
            if on_step is not None:
                on_step(StepReport(completed, settings.steps, value, outcome.tokens, elapsed(), measured))
    except KeyboardInterrupt:
        if phase in ("idle", "compute") and completed > start and saved != completed:
            with contextlib.suppress(PersonaError):
                checkpoint(completed)
        outcome.seconds = elapsed()
        if saved is not None:
            hint = f"run the same command with --resume to continue from step {saved}"
        else:
            hint = "nothing was checkpointed yet; run the command again to start over"
        raise TrainingInterrupted(f"training interrupted after step {completed} of {settings.steps}; "
                                  "no vector was stored", hint, completed, outcome.losses, outcome.tokens,
                                  outcome.seconds) from None
    outcome.seconds = elapsed()
    if best is not None:
        outcome.best_step = best[0]
        if best[0] != settings.steps:
            with torch.no_grad():
                for name, p in named:
                    p.copy_(best[1][name].to(p.device))
    model.eval()
    return outcome
