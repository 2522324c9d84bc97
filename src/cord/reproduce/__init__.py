"""``cord reproduce``: the paper's Table 1 as one resumable pipeline of cord's own commands.

Stages, in order (``configs/<family>/reproduce.yaml`` says what each does)::

    synth            cord synth  --input <synth.input> --out OUT/synth            (the training set)
    eval-base        cord eval   --model <model.name_or_path> --out OUT/eval-base
    train-<m>        cord train  --config <presets>/<m>.yaml  (data.train=OUT/synth,
                                 train.output_dir=OUT/train-<m>)   for each m in train.methods
    eval-<m>         cord eval   --model OUT/train-<m>/model --out OUT/eval-<m>
    table            cord table  base=OUT/eval-base <m>=OUT/eval-<m> ... --out OUT/table

Each stage is a subprocess (``python -m cord.cli ...``; training under ``accelerate launch``
when ``train.processes`` > 1 or ``train.accelerate_config`` is set) whose output goes to
``OUT/<stage>/log.txt``; the stage's products are in ``OUT/<stage>/`` too.

**Fingerprints.** A stage's fingerprint is a hash of its exact command (the Python executable
left out), the ``env`` it runs with, the contents of the files the command reads (the method
preset, a local synth input, a local benchmark's manifest, the accelerate config) and the
*product* fingerprints of the stages it consumes (a product fingerprint leaves out what does
not change a stage's output: ``--workers``, ``--batch-size``). ``OUT/<stage>/stage.json`` is
written when a stage starts, ``OUT/<stage>/done.json`` when its command exits 0. A stage whose
``done.json`` holds its current fingerprint is done and skipped (nothing runs: a rerun of a
finished pipeline takes well under a second after Python starts). Otherwise it runs its
command again, which resumes by itself: ``cord train`` from its last checkpoint, ``cord eval``
and ``cord synth`` keeping finished items. When a train or eval stage's *inputs* changed (the
training data, the model under evaluation), its old outputs are another product: they are
moved aside to ``OUT/<stage>.old-<time>/`` (nothing is deleted) and the stage starts afresh.
So is a training whose own settings now change what it computes (:func:`training_changed`:
a key outside the checkpoint module's ``HARMLESS_KEYS``, e.g. ``train.lr`` in the method
preset, or the prompts per micro-batch); otherwise (a raised ``train.max_steps``, another
``save_every``) ``cord train`` runs in place and continues the run. Either way the stages
downstream of it run again.

**Training** runs as plain ``python -m cord.cli train`` when ``train.processes`` is 1 and no
``train.accelerate_config`` is given (one process needs no launcher: a debugger, a CPU run,
a one-GPU job see cord's own process), else as ``python -m accelerate.commands.launch
[--config_file F] [--multi_gpu] [--num_processes N] -m cord.cli train`` (``processes: null``
takes the accelerate config's count).

**Locks.** A whole-pipeline run holds ``OUT/.cord-reproduce.lock``; every stage holds a lock in
its own folder while it runs, so ``--stage`` jobs of different stages can run at once (one
cluster job per stage) while a second runner of the same stage is refused with one line.

A failed stage stops the pipeline with one line: the stage, its exit status, the last error
line of its log, the log's path and the command that reruns it.
"""

from cord.reproduce.config import ReproduceConfig, load_reproduce_config
from cord.reproduce.plan import PIPELINE_LOCK, STAGE_LOCK, Pipeline, Stage, build_pipeline, file_digest
from cord.reproduce.runner import format_plan, format_status, run_pipeline, run_stage, stage_state

__all__ = [
    "PIPELINE_LOCK", "STAGE_LOCK", "Pipeline", "ReproduceConfig", "Stage", "build_pipeline", "file_digest",
    "format_plan", "format_status", "load_reproduce_config", "run_pipeline", "run_stage", "stage_state",
]
