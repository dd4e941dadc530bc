"""The verdict corpus: what each script is, what detrun should say about it, and how to run it.

Shared by benchmarks/verdict_corpus.py (the table) and tests/e2e/test_corpus_verdicts.py (the asserts).
The ground truth for "did the replay reproduce the run" is the script's own result lines (final
weights sha256 and final loss), which every corpus script prints to stdout.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CORPUS = Path(__file__).resolve().parent
PERTURB_ENV = "DETRUN_CORPUS_PERTURB_STEP"

REPRODUCED, DIVERGED, UNVERIFIED = "REPRODUCED", "DIVERGED", "UNVERIFIED"
UNVERIFIED_EXIT = 5  # detrun.errors.ExitCode.UNVERIFIED (not imported: the harness only runs the CLI)


@dataclass(frozen=True)
class Case:
    """One corpus script and the verdicts an honest detrun gives for it."""

    name: str
    style: str
    exercises: str
    perturb_step: int
    # True: detrun checks every optimizer step, so the perturbed replay must say "DIVERGED at step k".
    # False: only a final-state or output check can see it, so any DIVERGED at a step >= k (or none).
    per_step: bool = True
    # Verdicts an honest unperturbed replay may give; REPRODUCED is only honest when results match.
    replay_ok: tuple[str, ...] = (REPRODUCED,)
    perturbed_ok: tuple[str, ...] = (DIVERGED,)
    # Replay in the recording's own directory (what a user does) unless the script's results depend
    # on what an earlier run left there; then in a fresh directory holding only the trace.
    replay_in_record_dir: bool = True
    # Send Ctrl-C (SIGINT to the process group, as a terminal does) once stdout matches this.
    interrupt_on: str | None = None
    # Progress bars or durations on stdout: byte equality is not expected, only the rendered view.
    timing_on_stdout: bool = False
    slow: bool = False
    timeout: float = 240.0

    @property
    def path(self) -> Path:
        """Return the script's absolute path."""
        return CORPUS / f"{self.name}.py"


CASES: list[Case] = [
    Case("mnist_cnn", "pytorch/examples mnist",
         "Conv net, Adadelta + StepLR, DataLoader(shuffle=True), dropout, torch.save", 7),
    Case("manual_sgd", "PyTorch tutorial nn-module (hand SGD)",
         "DataLoader-fed loop, `param -= lr * grad`, no torch.optim: only a final-state digest sees it", 9,
         per_step=False),
    Case("hogwild_mnist", "pytorch/examples mnist_hogwild",
         "share_memory() model trained by 2 forked mp.Process children, lock-free", 5,
         per_step=False, replay_ok=(UNVERIFIED, REPRODUCED), perturbed_ok=(DIVERGED, UNVERIFIED)),
    Case("spawn_child_train", "launcher: train in a spawn child",
         "all training in a multiprocessing spawn child; parent loads the saved checkpoint", 5,
         per_step=False, replay_ok=(UNVERIFIED, REPRODUCED), perturbed_ok=(DIVERGED, UNVERIFIED)),
    Case("hf_trainer_bert", "HF Trainer (run_glue-style)",
         "transformers Trainer on a 2-layer BertConfig(hidden 32), clock seed, save_model() lists hf_final/",
         5),
    Case("lightning_autoencoder", "Lightning README LitAutoEncoder",
         "L.Trainer defaults: lightning_logs/ logger, ModelCheckpoint, progress bar on stdout", 10),
    Case("keras_mnist_convnet", "keras.io Simple MNIST convnet (TF)",
         "Keras 3 on TensorFlow, fit(verbose=1, validation_split), Dropout, callback perturbation", 5),
    Case("keras_torch_backend", "keras.io Simple MNIST convnet (torch)",
         "Keras 3 with KERAS_BACKEND=torch: Keras's own optimizer, no torch.optim step hook", 5,
         per_step=False),
    Case("tqdm_regression", "research-repo loop with tqdm",
         "tqdm(loader, file=sys.stdout) progress bar with postfix, AdamW", 11),
    Case("compile_mlp", "PyTorch torch.compile tutorial",
         "torch.compile (inductor, CPU) forward+backward, eager SGD; inductor cache listings", 8),
    Case("checkpoint_latest", "training template: save + resume latest",
         "torch.save every epoch, glob/os.listdir to prune and pick the newest, resume if present", 12,
         # It resumes from whatever checkpoints/ holds, so a replay beside the recording resumes.
         replay_in_record_dir=False),
    Case("word_language_model", "pytorch/examples word_language_model",
         "2-layer LSTM LM, clip_grad_norm_, lr annealing, Ctrl-C caught: 'Exiting from training early'", 12,
         interrupt_on=r"\| updates (\d{3,}|[4-9]\d)$"),
    Case("gru_forecast", "sine-wave forecasting tutorial",
         "GRU, Adam, grad clipping, ReduceLROnPlateau, numpy-generated series, torch.randperm", 9),
    Case("text_embeddingbag", "PyTorch text classification tutorial",
         "EmbeddingBag with offsets, collate_fn, vocab from a set (hash seed), random.sample texts", 14),
    Case("numpy_mlp", "cs231n two-layer net from scratch",
         "NumPy only, hand-written backprop, np.random global RNG: no framework state to digest", 40,
         per_step=False, replay_ok=(REPRODUCED, UNVERIFIED)),
    Case("run_names_time_seed", "experiment template: clock seed + uuid4 run name",
         "seed=int(time.time()*1000) into random/np/torch, uuid4 + random.choice run name, runs/<name>/", 20),
]
# Marked slow for pytest: the heavy frameworks (each case well over 20 s: imports, compiling), and
# three plain-torch cases whose patterns the fast ones already cover, so that the fast subset
# (8 cases, five runs each) stays near 4 minutes on two cores.
SLOW_NAMES = {"hf_trainer_bert", "lightning_autoencoder", "keras_mnist_convnet", "keras_torch_backend",
              "compile_mlp", "gru_forecast", "text_embeddingbag", "run_names_time_seed"}
TIMING_NAMES = {"hf_trainer_bert", "lightning_autoencoder", "keras_mnist_convnet", "keras_torch_backend",
                "tqdm_regression"}
CASES = [Case(**{**asdict(case), "slow": case.name in SLOW_NAMES, "timing_on_stdout": case.name in TIMING_NAMES})
         for case in CASES]
BY_NAME = {case.name: case for case in CASES}

RESULT_LINE = re.compile(r"^(final loss|weights sha256|eval loss|updates) ")
VERDICT_LINE = re.compile(r"^detrun: (REPRODUCED|DIVERGED|UNVERIFIED)\b(?: at step (\d+))?")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Durations and rates: what a rerun of identical work is allowed to change on stdout.
DURATION = re.compile(
    r"\d+(\.\d+)?\s*(ms|us|µs|s)/(step|it)|\d+(\.\d+)?\s*(it/s|s/it)|\b\d+(\.\d+)?(ms|us|s)\b"
    r"|\d+:\d\d(:\d\d)?|'(train|eval)_(runtime|samples_per_second|steps_per_second)': '[^']*'")
# Progress bars (tqdm, Keras, Lightning/rich): how many updates they print depends on timing, and
# off a terminal tqdm and Keras do not even overwrite them, so this oracle leaves them out.
PROGRESS_BAR = re.compile(r"\d+%\|[█▏▎▍▌▋▊▉ ]*\||━|\d+/\d+ \[[=>.]*\]")


def result_lines(stdout: str) -> list[str]:
    """Return the lines that state the run's results (weights digest, losses)."""
    return [line for line in stdout.splitlines() if RESULT_LINE.match(line)]


def rendered(stdout: str) -> list[str]:
    """Return stdout as a terminal would finally show it, without progress bars, durations masked.

    A rough oracle of the harness's own (the verdict's rule is detrun's business): the last `\r`
    segment of each line, ANSI codes stripped, progress-bar lines dropped, durations replaced.
    """
    lines = []
    for raw in stdout.split("\n"):
        line = ANSI.sub("", raw.rstrip("\r").split("\r")[-1])
        if PROGRESS_BAR.search(line):
            continue
        lines.append(DURATION.sub("<t>", line).rstrip())
    return lines


@dataclass
class Run:
    """One process run: its streams, status and, for replays, the verdict."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    interrupted: bool = False
    verdict: str | None = None
    verdict_line: str | None = None
    step: int | None = None

    def summary(self) -> dict[str, object]:
        """Return the JSON-friendly part (no full streams)."""
        return {"returncode": self.returncode, "seconds": round(self.seconds, 2), "interrupted": self.interrupted,
                "verdict": self.verdict, "verdict_line": self.verdict_line, "step": self.step,
                "results": result_lines(self.stdout), "stderr_tail": self.stderr[-2000:]}


def detrun_command() -> list[str]:
    """Return the `detrun` console script beside this interpreter (as a user would run it)."""
    beside = Path(sys.executable).with_name("detrun")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("detrun")
    return [found] if found else [sys.executable, "-m", "detrun"]


def run_process(argv: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 240.0,
                interrupt_on: str | None = None) -> Run:
    """Run argv in its own process group; send SIGINT to the group once stdout matches interrupt_on."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONHASHSEED", None)  # a plain run must get a random hash seed
    full_env.pop(PERTURB_ENV, None)
    full_env.update(env or {})
    start = time.monotonic()
    # A background job (nohup, `&`, some CI runners) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt; restore the default so Ctrl-C works as it does at a terminal.
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out: list[str] = []
    err: list[str] = []
    interrupted = threading.Event()
    pattern = re.compile(interrupt_on) if interrupt_on else None

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if pattern and not interrupted.is_set() and pattern.search(line.rstrip("\n")):
                interrupted.set()
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does

    def pump_stderr() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())

    threads = [threading.Thread(target=pump_stdout, daemon=True), threading.Thread(target=pump_stderr, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err.append(f"\n[corpus] killed after {timeout:.0f} s\n")
    for thread in threads:
        thread.join(timeout=10)
    run = Run(argv, proc.returncode, "".join(out), "".join(err), time.monotonic() - start, interrupted.is_set())
    for line in run.stderr.splitlines():
        match = VERDICT_LINE.match(line)
        if match:
            run.verdict, run.verdict_line = match.group(1), line
            run.step = int(match.group(2)) if match.group(2) else None
    return run


@dataclass
class Outcome:
    """Everything measured for one case, and what was wrong with the verdicts."""

    case: Case
    plain: list[Run] = field(default_factory=list)
    record: Run | None = None
    replay: Run | None = None
    perturbed: Run | None = None
    problems: list[str] = field(default_factory=list)
    false_verdicts: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def plain_differ(self) -> bool:
        """Whether the two plain runs gave different results."""
        return len(self.plain) == 2 and result_lines(self.plain[0].stdout) != result_lines(self.plain[1].stdout)

    @property
    def results_equal(self) -> bool:
        """Whether the replay's results equal the recording's (the ground truth)."""
        assert self.record and self.replay
        return bool(result_lines(self.record.stdout)) and \
            result_lines(self.record.stdout) == result_lines(self.replay.stdout)

    @property
    def stdout_identical(self) -> bool:
        """Whether the replay's stdout is byte-identical to the recording's."""
        assert self.record and self.replay
        return self.record.stdout == self.replay.stdout

    @property
    def rendered_identical(self) -> bool:
        """Whether stdout is identical as a terminal shows it, durations masked."""
        assert self.record and self.replay
        return rendered(self.record.stdout) == rendered(self.replay.stdout)

    def to_json(self) -> dict[str, object]:
        """Return the JSON record for this case."""
        data: dict[str, object] = {"case": asdict(self.case), "problems": self.problems,
                                   "false_verdicts": self.false_verdicts,
                                   "unexpected": self.unexpected, "plain_differ": self.plain_differ}
        data["plain"] = [run.summary() for run in self.plain]
        for name in ("record", "replay", "perturbed"):
            run = getattr(self, name)
            data[name] = run.summary() if run else None
        if self.record and self.replay:
            data.update(results_equal=self.results_equal, stdout_identical=self.stdout_identical,
                        rendered_identical=self.rendered_identical)
        return data


def judge(outcome: Outcome) -> None:
    """Fill in problems (the case did not behave as designed) and false verdicts (detrun was wrong)."""
    case, record, replay, perturbed = outcome.case, outcome.record, outcome.replay, outcome.perturbed
    if not outcome.plain_differ:
        outcome.problems.append("the two plain runs gave the same results")
    if record is None or replay is None or perturbed is None:
        return
    if record.returncode != 0:
        outcome.problems.append(f"record exited {record.returncode}")
    if case.interrupt_on and not (record.interrupted and "Exiting from training early" in record.stdout):
        outcome.problems.append("the recording was never interrupted")
    if replay.verdict is None:
        outcome.false_verdicts.append("replay: no verdict line")
    elif replay.verdict == REPRODUCED and not outcome.results_equal:
        outcome.false_verdicts.append("replay: REPRODUCED but the results differ")
    elif replay.verdict == REPRODUCED and not outcome.rendered_identical:
        outcome.false_verdicts.append("replay: REPRODUCED but stdout differs (durations masked)")
    elif replay.verdict == DIVERGED and outcome.results_equal and outcome.rendered_identical:
        outcome.false_verdicts.append("replay: DIVERGED but results and stdout are identical")
    elif replay.verdict not in case.replay_ok:
        # Honest (the results did differ) but not what issue 17 asks for, e.g. a Ctrl-C not replayed.
        wrong = outcome.false_verdicts if outcome.results_equal else outcome.unexpected
        wrong.append(f"replay: {replay.verdict}, expected {'/'.join(case.replay_ok)}")
    if replay.verdict == UNVERIFIED and replay.returncode != UNVERIFIED_EXIT:
        outcome.false_verdicts.append(f"replay: UNVERIFIED but exit status {replay.returncode}, not {UNVERIFIED_EXIT}")
    if replay.verdict == DIVERGED and replay.returncode != 3:
        outcome.false_verdicts.append(f"replay: DIVERGED but exit status {replay.returncode}, not 3")
    perturbed_results = result_lines(perturbed.stdout)
    if perturbed_results == result_lines(record.stdout):
        outcome.problems.append("the perturbation did not change the results")
    if perturbed.verdict is None:
        outcome.false_verdicts.append("perturbed: no verdict line")
    elif perturbed.verdict == REPRODUCED:
        outcome.false_verdicts.append("perturbed: REPRODUCED although the weights were changed")
    elif perturbed.verdict not in case.perturbed_ok:
        outcome.false_verdicts.append(f"perturbed: {perturbed.verdict}, expected {'/'.join(case.perturbed_ok)}")
    elif perturbed.verdict == DIVERGED:
        if case.per_step and perturbed.step != case.perturb_step:
            outcome.false_verdicts.append(f"perturbed: DIVERGED at step {perturbed.step}, expected {case.perturb_step}")
        elif not case.per_step and perturbed.step is not None and perturbed.step < case.perturb_step:
            outcome.false_verdicts.append(f"perturbed: DIVERGED at step {perturbed.step}, before {case.perturb_step}")
    if perturbed.verdict == DIVERGED and perturbed.returncode != 3:
        outcome.false_verdicts.append(f"perturbed: DIVERGED but exit status {perturbed.returncode}, not 3")
    if perturbed.verdict == UNVERIFIED and perturbed.returncode != UNVERIFIED_EXIT:
        outcome.false_verdicts.append(
            f"perturbed: UNVERIFIED but exit status {perturbed.returncode}, not {UNVERIFIED_EXIT}")


def expected_text(case: Case) -> str:
    """Return the expected verdicts in a few words."""
    perturbed = f"DIVERGED at step {case.perturb_step}" if case.per_step else f"DIVERGED (step ≥ {case.perturb_step})"
    if UNVERIFIED in case.perturbed_ok:
        perturbed += " or UNVERIFIED"
    return f"{'/'.join(case.replay_ok)}; {perturbed}"


def run_case(case: Case, base: Path | None = None, *, log: object = None) -> Outcome:
    """Run one case end to end: two plain runs, record, replay, perturbed replay, each in its own dir."""
    outcome = Outcome(case)
    root = Path(tempfile.mkdtemp(prefix=f"corpus-{case.name}-", dir=base))

    def note(what: str, run: Run) -> None:
        if callable(log):
            log(f"  {case.name} {what}: exit {run.returncode}, {run.seconds:.1f} s, {run.verdict_line or ''}")

    python, detrun = [sys.executable, str(case.path)], detrun_command()
    # torch.compile's on-disk cache: the recording starts cold and the replays find it warm, as a
    # user's first recording and later replays do (a cold and a warm cache take other code paths).
    compiler_cache = {"TORCHINDUCTOR_CACHE_DIR": str(root / "compiler-cache")}
    for i in (1, 2):
        cwd = root / f"plain{i}"
        cwd.mkdir()
        outcome.plain.append(run_process(python, cwd, timeout=case.timeout, interrupt_on=case.interrupt_on,
                                         env={"TORCHINDUCTOR_CACHE_DIR": str(root / "compiler-cache-plain")}))
        note(f"plain {i}", outcome.plain[-1])
    record_dir = root / "record"
    record_dir.mkdir()
    # Every step digested: a per-step case must name the perturbed step itself (the default cadence
    # names the next step, whose loss is the first to differ; tests/e2e/test_record_replay.py).
    outcome.record = run_process([*detrun, "record", "-q", "--digest-every", "1", str(case.path)], record_dir,
                                 timeout=case.timeout,
                                 interrupt_on=case.interrupt_on, env=compiler_cache)
    note("record", outcome.record)
    trace = record_dir / "trace.zst"
    if not trace.exists():
        outcome.problems.append("no trace was written")
        judge(outcome)
        return outcome

    def replay_dir(name: str) -> Path:
        if case.replay_in_record_dir:
            return record_dir
        fresh = root / name
        fresh.mkdir()
        shutil.copy(trace, fresh / "trace.zst")
        return fresh

    # The user pressed Ctrl-C during the recording only: replay must stop where the recording did.
    outcome.replay = run_process([*detrun, "replay", "trace.zst", str(case.path)], replay_dir("replay"),
                                 timeout=case.timeout, env=compiler_cache)
    note("replay", outcome.replay)
    outcome.perturbed = run_process([*detrun, "replay", "trace.zst", str(case.path)], replay_dir("perturbed"),
                                    env={PERTURB_ENV: str(case.perturb_step), **compiler_cache}, timeout=case.timeout)
    note("perturbed", outcome.perturbed)
    judge(outcome)
    shutil.rmtree(root, ignore_errors=True)
    return outcome
