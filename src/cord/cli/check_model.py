"""``cord check-model``: cord's native re-implementation against its checkpoint's own code
(:mod:`cord.models.step_audio2.check` says what is compared)."""

from __future__ import annotations

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.models.step_audio2.check import FAMILIES, builtin_audio, compare, load_remote_reference


def run(args) -> int:
    """``cord check-model``."""
    from cord.config import ModelConfig
    from cord.data.audio import load_audio
    from cord.models.registry import load_adapter, resolve_device, resolve_dtype

    if args.family not in FAMILIES:
        raise CordError(f"check-model compares cord's native re-implementations with their checkpoint's own code: "
                        f"--family must be one of {', '.join(FAMILIES)} (got {args.family!r})")
    if not args.trust_remote_code:
        raise CordError("check-model runs the checkpoint's own modeling_step_audio_2.py as the reference; pass "
                        "--trust-remote-code to allow it (cord's step-audio2 family itself never runs remote code)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    clips = [(path, load_audio(path)) for path in args.audio] if args.audio else builtin_audio()
    longest = max(len(c) for _, c in clips) / SAMPLE_RATE
    adapter = load_adapter(ModelConfig(family=args.family, name_or_path=args.model, dtype=args.dtype,
                                       device=str(device), max_audio_seconds=max(30.0, longest),
                                       instruction=args.instruction))
    reference = load_remote_reference(args.model, device=device, dtype=dtype)
    print(f"check-model {args.family}: {args.model} — cord's native model vs the checkpoint's remote code, "
          f"{str(dtype).replace('torch.', '')} on {device}")
    result = compare(adapter, reference, audio=clips, question=args.question, max_new_tokens=args.max_new_tokens)
    print("result: " + ("agree (every greedy continuation identical)" if result["agree"]
                        else "DIFFER (see the lines above)"))
    return 0 if result["agree"] else 1
