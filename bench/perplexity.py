"""What quantization costs in quality: perplexity and agreement with the exact model, side by side.

Every model variant reads the same text, teacher-forced one token per step
in ``--batch`` parallel windows, so each step is a decode step of that many
rows: the path (and the quantized twins) that generation uses. Per variant:

- perplexity of the text;
- top-1 agreement: how often its most likely next token is the exact model's;
- mean KL divergence from the exact model's next-token distribution.

The text defaults to the repository's README and docs (prose and tables);
pass ``--text`` for another. Compare numbers from the same run only.

    .venv/bin/python bench/perplexity.py
    .venv/bin/python bench/perplexity.py --variants none,int4,w8a8 --batch 16 --tokens 256
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from local_engine.attention import AttentionMetadata
from local_engine.kv_cache import KVCache
from local_engine.loader import LoadedModel, load_model
from local_engine.quantization import quantize

REPO = Path(__file__).resolve().parent.parent
BLOCK_SIZE = 16


@dataclass
class Score:
    nll: float = 0.0
    agree: int = 0
    kl: float = 0.0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def agreement(self) -> float:
        return self.agree / self.tokens

    @property
    def mean_kl(self) -> float:
        return self.kl / self.tokens

    def row(self, name: str) -> str:
        return (
            f"  {name:>10} {self.perplexity:10.3f} {self.agreement:11.2%} {self.mean_kl:10.4f} {self.seconds:9.1f}"
        )


def default_text() -> str:
    paths = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n\n".join(path.read_text() for path in paths)


def windows(loaded: LoadedModel, text: str, batch: int, tokens: int) -> torch.Tensor:
    """``batch`` consecutive, non-overlapping windows of ``tokens`` + 1 token ids: [batch, tokens + 1]."""
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    needed = batch * (tokens + 1)
    if len(ids) < needed:
        raise SystemExit(f"the text has {len(ids)} tokens; --batch x (--tokens + 1) needs {needed}")
    return torch.tensor(ids[:needed]).view(batch, tokens + 1)


class TeacherForced:
    """One model variant reading the windows a token per step, with its own KV cache."""

    def __init__(self, loaded: LoadedModel, batch: int, tokens: int) -> None:
        model = loaded.model
        self.model = model
        blocks_per_seq = -(-tokens // BLOCK_SIZE)
        self.cache = KVCache(
            model.num_layers, batch * blocks_per_seq, BLOCK_SIZE, model.num_kv_heads, model.head_dim,
            model.dtype, model.device,
        )  # fmt: skip
        self.tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(batch)]

    def log_probs(self, step_ids: torch.Tensor, position: int) -> torch.Tensor:
        """Next-token log-probabilities [batch, vocab] after feeding ``step_ids`` at ``position``."""
        batch = step_ids.shape[0]
        metadata = AttentionMetadata.build(
            [1] * batch, [position + 1] * batch, self.tables, BLOCK_SIZE, self.model.device
        )
        hidden = self.model(step_ids.to(self.model.device), metadata.positions, metadata, self.cache)
        return F.log_softmax(self.model.compute_logits(hidden), -1).cpu()


def score_variants(readers: dict[str, TeacherForced], ids: torch.Tensor) -> dict[str, Score]:
    """Each reader's score on the windows ``ids``; the first reader is the reference for agreement and KL."""
    scores = {variant: Score() for variant in readers}
    with torch.inference_mode():
        for position in range(ids.shape[1] - 1):
            targets = ids[:, position + 1]
            reference: torch.Tensor | None = None
            for variant, reader in readers.items():
                started = time.perf_counter()
                log_probs = reader.log_probs(ids[:, position], position)
                score = scores[variant]
                score.seconds += time.perf_counter() - started
                if reference is None:
                    reference = log_probs
                score.nll -= float(log_probs.gather(1, targets[:, None]).sum())
                score.agree += int((log_probs.argmax(-1) == reference.argmax(-1)).sum())
                score.kl += float((reference.exp() * (reference - log_probs)).sum())
                score.tokens += len(targets)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="model directory or .gguf (default: the bundled SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--variants", default="none,int4,int8,w8a8", help="none = the exact weights")
    parser.add_argument("--batch", type=int, default=16, help="parallel windows (rows per decode step)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens scored per window")
    parser.add_argument("--text", type=Path, help="a UTF-8 text file (default: README.md and docs/*.md)")
    args = parser.parse_args()

    variants = args.variants.split(",")
    if variants[0] != "none":
        variants.insert(0, "none")  # the reference for agreement and KL
    readers: dict[str, TeacherForced] = {}
    for variant in variants:
        loaded = load_model(args.source, dtype=args.dtype)
        if variant != "none":
            quantize(loaded, variant)
        readers[variant] = TeacherForced(loaded, args.batch, args.tokens)
    text = args.text.read_text() if args.text else default_text()
    ids = windows(loaded, text, args.batch, args.tokens)
    print(f"{loaded.name} {loaded.model.dtype}: {args.batch} windows x {args.tokens} tokens, one decode step per token")

    scores = score_variants(readers, ids)
    print(f"  {'variant':>10} {'perplexity':>10} {'top-1 agree':>11} {'KL':>10} {'seconds':>9}")
    for variant, score in scores.items():
        print(score.row("exact" if variant == "none" else variant))


if __name__ == "__main__":
    main()
