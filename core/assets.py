"""The built-in SynthFace assets (tiny base model, judges, domain encoder, identity adapter, instruction models, face understanding models): where they are, whether they are
present, and how to rebuild a missing one with FaceSmith's own trainers (``facesmith assets --build``)."""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .synthface.base_model import BASE_DIR, BUILTIN_MODELS

log = logging.getLogger("facesmith")

JUDGES_DIR = BUILTIN_MODELS / "facesmith" / "judges"
ENCODER_DIR = BUILTIN_MODELS / "facesmith"
IDENTITY_DIR = BUILTIN_MODELS / "facesmith" / "identity"
ADAPTER_TRAINING = ["--identities", "2400", "--views", "5", "--batch-size", "16",
                    "--pool-cache", ".cache/train-identity/pool-2400x5.safetensors"]
ADAPTER_WORDS = ["--identity-p", "0.7"]
UNDERSTAND_DIR = BUILTIN_MODELS / "facesmith" / "understand"
INSTRUCT_DIR = BUILTIN_MODELS / "facesmith" / "instruct"
LOG_DIR = Path(".cache") / "assets-build"
INSTRUCT_TRAINING = ["--per-task", "10000", "--batch-size", "128", "--seed", "0", "--workers", "0", "--pool-cache",
                     ".cache/train-instruct/pool-10000.safetensors"]
INSTRUCT_CONTINUATION = ["--per-task", "4000", "--batch-size", "128", "--seed", "1", "--pool-seed", "0", "--workers",
                         "0", "--pool-cache", ".cache/train-instruct/pool-4000.safetensors"]


@dataclass
class Asset:
    name: str
    what: str
    marker: Path            # the file whose presence means "built"
    build_steps: list[list[str]]   # `facesmith ...` commands (argument lists) that rebuild it, in order
    needs: tuple[str, ...] = ()    # assets its commands read (built first)

    @property
    def present(self) -> bool:
        return self.marker.exists()


def assets() -> list[Asset]:
    on_base = ("base", "face-encoder")  # trained on the base, with the face encoder's features or loss
    return [
        Asset("base", "tiny SynthFace text-to-image base model (diffusers folder)", BASE_DIR / "model_index.json",
              _base_steps()),
        Asset("judges", "identity recognizer + attribute classifier (+ ONNX for insightface)",
              JUDGES_DIR / "attributes.safetensors", [["train", "judges", "--out", str(JUDGES_DIR)]]),
        Asset("domain-encoder", "E4T domain encoder + domain LoRA for synthface-base",
              ENCODER_DIR / "e4t" / "synthface-e4t.safetensors",
              _e4t_steps(), ("base",)),
        Asset("face-encoder", "the identity adapter's own face recognizer (not the judge)",
              IDENTITY_DIR / "face-encoder.safetensors",
              [["train", "face-encoder", "--seed", "11", "--out", str(IDENTITY_DIR / "face-encoder.safetensors")]]),
        *[Asset(f"identity-adapter{suffix}", f"identity adapter (IDAdapter) for synthface-base{what}",
                IDENTITY_DIR / f"synthface-idadapter{suffix}.safetensors", _adapter_steps(suffix, extra), on_base)
          for suffix, extra, what in (("", [], ""), ("-no-mix", ["--no-mix"], ", ablation without mixed features"),
                                      ("-no-idloss", ["--id-weight", "0"], ", ablation without the identity loss"))],
        Asset("understand-moe", "unified face understanding model, grouped mixture of experts",
              UNDERSTAND_DIR / "synthface-unified-moe.safetensors", _understand_steps("moe")),
        Asset("understand-dense", "unified face understanding model, dense baseline (equal active parameters)",
              UNDERSTAND_DIR / "synthface-unified-dense.safetensors", _understand_steps("dense")),
        *[Asset(name.replace("synthface-", ""), f"instruction model (MIGE) for synthface-base{what}",
                INSTRUCT_DIR / f"{name}.safetensors", _instruct_steps(name, tasks, steps), on_base)
          for name, tasks, steps, what in (
              ("synthface-instruct", None, 2015, ", joint (all three tasks)"),
              ("synthface-instruct-instruction-edit", "instruction_edit", 2017, ", single-task: instruction edit"),
              ("synthface-instruct-subject-edit", "subject_edit", 1984, ", single-task: subject edit"),
              ("synthface-instruct-subject-generation", "subject_generation", 1927,
               ", single-task: subject generation"))],
    ]


def _instruct_steps(name: str, tasks: str | None, steps: int) -> list[list[str]]:
    """The commands that made one shipped instruction model (see assets/models/facesmith/instruct/README.md): one
    H200, the four trainings at once, each given 270 seconds (``--seconds 270``), which the trainer turned into the
    step counts recorded here; then the joint model continued on the same pool at twice the batch and half the
    learning rate (1,661 steps from ``--seconds 240``, another H200 job); then each of the four 200 more steps at
    that learning rate on stage 3 of the base (a 2-core CPU; a smaller pool of the same seed, new batches), the
    joint model 990 more on that pool (new batches) so that it has seen as many samples per task as each single-task
    model (the paper's comparison at equal budget), and all four on at equal samples per task (900 steps for the
    joint model, 300 for each single-task model). The shipped files' earlier stages ran on stage 2 of the base and
    the last continued them on stage 3 (``--rebase``); rebuilt here, all stages run on the shipped base. The four
    share their ``--pool-cache`` files."""
    path, task_args = str(INSTRUCT_DIR / f"{name}.safetensors"), (["--tasks", tasks] if tasks else [])

    def continued(args: list[str], steps: int, work: str, no_resume: bool = True) -> list[str]:
        return ["train", "instruct", *args, *task_args, "--steps", str(steps), "--lr", "5e-4", "--init-from", path,
                "--out", path, "--overwrite", *(["--no-resume"] if no_resume else []), "--work-dir",
                f".cache/train-instruct/{work}"]

    out = [["train", "instruct", *INSTRUCT_TRAINING, "--steps", str(steps), *task_args, "--out", path, "--work-dir",
            f".cache/train-instruct/{name}"]]
    if tasks is None:  # the joint model's continuation
        out.append(continued(_with_value(INSTRUCT_TRAINING, "--batch-size", 256), 1661, "synthface-instruct-more",
                             no_resume=False))
    out.append(continued(INSTRUCT_CONTINUATION, 200, f"{name}-stage3"))
    if tasks is None:  # the joint model brought to the single-task models' samples per task (same pool, new batches)
        out.append(continued(_with_value(INSTRUCT_CONTINUATION, "--seed", 2), 990, "synthface-instruct-equal"))
    # then all four on, at equal samples per task (the joint model three times the single-task models' steps)
    out.append(continued(_with_value(INSTRUCT_CONTINUATION, "--seed", 3), 900 if tasks is None else 300,
                         f"{name}-more3"))
    return out


def _with_value(args: list[str], flag: str, value) -> list[str]:
    """``args`` with the value after ``flag`` replaced (e.g. another ``--seed``: the same pool, other batches)."""
    return [(str(value) if prev == flag else a) for prev, a in zip(["", *args], args)]


def _understand_steps(arch: str) -> list[list[str]]:
    """The commands that made the shipped understanding models (see assets/models/facesmith/understand/README.md):
    1,200 steps, then 400 more from that file with a fresh schedule at half the learning rate, then three times 800
    more at a quarter (seeds 2, 3, 4: each a new pool of renders of the same train identities), then 1,334 more at
    four times the batch (seed 5; run on an H200, slow on a CPU)."""
    out = str(UNDERSTAND_DIR / f"synthface-unified-{arch}.safetensors")
    common = ["train", "face-vqa", "--arch", arch, "--stem", "residual", "--stem-width", "48", "--pool-identities",
              "8000", "--cache-dir", ".cache/train-face-vqa", "--out", out, "--overwrite", "--no-resume"]
    return [common + ["--seed", "0", "--steps", "1200", "--work-dir", f".cache/train-face-vqa/{arch}"],
            common + ["--seed", "1", "--steps", "400", "--lr", "1e-3", "--init-from", out, "--work-dir",
                      f".cache/train-face-vqa/{arch}-more"],
            *[common + ["--seed", str(stage - 1), "--steps", "800", "--lr", "5e-4", "--init-from", out, "--work-dir",
                        f".cache/train-face-vqa/{arch}-stage{stage}"] for stage in (3, 4, 5)],
            common + ["--seed", "5", "--steps", "1334", "--lr", "5e-4", "--batch-vqa", "192", "--batch-caption", "32",
                      "--batch-draw", "32", "--init-from", out, "--work-dir", f".cache/train-face-vqa/{arch}-stage6"]]


def _base_steps() -> list[list[str]]:
    """The three stages that made the shipped base (its facesmith_train.json): stages 1 and 2 on one H200 in bf16,
    stage 3 on a 2-core CPU in fp32 (1,216 steps from ``--unet-seconds 6300``)."""
    stage1, stage2 = ".cache/train-base/stage1-model", ".cache/train-base/stage2-model"
    common = ["train", "base", "--vae-steps", "1516", "--vae-batch", "64"]
    return [common + ["--precision", "bf16", "--out", stage1, "--work-dir", ".cache/train-base/stage1", "--pool",
                      "80000", "--unet-steps", "1309", "--unet-batch", "256"],
            common + ["--precision", "bf16", "--out", stage2, "--work-dir", ".cache/train-base/stage2", "--pool",
                      "60000", "--seed", "1", "--unet-steps", "908", "--unet-batch", "512", "--init-from", stage1],
            common + ["--out", str(BASE_DIR), "--work-dir", ".cache/train-base/stage3", "--pool", "60000", "--seed",
                      "2", "--unet-steps", "1216", "--unet-batch", "512", "--init-from", stage2]]


def _e4t_steps() -> list[list[str]]:
    """The command that made the shipped encoder (see assets/models/facesmith/e4t/README.md; a 2-core CPU, fp32)."""
    out = str(ENCODER_DIR / "e4t" / "synthface-e4t.safetensors")
    return [["train", "domain-encoder", "--synthface", "--base", "diffusers/synthface-base", "--identities", "3000",
             "--views", "4", "--batch-size", "64", "--lr", "2e-3", "--rank", "4", "--n-vectors", "4",
             "--same-p", "0.5", "--seed", "0", "--steps", "294", "--out", out,
             "--work-dir", ".cache/train-e4t/synthface-e4t"]]


def _adapter_steps(suffix: str, extra: list[str]) -> list[list[str]]:
    """The commands that made the shipped adapter (``suffix`` "") or one of its ablations (see
    assets/models/facesmith/identity/README.md): 600 steps; then 400 more from that file whose captions also name the
    visible identity traits in words (``--identity-p``); then twice 1,000 more of those with new batches
    (``--seed 2``, ``--seed 3``, same pool); then 500 more (``--seed 4``) on stage 3 of the base. The shipped file's
    first four stages ran on stage 2 of the base and the last continued it on stage 3 (``--rebase``); rebuilt here,
    all five run on the shipped base. The three share one ``--pool-cache``."""
    name = f"synthface-idadapter{suffix}"
    path, work = str(IDENTITY_DIR / f"{name}.safetensors"), f".cache/train-identity/{name}"
    common = ["train", "identity-adapter", *ADAPTER_TRAINING, *extra, "--out", path]
    return [common + ["--lr", "1e-3", "--seed", "0", "--steps", "600", "--work-dir", work],
            common + ["--lr", "5e-4", "--seed", "0", "--steps", "400", *ADAPTER_WORDS, "--init-from", path,
                      "--overwrite", "--no-resume", "--work-dir", f"{work}-words"],
            common + ["--lr", "5e-4", "--seed", "2", "--pool-seed", "0", "--steps", "1000", *ADAPTER_WORDS,
                      "--init-from", path, "--overwrite", "--no-resume", "--work-dir", f"{work}-words-long"],
            common + ["--lr", "5e-4", "--seed", "3", "--pool-seed", "0", "--steps", "1000", *ADAPTER_WORDS,
                      "--init-from", path, "--overwrite", "--no-resume", "--work-dir", f"{work}-words-long2"],
            common + ["--lr", "5e-4", "--seed", "4", "--pool-seed", "0", "--steps", "500", *ADAPTER_WORDS,
                      "--init-from", path, "--overwrite", "--no-resume", "--work-dir", f"{work}-stage3"]]


def missing() -> list[Asset]:
    return [a for a in assets() if not a.present]


def build(asset: Asset, log_file: Path | None = None) -> None:
    """Rebuild one asset with the same commands that made the shipped files (slow on CPU: minutes to hours).
    ``log_file``: the commands' output goes there instead of this terminal."""
    for args in asset.build_steps:
        cmd = [sys.executable, "-m", "facesmith.core.cli", *args]
        log.info("building %s: %s", asset.name, " ".join(cmd))
        if log_file is None:
            subprocess.run(cmd, check=True)
            continue
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8") as out:
            out.write(f"$ facesmith {' '.join(args)}\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"building {asset.name} failed (exit {done.returncode}): facesmith {' '.join(args)}; "
                               f"its output is in {log_file}")


def build_in_order(todo: list[Asset], jobs: int = 1, run=None) -> None:
    """Build ``todo``, each asset after those it ``needs`` (an asset not in ``todo`` counts as there), up to ``jobs``
    at once (each in its own processes: trainings share a GPU, or take a CPU core each). The first failure stops
    new starts; the builds already running finish, then it is raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    jobs = max(1, int(jobs))
    if run is None:
        def run(a: Asset) -> None:
            build(a, None if jobs == 1 else LOG_DIR / f"{a.name}.log")
    names = {a.name for a in todo}
    pending, done, running = list(todo), set(), {}
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for a in list(pending):
                if len(running) < jobs and all(n in done or n not in names for n in a.needs):
                    pending.remove(a)
                    if jobs > 1:
                        log.info("building %s (output: %s)", a.name, LOG_DIR / f"{a.name}.log")
                    running[pool.submit(run, a)] = a
            if not running:
                raise RuntimeError("assets that need each other: " + ", ".join(a.name for a in pending))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                a = running.pop(f)
                if f.exception() is not None:
                    pending.clear()
                    wait(running)
                    raise f.exception()
                done.add(a.name)


def ensure_all(build_missing: bool = True, jobs: int = 1) -> list[Asset]:
    """Return the assets that are still missing after building the missing ones (after what they need; ``jobs``
    at once)."""
    if build_missing:
        build_in_order(missing(), jobs)
    return missing()


def add_arguments(p) -> None:
    p.add_argument("--build", action="store_true", help="train every missing asset (minutes to hours on a CPU)")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --build: this many assets at once, each after those it needs (their output goes to "
                        f"{LOG_DIR}/NAME.log); to retrain models on a new base, remove their files and use --jobs 8 "
                        "on a GPU machine")


def main(args) -> int:
    if args.build:
        ensure_all(True, jobs=args.jobs)
    width = max(len(a.name) for a in assets())
    for a in assets():
        state = "present" if a.present else "MISSING"
        print(f"{a.name:<{width}}  {state:<8} {a.marker.parent}  ({a.what})")
        if not a.present:
            for args in a.build_steps:
                print(f"{'':<{width}}  rebuild: facesmith {' '.join(args)}")
    return 0 if not missing() else 1
