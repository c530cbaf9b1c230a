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
import re
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
    Example,
    encode_all,
    load_chat_data,
    load_prompts,
    require_chat_template,
)
from persona.train.lora import LoraSettings
from persona.train.probe_test import Answer, ProbeOutcome

OBJECTIVES = ("sft", "kl")


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
    lr: float = 2e-4
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 50
    resume: bool = False

    def validate(self) -> None:
        self.lora.validate()
        if self.epochs is not None and self.steps is not None:
            raise InvalidInput("give --epochs or --steps, not both", "e.g. --steps 100")
        if self.steps is not None and self.steps < 1:
            raise InvalidInput(f"--steps must be at least 1, got {self.steps}", "e.g. --steps 100")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise InvalidInput(f"--epochs must be positive, got {self.epochs}", "e.g. --epochs 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"--lr must be positive, got {self.lr}", "e.g. --lr 2e-4")
        if self.batch_size < 1:
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

    def hyperparameters(self, steps: int, precision: str) -> dict[str, Any]:
        """Every setting that changes the result (and nothing that does not)."""
        return {**self.lora.to_json(), "epochs": self.epochs, "steps": steps, "lr": self.lr,
                "batch_size": self.batch_size, "max_length": self.max_length, "seed": self.seed,
                "optimizer": "adamw", "weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm,
                "schedule": "constant", "mixed_precision": precision}


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
    options.validate()
    _check_name(repo, name, force)
    run = _Run(repo, name, default_base(repo, base), options, force, progress)
    run.device = loop.resolve_device(options.device)
    run.precision = loop.resolve_precision(options.mixed_precision, run.device)
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


def _train_and_store(run: _Run, model: Any, tokenizer: Any, layers: list[str], encoded: list[Encoded],
                     objective: str, data_sha: str, extra_provenance: dict[str, Any],
                     teacher: dict[str, list[Any]] | None = None) -> TrainResult:
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
        max_grad_norm=options.max_grad_norm, checkpoint_every=options.checkpoint_every, resume=options.resume)
    main = run.accelerator.is_main_process
    with loop.deterministic(strict=run.device == "cuda"):
        peft_model = lora.attach(model, options.lora, layers, options.seed)
        try:
            outcome = loop.run(run.accelerator, peft_model, target_counts(encoded), token_count(encoded),
                               make_batch, kl_loss if teacher else sft_loss, settings,
                               on_step=lambda r: run.emit("train", r.step, r.total, r.loss))
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
    if main:
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
        vector = obj.Vector("lora", run.base_id, {}, refs, provenance)
        vector_id = store_vector(repo, run.name, vector, run.force, f"train {objective}: {run.name}").id
        _record(repo, run.name, "completed", vector_id, data_sha, row_hyper, outcome.losses, outcome.seconds,
                versions)
        loop.clear_checkpoint(checkpoint_dir)
        info = show_vector(repo, run.name)
    run.accelerator.wait_for_everyone()
    return TrainResult(run.name, vector_id, run.base_id, objective, steps, len(encoded),
                       sum(e.truncated for e in encoded), outcome.losses, outcome.tokens, outcome.seconds,
                       run.device, outcome.resumed_from, run_key, info)


# -- verbs -------------------------------------------------------------------------------

def train_sft(repo: Repository, name: str, data: Path | str, base: str | None = None,
              options: TrainOptions | None = None, force: bool = False,
              progress: ProgressFn | None = None) -> TrainResult:
    """LoRA on chat data (JSONL, sessions or a directory of them), loss on assistant tokens."""
    options = options or TrainOptions()
    run = _start(repo, name, base, options, force, progress)
    chat = load_chat_data(data)
    model, tokenizer, layers = _load_model(run)
    encoded = encode_all(tokenizer, chat.examples, options.max_length)
    return _train_and_store(run, model, tokenizer, layers, encoded, "sft", chat.sha256, {})


def train_distill(repo: Repository, name: str, prompt: Path | str, section: str, prompts: Path | str,
                  objective: str = "sft", teacher_max_new_tokens: int = 128, top_k: int = 64,
                  base: str | None = None, options: TrainOptions | None = None, force: bool = False,
                  progress: ProgressFn | None = None, keep_if: str | None = None) -> TrainResult:
    """Context distillation of one prompt section into a LoRA vector (see persona.train.distill).

    ``keep_if`` (a case-insensitive regex) keeps only the teacher answers that
    match it: a small teacher follows its prompt only sometimes (SmolLM2-135M
    with "Your name is Timmy" answers "I'm Emily" to one question in twelve),
    and distilling its misses would teach them too. Filtering the teacher's
    samples by a check is rejection sampling, as in filtered context distillation.
    """
    from persona.aer.sections import load_prompt
    from persona.aer.tokens import build_messages
    from persona.train.distill import target_ids, teacher_answers, teacher_topk

    options = options or TrainOptions()
    if objective not in OBJECTIVES:
        raise InvalidInput(f"unknown --objective {objective!r}", "use sft or kl")
    if teacher_max_new_tokens < 1:
        raise InvalidInput(f"--teacher-max-new-tokens must be at least 1, got {teacher_max_new_tokens}",
                           "e.g. --teacher-max-new-tokens 128")
    if top_k < 1:
        raise InvalidInput(f"--top-k must be at least 1, got {top_k}", "e.g. --top-k 64")
    keep = _compile_keep_if(keep_if)
    run = _start(repo, name, base, options, force, progress)
    doc = load_prompt(prompt)
    doc.section(section)  # NotFound, listing the sections, when it is not there
    student_system = doc.render_without([section])
    questions, prompts_sha = load_prompts(prompts)
    model, tokenizer, layers = _load_model(run)
    require_chat_template(tokenizer)
    # The main process generates (and caches); the others then read the cache.
    answers = []
    for turn in (0, 1):
        if (turn == 0) == run.accelerator.is_main_process:
            answers = teacher_answers(repo, model, tokenizer, run.base_id, doc.text, questions,
                                      teacher_max_new_tokens, str(prompts),
                                      lambda d, t: run.emit("teacher", d, t))
        run.accelerator.wait_for_everyone()
    all_answers = answers
    if keep is not None:
        answers = [a for a in all_answers if keep.search(a.answer)]
        if not answers:
            raise InvalidInput(f"none of the teacher's {len(all_answers)} answers matches --keep-if {keep_if!r}",
                               "loosen the pattern, add questions, or raise --teacher-max-new-tokens")

    def example(system: str, a: Any) -> Example:
        turns = [{"role": "user", "content": a.question}, {"role": "assistant", "content": a.answer}]
        return Example(tuple(build_messages(system, turns)), f"{prompts}:{a.line}", open_end=not a.finished)

    encoded = encode_all(tokenizer, [example(student_system, a) for a in answers], options.max_length)
    extra = {"distill": {"section": section, "prompt_sha256": hashlib.sha256(doc.text.encode()).hexdigest(),
                         "prompts_sha256": prompts_sha, "teacher_max_new_tokens": teacher_max_new_tokens}}
    if keep is not None:
        extra["distill"].update({"keep_if": keep_if, "kept": len(answers), "answers": len(all_answers)})
    teacher = None
    if objective == "kl":
        extra["distill"]["top_k"] = top_k
        full = encode_all(tokenizer, [example(doc.text, a) for a in answers], max_length=1 << 30)
        indices, logps = [], []
        for done, (student, reference) in enumerate(zip(encoded, full, strict=True), start=1):
            wanted = target_ids(student)
            if target_ids(reference)[: len(wanted)] != wanted:
                raise PersonaError(f"{student.source}: the teacher and the student tokenise the answer "
                                   "differently", "use --objective sft with this base")
            idx, logp = teacher_topk(repo, model, run.base_id, reference, len(wanted), top_k)
            indices.append(idx)
            logps.append(logp)
            run.emit("teacher-logits", done, len(encoded))
        teacher = {"teacher_indices": indices, "teacher_logp": logps}
    result = _train_and_store(run, model, tokenizer, layers, encoded, f"distill-{objective}", prompts_sha,
                              extra, teacher)
    kept = {id(a) for a in answers}
    result.teacher = [{"line": a.line, "question": a.question, "answer": a.answer, "finished": a.finished,
                       "kept": id(a) in kept} for a in all_answers]
    return result


def _compile_keep_if(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidInput(f"--keep-if {pattern!r} is not a valid regex: {exc}", "e.g. --keep-if timmy") from exc


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

__all__ = ["Answer", "ProgressEvent", "TrainOptions", "TrainResult", "VectorTestReport", "test_vector",
           "train_distill", "train_sft"]
