"""Training verbs: ``train_sft``, ``train_distill``, ``test_vector``. They return dataclasses, never print.

Order of work, so a mistake costs nothing: every input (name, options, data,
prompt and section, prompts, base) is validated before a model is loaded; the
LoRA targets are checked against the loaded model before any training (or
teacher generation); the vector is stored only once training has finished, and
its name last. A failed or interrupted run leaves the store's refs untouched and
records a ``TrainingRunRow`` saying so.

Identity. The vector's provenance holds only deterministic facts (data sha256,
every hyper-parameter, seed, objective, the distilled section and prompt
digests), so the same data, options and seed give the same vector id on the
same machine; loss curves, wall time, throughput and library versions go in
the run's database row. The run key (sha256 of the base id and the provenance)
names the checkpoint folder under ``repo.cache_dir("train")``, which is how
``resume`` finds an interrupted run of the same command.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona import canonical
from persona.errors import Conflict, InvalidInput, PersonaError
from persona.porcelain.models import VectorInfo, default_base, show_vector, store_vector
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.refs import NAMESPACES, validate_name
from persona.train import loop
from persona.train.data import (
    Encoded,
    encode_all,
    load_chat_data,
)
from persona.train.lora import LoraSettings
from persona.train.probe_test import Answer, ProbeOutcome

#: Defaults of ``persona train --data`` (distillation has its own, see persona.train.distillation).
SFT_LR = 2e-4
SFT_BATCH_SIZE = 4


@dataclass(frozen=True)
class ProgressEvent:
    """``phase``: teacher (generating answers), teacher-logits, train, probes."""

    phase: str
    done: int
    total: int
    loss: float | None = None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class TrainOptions:
    lora: LoraSettings = field(default_factory=LoraSettings)
    epochs: float | None = None
    steps: int | None = None
    lr: float | None = None  # None: the verb's default (see with_defaults)
    batch_size: int | None = None
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 50
    resume: bool = False
    optimizer: str = "adamw"
    eval_every: int = 0  # validate on held-out data every N steps (distillation)

    def with_defaults(self, lr: float, batch_size: int, epochs: float | None = None,
                      steps: int | None = None) -> TrainOptions:
        """These options, with a verb's defaults where the user gave none (``--epochs`` or ``--steps``
        given by the user replaces both defaults)."""
        from dataclasses import replace

        length_given = self.epochs is not None or self.steps is not None
        return replace(self, lr=self.lr if self.lr is not None else lr,
                       batch_size=self.batch_size if self.batch_size is not None else batch_size,
                       epochs=self.epochs if length_given else epochs,
                       steps=self.steps if length_given else steps)

    def validate(self) -> None:
        self.lora.validate()
        if self.epochs is not None and self.steps is not None:
            raise InvalidInput("give --epochs or --steps, not both", "e.g. --steps 100")
        if self.steps is not None and self.steps < 1:
            raise InvalidInput(f"--steps must be at least 1, got {self.steps}", "e.g. --steps 100")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise InvalidInput(f"--epochs must be positive, got {self.epochs}", "e.g. --epochs 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"--lr must be positive, got {self.lr}", "e.g. --lr 2e-4")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidInput(f"--batch-size must be at least 1, got {self.batch_size}", "e.g. --batch-size 4")
        if self.max_length < 2:
            raise InvalidInput(f"--max-length must be at least 2, got {self.max_length}", "e.g. --max-length 512")
        if self.seed < 0:
            raise InvalidInput(f"--seed must be non-negative, got {self.seed}", "e.g. --seed 0")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise InvalidInput("weight decay and gradient clipping must be non-negative", "e.g. 0 and 1.0")
        if self.checkpoint_every < 0:
            raise InvalidInput(f"--checkpoint-every must be non-negative, got {self.checkpoint_every}",
                               "0 turns periodic checkpoints off")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInput(f"unknown --device {self.device!r}", "use cpu, cuda or auto")
        if self.optimizer not in ("adamw", "apollo"):
            raise InvalidInput(f"unknown --optimizer {self.optimizer!r}", "use adamw or apollo")
        if self.optimizer == "apollo":
            from persona.train.apollo import require_apollo

            require_apollo()  # before any model is loaded
        if self.eval_every < 0:
            raise InvalidInput(f"--eval-every must be non-negative, got {self.eval_every}", "e.g. --eval-every 10")

    def hyperparameters(self, steps: int, precision: str) -> dict[str, Any]:
        """Every setting that changes the result (and nothing that does not)."""
        return {**self.lora.to_json(), "epochs": self.epochs, "steps": steps, "lr": self.lr,
                "batch_size": self.batch_size, "max_length": self.max_length, "seed": self.seed,
                "optimizer": self.optimizer, "weight_decay": self.weight_decay,
                "max_grad_norm": self.max_grad_norm, "schedule": "constant", "mixed_precision": precision,
                **({"eval_every": self.eval_every} if self.eval_every else {})}


@dataclass
class TrainResult:
    name: str
    id: str | None  # None on the non-main processes of a multi-GPU run
    base: str
    objective: str
    steps: int
    examples: int
    truncated: int
    losses: list[float]
    tokens: int
    seconds: float
    device: str
    resumed_from: int | None
    run_key: str
    vector: VectorInfo | None = None
    teacher: list[dict[str, Any]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    validation_pass: list[tuple[int, int, int]] = field(default_factory=list)  # (step, passed, total)
    selected_step: int | None = None
    heldout: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None  # what a distillation chose: prompts, checks, teacher counts

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "vector"}
        data["tokens_per_second"] = round(self.tokens_per_second, 1)
        data["vector"] = self.vector.to_json() if self.vector else None
        return data


@dataclass
class VectorTestReport:
    vector: str
    id: str
    base: str
    alpha: float
    system: str  # "none", or the prompt file and the sections left out
    max_new_tokens: int
    probes: list[ProbeOutcome]

    @property
    def base_pass_rate(self) -> float:
        return sum(p.base.passed for p in self.probes) / len(self.probes)

    @property
    def vector_pass_rate(self) -> float:
        return sum(p.vector.passed for p in self.probes) / len(self.probes)

    def to_json(self) -> dict[str, Any]:
        return {"vector": self.vector, "id": self.id, "base": self.base, "alpha": self.alpha,
                "system": self.system, "max_new_tokens": self.max_new_tokens,
                "base_pass_rate": self.base_pass_rate, "vector_pass_rate": self.vector_pass_rate,
                "probes": [p.to_json() for p in self.probes]}


# -- shared steps ------------------------------------------------------------------------

def _check_name(repo: Repository, name: str, force: bool) -> None:
    """Refuse a taken name before training, not after minutes of it."""
    validate_name(name, "vector name")
    current = repo.refs.read_raw(f"{NAMESPACES['vector']}/{name}")
    if current is not None and not force:
        raise Conflict(f"a vector named {name!r} already exists ({current[:12]})",
                       "choose another name, or pass --force to point it at the new vector "
                       "(the old one stays in the reflog)")


def _versions(accelerator: Any, device: str) -> dict[str, Any]:
    import accelerate
    import peft
    import torch
    import transformers

    from persona import __version__

    return {"persona": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "device": device, "processes": accelerator.num_processes}


def _record(repo: Repository, name: str, status: str, vector_id: str | None, data_sha: str,
            hyper: dict[str, Any], losses: Sequence[float], seconds: float, versions: dict[str, Any]) -> None:
    from persona.db.models import TrainingRunRow

    row = TrainingRunRow(vector_id=vector_id, name=name, status=status, data_sha256=data_sha,
                         hyperparameters=hyper, losses=[float(x) for x in losses], wall_seconds=float(seconds),
                         versions=versions, created=time.time())
    repo.db.write(lambda session: session.add(row))


@dataclass
class _Run:
    """What a run shares between its preparation and its training."""

    repo: Repository
    name: str
    base_id: str
    options: TrainOptions
    force: bool
    progress: ProgressFn | None
    accelerator: Any = None
    device: str = "cpu"
    precision: str = "no"

    def emit(self, phase: str, done: int, total: int, loss: float | None = None) -> None:
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(ProgressEvent(phase, done, total, loss))


def _start(repo: Repository, name: str, base: str | None, options: TrainOptions, force: bool,
           progress: ProgressFn | None) -> _Run:
    from persona.cpu import configure_torch

    options.validate()
    _check_name(repo, name, force)
    run = _Run(repo, name, default_base(repo, base), options, force, progress)
    run.device = loop.resolve_device(options.device)
    run.precision = loop.resolve_precision(options.mixed_precision, run.device)
    configure_torch()
    return run


def _load_model(run: _Run) -> tuple[Any, Any, list[str]]:
    """The base, on the device the run trains on, and the checked LoRA target layers."""
    from persona.porcelain.materialise import load_causal_lm
    from persona.train.lora import check_targets

    run.accelerator = loop.make_accelerator(run.device, run.precision)
    model, tokenizer = load_causal_lm(run.repo, run.base_id, device=str(run.accelerator.device))
    tree = run.repo.get(run.repo.get(run.base_id, obj.Base).weights, obj.Tree)
    layers = check_targets(model, run.options.lora.target_modules, set(tree.entries))
    return model, tokenizer, layers


def _pad_id(tokenizer: Any) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


@dataclass
class TrainHooks:
    """What a verb adds to the shared training path.

    ``validate(model) -> held-out loss`` picks the checkpoint (see loop.run);
    ``report(model) -> dict`` runs on the trained model before it is stored and
    its result goes into the vector's provenance (``heldout``) and the result;
    ``loss_fn`` replaces the objective's default loss.
    """

    validate: Callable[[Any], float] | None = None
    report: Callable[[Any], dict[str, Any]] | None = None
    loss_fn: Any = None


def _train_and_store(run: _Run, model: Any, tokenizer: Any, layers: list[str], encoded: list[Encoded],
                     objective: str, data_sha: str, extra_provenance: dict[str, Any],
                     teacher: dict[str, list[Any]] | None = None, hooks: TrainHooks | None = None) -> TrainResult:
    import torch

    from persona.store.tensors import put_tensor
    from persona.train import lora
    from persona.train.distill import kl_loss
    from persona.train.objectives import collate, sft_loss, target_counts, token_count

    options, repo = run.options, run.repo
    steps = loop.total_steps(len(encoded), options.batch_size, options.epochs, options.steps)
    hyper = options.hyperparameters(steps, run.precision)
    provenance = {"source": "train", "objective": objective, "data_sha256": data_sha,
                  "examples": len(encoded), "hyperparameters": hyper, **extra_provenance}
    run_key = hashlib.sha256(canonical.dumps({"base": run.base_id, "provenance": provenance})).hexdigest()
    checkpoint_dir = repo.cache_dir("train") / run_key[:32]
    versions = _versions(run.accelerator, run.device)
    row_hyper = {**hyper, "objective": objective}
    pad = _pad_id(tokenizer)

    def make_batch(indices: list[int]) -> dict[str, Any]:
        extra = {key: [parts[i] for i in indices] for key, parts in (teacher or {}).items()}
        return collate([encoded[i] for i in indices], pad, extra)

    settings = loop.LoopSettings(
        steps=steps, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
        checkpoint_dir=checkpoint_dir, run_key=run_key, weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm, checkpoint_every=options.checkpoint_every, resume=options.resume,
        eval_every=options.eval_every, optimizer=options.optimizer)
    hooks = hooks or TrainHooks()
    loss_fn = hooks.loss_fn or (kl_loss if teacher else sft_loss)
    main = run.accelerator.is_main_process
    with loop.deterministic(strict=run.device == "cuda"):
        peft_model = lora.attach(model, options.lora, layers, options.seed)
        try:
            outcome = loop.run(run.accelerator, peft_model, target_counts(encoded), token_count(encoded),
                               make_batch, loss_fn, settings,
                               on_step=lambda r: run.emit("train", r.step, r.total, r.loss),
                               validate=hooks.validate)
        except loop.TrainingInterrupted as exc:
            if main:
                _record(repo, run.name, "interrupted", None, data_sha, row_hyper, exc.losses, exc.seconds, versions)
            raise
        except BaseException as exc:
            if main:
                _record(repo, run.name, "failed", None, data_sha, row_hyper, [], 0.0, versions)
            if isinstance(exc, RuntimeError) and "deterministic" in str(exc):
                raise PersonaError(f"training needs an operation with no deterministic kernel here: {exc}",
                                   "train with --device cpu, where such operations only warn") from exc
            raise
    run.accelerator.wait_for_everyone()
    vector_id: str | None = None
    info: VectorInfo | None = None
    heldout: dict[str, Any] | None = None
    if main:
        stored = dict(provenance)
        if outcome.best_step is not None:
            stored["selected_step"] = outcome.best_step
        if hooks.report is not None:
            heldout = hooks.report(run.accelerator.unwrap_model(peft_model))
            stored["heldout"] = heldout
        tree = repo.get(repo.get(run.base_id, obj.Base).weights, obj.Tree)
        refs: dict[str, obj.LoraFactorRef] = {}
        for tensor_name, factor in sorted(lora.extract(run.accelerator.unwrap_model(peft_model)).items()):
            entry = tree.entries.get(tensor_name)
            shape = (factor.B.shape[0], factor.A.shape[1])
            if entry is None or tuple(entry.shape) != shape:
                raise PersonaError(f"trained factors for {tensor_name} do not fit the base", "this is a bug in persona")
            if not (torch.isfinite(factor.A).all() and torch.isfinite(factor.B).all()):
                raise PersonaError(f"trained factors for {tensor_name} are not finite", "lower --lr")
            refs[tensor_name] = obj.LoraFactorRef(put_tensor(repo.objects, factor.A),
                                                  put_tensor(repo.objects, factor.B), factor.scale)
        vector = obj.Vector("lora", run.base_id, {}, refs, stored)
        vector_id = store_vector(repo, run.name, vector, run.force, f"train {objective}: {run.name}").id
        _record(repo, run.name, "completed", vector_id, data_sha, row_hyper, outcome.losses, outcome.seconds,
                versions)
        loop.clear_checkpoint(checkpoint_dir)
        info = show_vector(repo, run.name)
    run.accelerator.wait_for_everyone()
    return TrainResult(run.name, vector_id, run.base_id, objective, steps, len(encoded),
                       sum(e.truncated for e in encoded), outcome.losses, outcome.tokens, outcome.seconds,
                       run.device, outcome.resumed_from, run_key, info, validation=outcome.validation,
                       selected_step=outcome.best_step, heldout=heldout)


# -- verbs -------------------------------------------------------------------------------

def train_sft(repo: Repository, name: str, data: Path | str, base: str | None = None,
              options: TrainOptions | None = None, force: bool = False,
              progress: ProgressFn | None = None) -> TrainResult:
    """LoRA on chat data (JSONL, sessions or a directory of them), loss on assistant tokens."""
    options = (options or TrainOptions()).with_defaults(lr=SFT_LR, batch_size=SFT_BATCH_SIZE)
    run = _start(repo, name, base, options, force, progress)
    chat = load_chat_data(data)
    model, tokenizer, layers = _load_model(run)
    encoded = encode_all(tokenizer, chat.examples, options.max_length)
    return _train_and_store(run, model, tokenizer, layers, encoded, "sft", chat.sha256, {})


def test_vector(repo: Repository, name: str, probes: Path | str, prompt: Path | str | None = None,
                without: Sequence[str] = (), max_new_tokens: int = 64, alpha: float = 1.0,
                device: str = "auto", progress: ProgressFn | None = None) -> VectorTestReport:
    """Pass rates of a probe file on the base alone and on base + alpha * vector."""
    from persona.aer.probes import load_probes
    from persona.aer.runner import TransformersRunner
    from persona.aer.sections import load_prompt
    from persona.porcelain.materialise import load_causal_lm
    from persona.train.probe_test import answer_probes, apply_vector

    if max_new_tokens < 1:
        raise InvalidInput(f"--max-new-tokens must be at least 1, got {max_new_tokens}", "e.g. --max-new-tokens 64")
    if not math.isfinite(alpha):
        raise InvalidInput(f"--alpha must be a finite number, got {alpha}", "e.g. --alpha 1.0")
    vector_id = repo.vector_id(name)
    vector = repo.get(vector_id, obj.Vector)
    system: str | None = None
    described = "none"
    if prompt is not None:
        doc = load_prompt(prompt)
        system = doc.render_without(without)
        described = f"{prompt}" + (f" without {', '.join(without)}" if without else "")
        probe_list = load_probes(probes, doc.names)
    else:
        if without:
            raise InvalidInput("--without needs --prompt", "e.g. --prompt SOUL.md --without identity")
        probe_list = load_probes(probes)
    model, tokenizer = load_causal_lm(repo, vector.base, device=loop.resolve_device(device))
    runner = TransformersRunner(model, tokenizer, model_id=vector.base)
    total = 2 * len(probe_list)
    done = 0

    def tick(step: int) -> None:
        nonlocal done
        done += step
        if progress is not None:
            progress(ProgressEvent("probes", done, total))

    base_answers = answer_probes(runner, probe_list, system, max_new_tokens, tick)
    apply_vector(model, repo, vector, alpha)
    runner = TransformersRunner(model, tokenizer, model_id=f"{vector.base}+{alpha}*{vector_id}")
    vector_answers = answer_probes(runner, probe_list, system, max_new_tokens, tick)
    outcomes = [ProbeOutcome(p.id, p.section, b, v) for p, b, v in zip(probe_list, base_answers, vector_answers,
                                                                      strict=True)]
    names = [n for n, v in repo.refs.list("vector").items() if v == vector_id]
    return VectorTestReport(names[0] if names else name, vector_id, vector.base, alpha, described,
                            max_new_tokens, outcomes)


test_vector.__test__ = False  # type: ignore[attr-defined]  # a verb, not a pytest test

def train_distill(*args: Any, **kwargs: Any) -> TrainResult:
    """Context distillation of a prompt section (see persona.train.distillation)."""
    from persona.train.distillation import train_distill as run_distillation

    return run_distillation(*args, **kwargs)


__all__ = ["Answer", "ProgressEvent", "TrainHooks", "TrainOptions", "TrainResult", "VectorTestReport",
           "test_vector", "train_distill", "train_sft"]
