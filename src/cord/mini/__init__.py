"""The CPU miniature behind ``cord demo``: a tiny audio LLM trained from scratch in minutes.

- :mod:`cord.mini.task` — templated spoken maths word problems (one- and two-step) with
  worked solutions, split by problem (template + numbers) into train / dev / test.
- :mod:`cord.mini.data` — the questions spoken by espeak-ng: many voices for training, one
  held-out voice (accent and variant both unseen) for dev and test; paired dataset dirs.
- :mod:`cord.mini.model` — the ``mini`` model family: word-level Qwen2 decoder, log-mel
  audio encoder with a CTC readout, frame-stacking projector; the adapter contract.
- :mod:`cord.mini.family` — registers ``mini`` with :mod:`cord.models.registry`.
- :mod:`cord.mini.stages` — ``run_stages``: data, Stage A, Stage B, ``stages.json``;
  :mod:`cord.mini.recipe` (``RecipeConfig``: their knobs, and the loop pieces they share),
  :mod:`cord.mini.stage_a` (text LM: solve + repeat), :mod:`cord.mini.stage_b` (the audio path
  on audio → transcript, ``stage_b_loss``), :mod:`cord.mini.scoring` (``greedy_accuracy``,
  transcript scores on dev), :mod:`cord.mini.machine` (torch threads, what the timings ran on).
- :mod:`cord.mini.control` — the demo's control arm: Stage B's objective continued with
  the Stage C recipe.
- :mod:`cord.mini.stats` — paired differences and their nested bootstrap intervals; the
  report's ``conclusion``.
- :mod:`cord.mini.demo` — ``cord demo``: starts × (control + methods) × seeds, the report.
"""
