"""An LLM judge (or a jury of them) for free-text answers, in the spirit of MedHELM's LLM jury.

Each judge is any OpenAI-compatible server, configured like the answering backend (`create_generator`
options: base_url, model, ...). It reads a rubric prompt (packaged `resources/prompts/judge.yaml`, or your
own) with the question, the
answer, a clinician's reference answer and the EHR excerpt the answering model saw, and replies with JSON:
accuracy, completeness and clarity on 1-5, plus the answer's statements the record does not support. Replies
that are not such JSON are kept as invalid verdicts (small models often fail the format) rather than guessed at.
The jury's score of an answer is the mean over its valid judges. `judge_agreement` compares jury scores with
clinicians' ranks by Kendall's tau (`evaluation.agreement`), as the MedAlign paper does for automatic metrics.

Use a strong judge model: the packaged SmolLM2-135M only exercises the plumbing in tests.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from medalign_rag.errors import MedalignError

if TYPE_CHECKING:
    from medalign_rag.evaluation.agreement import AgreementResult
    from medalign_rag.generation.base import Generator
    from medalign_rag.records.model import ModelResponse

__all__ = [
    "RUBRIC",
    "JudgeItem",
    "JudgeScore",
    "JudgeTemplate",
    "JuryVerdict",
    "LLMJury",
    "create_jury",
    "judge_agreement",
    "load_judge_template",
    "parse_judge_reply",
]

RUBRIC = ("accuracy", "completeness", "clarity")
_FIELDS = {"question", "answer", "reference", "context"}
# The reply's shape, sent as a response format where the server can constrain decoding to it.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{name: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for name in RUBRIC},
        "unsupported": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 5},
    },
    "required": [*RUBRIC, "unsupported"],
    "additionalProperties": False,
}
# How servers take a JSON schema: OpenAI and vLLM ("json_schema"), llama-cpp-python ("json_object" + "schema").
RESPONSE_FORMATS = {
    "json_schema": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}},
    "json_object": {"type": "json_object", "schema": VERDICT_SCHEMA},
}


DEFAULT_JUDGE_PROMPT = "prompts/judge.yaml"  # in medalign_rag/resources, beside the default answering prompt


class JudgeTemplate(BaseModel):
    """The judge's user message with {question}, {answer} and optional {reference} / {context}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    template: str
    no_reference: str = "(no reference answer)"
    no_context: str = "(no EHR excerpt)"
    max_tokens: int = 256

    @field_validator("template")
    @classmethod
    def _check(cls, template: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as error:
            raise ValueError(f"malformed placeholder ({error}); write a literal brace as '{{{{' or '}}}}'") from None
        missing = {"question", "answer"} - fields
        if missing:
            raise ValueError(f"template lacks placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
        unknown = fields - _FIELDS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}")
        return template

    def render(self, item: "JudgeItem") -> str:
        return self.template.format(
            question=item.question.strip(),
            answer=item.answer.strip(),
            reference=item.reference.strip() if item.reference else self.no_reference,
            context=item.context if item.context else self.no_context,
        )


def load_judge_template(path: Path | str | None = None) -> JudgeTemplate:
    """Read a judge prompt YAML (default: the packaged `medalign_rag/resources/prompts/judge.yaml`)."""
    from medalign_rag.generation.prompt import load_yaml_model

    return load_yaml_model(JudgeTemplate, path, default=DEFAULT_JUDGE_PROMPT, what="judge prompt")


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge. `key` identifies it in results, e.g. (instruction_id, model_name)."""

    key: Any
    question: str
    answer: str
    reference: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class JudgeScore:
    """One judge's reading of one answer; scores are None when the reply was not the requested JSON."""

    judge: str
    accuracy: int | None
    completeness: int | None
    clarity: int | None
    unsupported: tuple[str, ...]
    explanation: str
    raw: str
    valid: bool
    problem: str | None = None

    @property
    def overall(self) -> float | None:
        if not self.valid:
            return None
        return (self.accuracy + self.completeness + self.clarity) / 3  # type: ignore[operator]


@dataclass(frozen=True)
class JuryVerdict:
    key: Any
    scores: tuple[JudgeScore, ...]
    per_criterion: dict[str, float | None] = field(default_factory=dict)  # mean over valid judges
    overall: float | None = None
    unsupported_flags: int = 0  # statements flagged by any valid judge (counted per judge)
    valid_judges: int = 0


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _score(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} is not a number")
    number = float(value)
    if not number.is_integer() or not 1 <= number <= 5:
        raise ValueError(f"{name} must be an integer from 1 to 5, got {value!r}")
    return int(number)


def parse_judge_reply(text: str, judge: str = "judge") -> JudgeScore:
    """Read a judge's JSON reply (the first {...} in it, code fences allowed); invalid replies are kept as such."""
    def invalid(problem: str) -> JudgeScore:
        return JudgeScore(judge, None, None, None, (), "", text, valid=False, problem=problem)

    match = _JSON_OBJECT.search(text or "")
    if not match:
        return invalid("no JSON object in the reply")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as error:
        return invalid(f"not valid JSON ({error.msg})")
    if not isinstance(data, dict):
        return invalid("the JSON is not an object")
    try:
        scores = {name: _score(data.get(name), name) for name in RUBRIC}
    except ValueError as error:
        return invalid(str(error))
    unsupported = data.get("unsupported", [])
    if isinstance(unsupported, str):
        unsupported = [unsupported] if unsupported.strip() else []
    if not isinstance(unsupported, list):
        return invalid("unsupported is not a list")
    return JudgeScore(
        judge=judge, accuracy=scores["accuracy"], completeness=scores["completeness"], clarity=scores["clarity"],
        unsupported=tuple(str(s) for s in unsupported if str(s).strip()),
        explanation=str(data.get("explanation", "")), raw=text, valid=True,
    )


def _structured_replies(generator: "Generator", prompts: list[str], max_tokens: int, response_format: str) -> list[str]:
    """Chat completions with a `response_format` through the openai backend's client (its retries and errors)."""
    from concurrent.futures import ThreadPoolExecutor

    from medalign_rag.generation.openai_http import OpenAIGenerator

    if not isinstance(generator, OpenAIGenerator):
        raise MedalignError(f"judge {generator.name!r}: response_format needs the openai backend")

    def one(prompt: str) -> str:
        payload = {
            "model": generator.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "response_format": RESPONSE_FORMATS[response_format],
        }
        if generator.options.seed is not None:
            payload["seed"] = generator.options.seed
        response = generator._request("POST", "chat/completions", payload)
        if response.status_code >= 400:
            raise generator._completion_error(response)
        body = generator._json(response)
        try:
            return body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise MedalignError(f"judge {generator.name!r} returned no choices[0].message.content") from None

    with ThreadPoolExecutor(max_workers=min(generator.options.concurrency, max(len(prompts), 1))) as pool:
        return list(pool.map(one, prompts))


class LLMJury:
    """One or more judges (Generators) scoring answers with one rubric prompt; greedy decoding.

    `response_formats[i]` ("json_schema", "json_object" or None) asks judge i's server to constrain its reply to
    the verdict schema (openai backend only); None sends the prompt alone and parses what comes back.
    """

    def __init__(
        self,
        judges: Sequence["Generator"],
        template: JudgeTemplate | None = None,
        response_formats: Sequence[str | None] | None = None,
    ) -> None:
        if not judges:
            raise MedalignError("an LLM jury needs at least one judge")
        names = [judge.name for judge in judges]
        if len(set(names)) != len(names):
            raise MedalignError(f"judges must have distinct names (give each a 'name' option): {names}")
        formats = list(response_formats) if response_formats is not None else [None] * len(judges)
        if len(formats) != len(judges):
            raise MedalignError(f"{len(judges)} judges but {len(formats)} response formats")
        for fmt in formats:
            if fmt is not None and fmt not in RESPONSE_FORMATS:
                raise MedalignError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)} or null, got {fmt!r}")
        self.judges = list(judges)
        self.response_formats = formats
        self.template = template or load_judge_template()

    def judge(self, items: Sequence[JudgeItem], *, max_tokens: int | None = None) -> list[JuryVerdict]:
        """Every judge scores every item (each judge gets the whole batch at once); verdicts in item order."""
        prompts = [self.template.render(item) for item in items]
        limit = max_tokens or self.template.max_tokens
        per_judge: list[list[JudgeScore]] = []
        for judge, response_format in zip(self.judges, self.response_formats):
            if response_format is None:
                replies = [result.text for result in judge.generate(prompts, max_tokens=limit, temperature=0.0)]
            else:
                replies = _structured_replies(judge, prompts, limit, response_format)
            per_judge.append([parse_judge_reply(reply, judge.name) for reply in replies])
        verdicts = []
        for position, item in enumerate(items):
            scores = tuple(judge_scores[position] for judge_scores in per_judge)
            valid = [s for s in scores if s.valid]
            per_criterion = {
                name: (sum(getattr(s, name) for s in valid) / len(valid)) if valid else None for name in RUBRIC
            }
            overall = sum(s.overall for s in valid) / len(valid) if valid else None  # type: ignore[misc]
            verdicts.append(JuryVerdict(
                key=item.key, scores=scores, per_criterion=per_criterion, overall=overall,
                unsupported_flags=sum(len(s.unsupported) for s in valid), valid_judges=len(valid),
            ))
        return verdicts

    def close(self) -> None:
        for judge in self.judges:
            judge.close()


def create_jury(specs: Sequence[Mapping[str, Any]], template: JudgeTemplate | None = None) -> LLMJury:
    """Judges from specs like the answering backend's.

    [{"backend": "openai", "backend_options": {"base_url": ..., "model": ..., "name": ...},
      "response_format": "json_schema"}, ...]
    """
    from medalign_rag.generation import create_generator

    judges, formats = [], []
    try:
        for position, spec in enumerate(specs):
            unknown = set(spec) - {"backend", "backend_options", "response_format"}
            if unknown:
                raise MedalignError(f"judge {position}: unknown key(s) {', '.join(sorted(unknown))}")
            judges.append(create_generator(spec.get("backend", "openai"), **dict(spec.get("backend_options") or {})))
            formats.append(spec.get("response_format"))
        return LLMJury(judges, template, formats)
    except BaseException:
        for judge in judges:
            judge.close()
        raise


JUDGE_FILE = "judgements.jsonl"


def judge_ablation_answers(jury: LLMJury, instructions: Sequence[Any], items: Sequence[Any],
                           contexts: Mapping[str, str], out_path: Path | None = None) -> dict[str, JuryVerdict]:
    """Judge the answered ablation items (`ItemResult`s with an answer); returns item key -> verdict.

    `contexts` maps item keys to the context the answering model saw. With `out_path`, verdicts are appended to a
    JSONL file and items already judged there by the same jury are not judged again.
    """
    import hashlib

    by_id = {instruction.instruction_id: instruction for instruction in instructions}
    jury_id = hashlib.sha256(json.dumps([[j.name for j in jury.judges], jury.template.model_dump()],
                                        sort_keys=True).encode()).hexdigest()[:12]
    done: dict[str, dict] = {}
    if out_path is not None and Path(out_path).is_file():
        for line in Path(out_path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run
            if row.get("jury") == jury_id:
                done[row["key"]] = row
    from medalign_rag.evaluation.metrics import natural_language_references

    pending = []
    for item in items:
        if item.answer is None or item.key in done:
            continue
        instruction = by_id[item.instruction_id]
        references = natural_language_references(instruction) or [r for r in instruction.reference_answers if r]
        pending.append(JudgeItem(key=item.key, question=instruction.question, answer=item.answer,
                                 reference=references[0] if references else None, context=contexts.get(item.key)))
    verdicts = jury.judge(pending) if pending else []
    if out_path is not None and verdicts:
        with open(out_path, "a", encoding="utf-8") as handle:
            for verdict in verdicts:
                row = {"key": verdict.key, "jury": jury_id, "overall": verdict.overall,
                       "per_criterion": verdict.per_criterion, "unsupported_flags": verdict.unsupported_flags,
                       "valid_judges": verdict.valid_judges,
                       "scores": [{"judge": s.judge, "valid": s.valid, "raw": s.raw, "problem": s.problem,
                                   **{name: getattr(s, name) for name in RUBRIC},
                                   "unsupported": list(s.unsupported)} for s in verdict.scores]}
                handle.write(json.dumps(row) + "\n")
    result = {v.key: v for v in verdicts}
    for key, row in done.items():
        result[key] = JuryVerdict(key=key, scores=(), per_criterion=row["per_criterion"], overall=row["overall"],
                                  unsupported_flags=row["unsupported_flags"], valid_judges=row["valid_judges"])
    return result


def judge_agreement(
    responses: Sequence["ModelResponse"],
    verdicts: Sequence[JuryVerdict],
    *,
    criterion: str = "overall",
    n_resamples: int = 1000,
    seed: int = 0,
) -> "AgreementResult":
    """Kendall's tau between jury scores and clinician ranks; verdict keys are (instruction_id, model_name).

    Responses whose verdict has no valid judge are left out (they cannot be ordered).
    """
    from medalign_rag.evaluation.agreement import kendall_agreement

    if criterion != "overall" and criterion not in RUBRIC:
        raise MedalignError(f"criterion must be 'overall' or one of {', '.join(RUBRIC)}, got {criterion!r}")
    scores: dict[tuple[str, str], float] = {}
    for verdict in verdicts:
        value = verdict.overall if criterion == "overall" else verdict.per_criterion.get(criterion)
        if value is not None:
            scores[tuple(verdict.key)] = float(value)
    scored = [r for r in responses if (r.instruction_id, r.model_name) in scores]
    return kendall_agreement(scored, scores, n_resamples=n_resamples, seed=seed)
