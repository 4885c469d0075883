"""LLM-as-judge: grade a run's result against a rubric with a model apart from the agent's.

The judge is any OpenAI-compatible endpoint, reached through the openai client
and configured by TETHER_JUDGE_BASE_URL / TETHER_JUDGE_MODEL /
TETHER_JUDGE_API_KEY, never by the agent's model settings: an agent must not
grade itself. It is asked for a JSON object (response_format json_schema)
holding a score and a rationale, which pydantic parses and validates; an answer
that is not that object raises JudgeError saying what came back.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tether.errors import TetherError

Scale = Literal["0-1", "1-5"]
_RANGE: dict[str, tuple[float, float]] = {"0-1": (0.0, 1.0), "1-5": (1.0, 5.0)}


class JudgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_JUDGE_", env_file=".env", extra="ignore")

    base_url: str | None = None
    model: str | None = None
    api_key: str = "unset"
    timeout_s: float = Field(default=60.0, gt=0)

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)


class JudgeError(TetherError):
    """The judge could not be reached or did not answer with a valid verdict."""


class JudgeVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float
    rationale: str = Field(min_length=1)


_SYSTEM = (
    "You grade the answer of an AI agent against a rubric. Judge only what the rubric asks. "
    "Reply with a JSON object and nothing else: "
    '{{"score": <number from {low:g} to {high:g}, {high:g} = fully meets the rubric>, '
    '"rationale": "<one to three sentences saying why>"}}'
)


def _schema(low: float, high: float) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": low, "maximum": high},
            "rationale": {"type": "string"},
        },
        "required": ["score", "rationale"],
        "additionalProperties": False,
    }


class Judge:
    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str = "unset",
        timeout_s: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        import openai  # on first use: see tether.models

        self.model = model
        self.base_url = base_url
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )

    @classmethod
    def from_settings(cls, settings: JudgeSettings | None = None) -> Judge | None:
        """The configured judge, or None when TETHER_JUDGE_BASE_URL / _MODEL are not set."""
        settings = settings or JudgeSettings()
        if not settings.configured:
            return None
        assert settings.base_url is not None and settings.model is not None
        return cls(
            settings.model,
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout_s=settings.timeout_s,
        )

    def grade(self, rubric: str, task: str, answer: str, *, scale: Scale = "0-1") -> JudgeVerdict:
        import openai

        low, high = _RANGE[scale]
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                temperature=0,
                messages=[
                    {"role": "system", "content": _SYSTEM.format(low=low, high=high)},
                    {
                        "role": "user",
                        "content": f"Rubric:\n{rubric}\n\nTask given to the agent:\n{task}\n\n"
                        f"The agent's answer:\n{answer}",
                    },
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "judge_verdict",
                        "schema": _schema(low, high),
                        "strict": True,
                    },
                },
            )
        except openai.OpenAIError as exc:
            raise JudgeError(
                f"judge {self.model} at {self.base_url} failed: {type(exc).__name__}: {exc}; "
                "check TETHER_JUDGE_BASE_URL, TETHER_JUDGE_MODEL and TETHER_JUDGE_API_KEY"
            ) from exc
        content = response.choices[0].message.content if response.choices else None
        return parse_verdict(content, scale=scale, judge=self.model)


def parse_verdict(
    content: str | None, *, scale: Scale = "0-1", judge: str = "judge"
) -> JudgeVerdict:
    low, high = _RANGE[scale]
    if not content:
        raise JudgeError(f"judge {judge} answered with no content; expected a JSON verdict")
    try:
        verdict = JudgeVerdict.model_validate_json(content.strip())
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "<root>"
        raise JudgeError(
            f"judge {judge} answered {content[:200]!r}, not a verdict "
            f'{{"score": number, "rationale": text}} ({where}: {problem["msg"]}); '
            "use a judge model that follows response_format json_schema"
        ) from exc
    if not low <= verdict.score <= high:
        raise JudgeError(
            f"judge {judge} gave score {verdict.score}, outside the {scale} scale it was asked "
            f"for; its rationale: {json.dumps(verdict.rationale)}"
        )
    return verdict
