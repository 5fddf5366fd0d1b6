"""Vision-language judges that rate an image 0-10, and the strict parsing of their answers.

* ``TransformersJudge``: Qwen2.5-VL / Qwen2-VL in process (``vlm.VisionLanguageModel``).
  The answer is primed with ``"Score: "`` and the score is the *expected value* of the judge's
  distribution over 0..10, not a sampled string. P(d), d = 0..9, is the first token's probability
  of digit d. Qwen's tokenizer spells 10 as "1" "0", so a second step forced through "1" gives q,
  the next-token distribution after "1". Of what may follow "1", only "0" (the answer 10) and a
  non-digit (the answer 1) are valid scores -- "11".."19" are not -- so P("1") is split between
  them: P(10) = P("1") * q("0") / (1 - sum_{d=1..9} q(d)) and P(1) = P("1") - P(10). (A tokenizer
  with a single "10" token gives P(10) from the first step.) With m = sum_{d=0..9} P(d) (plus
  P("10") in that case), the score is sum_k k P(k) / m. When m < ``min_digit_mass`` the judge did
  not answer with a score: that is a failure, not a number.
* ``EndpointJudge`` (``judge_endpoint.py``): any OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reward_server.models.vlm import ChatQuery, VisionLanguageModel

JudgeQuery = ChatQuery  # one judgement: chat content parts and their images
ANSWER_PREFIX = "Score: "
_SCORE_LINE = re.compile(r"^\s*\**\s*score\s*\**\s*[:=]\s*\**\s*(\d{1,2}(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*\.?\s*$", re.I | re.M)


@dataclass
class Judgement:
    """A score on the 0-10 scale, or ``None`` with the reason."""

    score: float | None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def parse_score(text: str) -> float | str:
    """The score of a ``Score: N`` answer (N in 0..10), or why the answer does not qualify.

    Exactly one score line must be present; anything else -- no line, two different lines, a
    number outside 0..10 -- is unparseable, so the caller reports a failure instead of a guess.
    """
    found = _SCORE_LINE.findall(text or "")
    if not found:
        return f"no 'Score: N' line in the answer {text[:200]!r}"
    values = {float(v) for v in found}
    if len(values) > 1:
        return f"the answer gives several different scores {sorted(values)}"
    value = values.pop()
    if not 0.0 <= value <= 10.0:
        return f"score {value} is outside 0..10"
    return value


class TransformersJudge(VisionLanguageModel):
    """Qwen2(.5)-VL in process, batched, scoring by expected digit probability."""

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        dtype: torch.dtype,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        min_digit_mass: float = 0.5,
        batch_size: int = 8,
    ):
        super().__init__(model_path, device, dtype, min_pixels, max_pixels, batch_size)
        self.min_digit_mass = min_digit_mass
        tokenizer = self.processor.tokenizer
        self.digit_ids = [self._single_token(str(d)) for d in range(10)]
        ten = tokenizer.encode("10", add_special_tokens=False)
        self.ten_id = ten[0] if len(ten) == 1 else None  # else "10" is spelled "1", "0": two steps

    def _single_token(self, text: str) -> int:
        ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the judge's tokenizer splits {text!r} into {len(ids)} tokens; digits must be single tokens")
        return ids[0]

    def prompt_text(self, query: JudgeQuery, answer_prefix: str = ANSWER_PREFIX) -> str:
        """The chat prompt with the answer primed by ``Score: ``."""
        return super().prompt_text(query, answer_prefix)

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Judgement]:
        out: list[Judgement] = []
        for start in range(0, len(queries), self.batch_size):
            out.extend(self._judge_chunk(queries[start : start + self.batch_size]))
        return out

    @torch.inference_mode()
    def _judge_chunk(self, queries: Sequence[JudgeQuery]) -> list[Judgement]:
        inputs = self.inputs(queries, ANSWER_PREFIX)
        prompt_len = inputs["input_ids"].shape[1]
        one = self.digit_ids[1]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        everything = list(range(vocab))
        steps = 1 if self.ten_id is not None else 2
        generated = self.model.generate(
            **inputs,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            # step 2 must see "1" so that it gives P("0" | "1"), i.e. the chance of "10"
            prefix_allowed_tokens_fn=lambda _b, ids: [one] if ids.shape[-1] == prompt_len else everything,
        )
        first = generated.logits[0].float().softmax(-1).cpu()
        second = generated.logits[1].float().softmax(-1).cpu() if steps == 2 else None
        return [self._expected(first[b], None if second is None else second[b]) for b in range(len(queries))]

    def _expected(self, first: torch.Tensor, second: torch.Tensor | None) -> Judgement:
        digits = first[self.digit_ids].double().numpy()
        probs = np.zeros(11)
        probs[:10] = digits
        if self.ten_id is not None:
            probs[10] = float(first[self.ten_id])
        else:
            after_one = second[self.digit_ids].double().numpy()
            # "1" then "0" is ten; "1" then another digit would be 11..19, not a valid answer
            ten_share = after_one[0] / max(1.0 - after_one[1:].sum(), 1e-12)
            probs[10] = probs[1] * min(ten_share, 1.0)
            probs[1] -= probs[10]
        mass = float(probs.sum())
        details = {"digit_mass": round(mass, 6)}
        if mass < self.min_digit_mass or mass <= 0:
            return Judgement(None, f"the judge did not answer with a score (digit probability {mass:.3g} < {self.min_digit_mass})", details)
        probs /= mass
        details["distribution"] = [round(float(p), 4) for p in probs]
        details["argmax"] = int(probs.argmax())
        return Judgement(float((probs * np.arange(11)).sum()), None, details)
