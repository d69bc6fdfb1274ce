"""The answering prompt, kept in YAML so it can change without touching code.

The default ships inside the package (`medalign_rag/resources/prompts/medalign.yaml`, read with importlib.resources
so an installed wheel finds it); a user's own file given as `prompt_template` overrides it.
"""

from __future__ import annotations

import string
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from medalign_rag.errors import MedalignError
from medalign_rag.tokenization import TokenCounter

DEFAULT_PROMPT = "prompts/medalign.yaml"
M = TypeVar("M", bound=BaseModel)


def packaged_resource(name: str) -> tuple[str, str]:
    """(a name for error messages, the text) of a file in medalign_rag/resources."""
    resource = resources.files("medalign_rag.resources").joinpath(name)
    return f"<package>/medalign_rag/resources/{name}", resource.read_text(encoding="utf-8")

_TEMPLATE_FIELDS = {"context", "question", "time_anchor"}
_ANCHOR_FIELDS = {"time"}


def _placeholders(text: str) -> set[str]:
    try:
        return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as error:  # an unmatched "{" or "}"
        raise ValueError(f"malformed placeholder ({error}); write a literal brace as '{{{{' or '}}}}'") from None


class PromptTemplate(BaseModel):
    """A user-message template with {context}, {question} and an optional {time_anchor} sentence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    template: str
    time_anchor: str = " Assume the current time is {time}."
    time_format: str = "%Y-%m-%d %H:%M:%S"

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        fields = _placeholders(template)
        missing = {"context", "question"} - fields
        if missing:
            raise ValueError(f"template lacks placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
        unknown = fields - _TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))};"
                f" allowed: {', '.join('{' + f + '}' for f in sorted(_TEMPLATE_FIELDS))}"
            )
        return template

    @field_validator("time_anchor")
    @classmethod
    def _check_time_anchor(cls, sentence: str) -> str:
        unknown = _placeholders(sentence) - _ANCHOR_FIELDS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; only {{time}} is allowed")
        return sentence

    def render(self, question: str, context: str, time_anchor: datetime | None) -> str:
        """The user message: instruction, EHR `context`, then `question`.

        Values are substituted, never parsed as templates, so braces in EHR text are safe.
        """
        anchor = ""
        if time_anchor is not None:
            anchor = self.time_anchor.format(time=time_anchor.strftime(self.time_format))
        return self.template.format(context=context, question=question.strip(), time_anchor=anchor)

    def overhead_tokens(self, counter: TokenCounter, question: str, time_anchor: datetime | None) -> int:
        """Tokens of the prompt around the EHR: the rendered prompt with an empty context.

        The context assembler subtracts this from the model's budget. It does not include the chat
        template a backend adds (see `Generator.count_prompt_tokens`), and tokenizing the pieces apart
        can differ from tokenizing the whole by a token or two at the seams, so keep a small margin.
        """
        return counter.count(self.render(question, "", time_anchor))


def load_yaml_model(model: type[M], path: Path | str | None, *, default: str, what: str) -> M:
    """Read a YAML mapping into the pydantic `model`: the packaged resource `default` when `path` is None, else
    the user's file. Every failure is one MedalignError naming the file and, where known, the line."""
    if path is None:
        source, text = packaged_resource(default)
    else:
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedalignError(f"{what} file not found", path=source) from None
        except (OSError, UnicodeDecodeError) as error:
            raise MedalignError(f"cannot read {what}: {error}", path=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise MedalignError(f"invalid YAML: {problem}", path=source, line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise MedalignError(f"a {what} must be a YAML mapping with 'name' and 'template'", path=source)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        field = ".".join(str(part) for part in item["loc"]) or "template"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        raise MedalignError(f"field {field!r}: {message}", path=source, line=_line_of_key(text, field)) from None


def load_prompt_template(path: Path | None = None) -> PromptTemplate:
    """Read a prompt template YAML (default: the packaged MedAlign-style prompt)."""
    return load_yaml_model(PromptTemplate, path, default=DEFAULT_PROMPT, what="prompt template")


def _line_of_key(text: str, key: str) -> int | None:
    """1-based line of a top-level key, so errors point at it."""
    top = key.split(".")[0]
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(f"{top}:"):
            return number
    return None
