"""Generation: registry, prompt template, and the local backend on the real SmolLM2 model."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.generation import (
    GenerationResult,
    Generator,
    create_generator,
    known_backends,
    load_prompt_template,
    register_backend,
)
from medalign_rag.generation.base import BackendOptions, validate_options
from medalign_rag.generation.prompt import PromptTemplate
from medalign_rag.tokenization import TokenCounter, default_counter

ANCHOR = datetime(2021, 6, 30, 14, 5, 0)
EHR = (
    "[2021-05-02 09:00] encounter: outpatient clinic\n"
    "measurement: Hemoglobin A1c 8.1 %\n"
    "drug: metformin 500 mg tablet\n"
    "[2021-06-28 10:30] encounter: emergency department\n"
    "condition: Type 2 diabetes mellitus\n"
    "note: Patient reports dizziness; glucose 250 mg/dL."
)
QUESTION = "What was the patient's most recent Hemoglobin A1c value?"


# --- registry ---------------------------------------------------------------------------------------


def test_importing_generation_does_not_import_heavy_backends():
    code = (
        "import sys, medalign_rag.generation as g; g.known_backends(); "
        "print([m for m in ('torch', 'transformers', 'vllm', 'llama_cpp') if m in sys.modules])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_known_backends_lists_the_three_builtin_ones():
    assert {"local", "openai", "vllm"} <= set(known_backends())


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(MedalignError) as caught:
        create_generator("gpt-17")
    message = str(caught.value)
    assert "gpt-17" in message
    for name in ("local", "openai", "vllm"):
        assert name in message


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(MedalignError) as caught:
        create_generator("openai", base_url="http://127.0.0.1:9/v1", temprature=0.3)
    assert "temprature" in str(caught.value)
    assert "unknown option" in str(caught.value)


def test_option_out_of_range_is_rejected():
    with pytest.raises(MedalignError, match="concurrency"):
        validate_options("openai", {"base_url": "http://127.0.0.1:9/v1", "concurrency": 0})
    with pytest.raises(MedalignError, match="batch_size"):
        validate_options("local", {"batch_size": 0})


def test_concurrency_is_also_accepted_as_max_concurrency():
    options = validate_options("openai", {"base_url": "http://127.0.0.1:9/v1", "max_concurrency": 3})
    assert options.concurrency == 3  # type: ignore[attr-defined]


def test_shipped_run_configs_have_valid_backend_options():
    import yaml

    repo = Path(__file__).resolve().parents[1]
    configs = sorted((repo / "configs").glob("*.yaml")) + [repo / "medalign_rag" / "resources" / "demo.yaml"]
    checked = 0
    for path in configs:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if config.get("backend") in ("local", "openai", "vllm"):
            validate_options(config["backend"], config.get("backend_options") or {})
            checked += 1
    if not checked:
        pytest.skip("no run config with a generation backend under configs/")


class _ReverseOptions(BackendOptions):
    suffix: str = ""


class _ReverseGenerator(Generator):
    """A complete (if useless) backend: proves third-party backends plug into the registry."""

    Options = _ReverseOptions

    def __init__(self, options: _ReverseOptions) -> None:
        self.options = options
        self.name = "reverse"
        self.tokenizer = default_counter()
        self.context_length = 1000

    def generate(self, prompts, *, max_tokens=256, temperature=0.0):
        texts = [prompt[::-1] + self.options.suffix for prompt in prompts]
        return [
            GenerationResult(
                text=text,
                prompt_tokens=self.tokenizer.count(p),
                completion_tokens=self.tokenizer.count(text),
                latency_s=0.0,
            )
            for p, text in zip(prompts, texts)
        ]


def test_registered_backend_is_created_with_validated_options():
    register_backend("test-reverse")(_ReverseGenerator)
    with create_generator("test-reverse", suffix="!") as generator:
        assert generator.backend == "test-reverse"
        assert isinstance(generator.tokenizer, TokenCounter)
        [result] = generator.generate(["abc"])
        assert result.text == "cba!"
    with pytest.raises(MedalignError, match="suffx"):
        create_generator("test-reverse", suffx="!")


def test_registering_two_classes_under_one_name_fails():
    class Other(_ReverseGenerator):
        pass

    register_backend("test-reverse-2")(_ReverseGenerator)
    with pytest.raises(MedalignError, match="registered twice"):
        register_backend("test-reverse-2")(Other)


# --- prompt template --------------------------------------------------------------------------------


def test_default_template_ships_inside_the_package():
    from importlib import resources

    packaged = resources.files("medalign_rag.resources").joinpath("prompts/medalign.yaml").read_text()
    assert "{context}" in packaged and "{question}" in packaged
    assert load_prompt_template().name == "medalign"


def test_render_puts_instruction_then_ehr_then_question():
    prompt = load_prompt_template().render(QUESTION, EHR, ANCHOR)
    instruction = prompt.index("based on the patient's electronic health record")
    assert instruction < prompt.index(EHR) < prompt.index(QUESTION)
    assert "Assume the current time is 2021-06-30 14:05:00." in prompt
    assert "encounter" in prompt.split(EHR)[0].lower() and "date" in prompt.split(EHR)[0].lower()


def test_render_without_anchor_leaves_no_time_sentence():
    prompt = load_prompt_template().render(QUESTION, EHR, None)
    assert "Assume the current time" not in prompt
    assert "  " not in prompt.splitlines()[0]


def test_braces_in_ehr_or_question_are_kept_verbatim():
    prompt = load_prompt_template().render("Is {x} in range?", 'note: {"json": 1} {context}', None)
    assert 'note: {"json": 1} {context}' in prompt
    assert "Is {x} in range?" in prompt


def test_overhead_is_the_prompt_without_context():
    template = load_prompt_template()
    counter = default_counter()
    overhead = template.overhead_tokens(counter, QUESTION, ANCHOR)
    assert overhead == counter.count(template.render(QUESTION, "", ANCHOR))
    assert overhead < counter.count(template.render(QUESTION, EHR, ANCHOR))
    # The assembler's arithmetic: overhead + context tokens is the prompt size, give or take the seams.
    full = counter.count(template.render(QUESTION, EHR, ANCHOR))
    assert abs(overhead + counter.count(EHR) - full) <= 2
    assert template.overhead_tokens(counter, QUESTION, None) < overhead


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompt.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_template_missing_placeholder_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: bad\n# the template\ntemplate: 'Answer {question}'\n")
    with pytest.raises(MedalignError) as caught:
        load_prompt_template(path)
    assert caught.value.path == str(path)
    assert caught.value.line == 3
    assert "{context}" in str(caught.value)


def test_template_unknown_placeholder_or_field_is_rejected(tmp_path):
    with pytest.raises(MedalignError, match=r"\{patient\}"):
        load_prompt_template(_write(tmp_path, "name: x\ntemplate: '{context} {question} {patient}'\n"))
    with pytest.raises(MedalignError, match="unknown field"):
        load_prompt_template(_write(tmp_path, "name: x\ntemplate: '{context} {question}'\nsystem: hi\n"))
    with pytest.raises(MedalignError, match="malformed"):
        load_prompt_template(_write(tmp_path, "name: x\ntemplate: '{context} {question'\n"))


def test_template_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(MedalignError) as caught:
        load_prompt_template(_write(tmp_path, "name: x\ntemplate: [unclosed\n"))
    assert caught.value.path == str(tmp_path / "prompt.yaml") and caught.value.line is not None
    with pytest.raises(MedalignError, match="not found"):
        load_prompt_template(tmp_path / "absent.yaml")
    with pytest.raises(MedalignError, match="mapping"):
        load_prompt_template(_write(tmp_path, "- just a list\n"))


def test_custom_template_is_used(tmp_path):
    template = load_prompt_template(
        _write(tmp_path, "name: terse\ntemplate: 'EHR:{context}|Q:{question}{time_anchor}'\ntime_format: '%d/%m/%Y'\n")
    )
    assert isinstance(template, PromptTemplate)
    assert template.render("q?", "ctx", ANCHOR) == "EHR:ctx|Q:q? Assume the current time is 30/06/2021."


# --- vLLM ------------------------------------------------------------------------------------------


def test_vllm_backend_without_vllm_says_how_to_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed: the missing-vllm message cannot be seen here")
    with pytest.raises(MedalignError, match="pip install vllm"):
        create_generator("vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.mark.slow
def test_vllm_backend_answers(tmp_path):
    pytest.importorskip("vllm", reason="vllm is not installed (GPU machines only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but no GPU is visible")
    from medalign_rag.generation.local import convert_gguf, find_smollm2_gguf

    model_dir, _ = convert_gguf(find_smollm2_gguf(), tmp_path)
    with create_generator("vllm", model=str(model_dir), max_model_len=2048, gpu_memory_utilization=0.3) as generator:
        assert generator.context_length == 2048
        results = generator.generate([QUESTION, "Say hello."], max_tokens=16)
        assert len(results) == 2 and all(r.text for r in results)
        assert results[0].prompt_tokens == generator.count_prompt_tokens(QUESTION)


# --- local backend (real SmolLM2) -------------------------------------------------------------------


def test_local_backend_rejects_missing_gguf_file(tmp_path):
    with pytest.raises(MedalignError) as caught:
        create_generator("local", gguf_file=tmp_path / "nope.gguf", cache_dir=tmp_path)
    assert "nope.gguf" in str(caught.value)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    pytest.importorskip("transformers", reason="the local backend needs transformers")
    pytest.importorskip("gguf", reason="the local backend needs gguf to read the SmolLM2 weights")
    from medalign_rag.generation.local import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except MedalignError as error:
        pytest.skip(str(error))
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def local_generator(model_cache):
    generator = create_generator("local", cache_dir=model_cache, batch_size=2, threads=1)
    yield generator
    generator.close()


@pytest.mark.slow
def test_first_load_converts_the_gguf_into_the_cache(local_generator, model_cache):
    assert local_generator.loaded_from_cache is False
    [converted] = [p for p in model_cache.iterdir() if p.is_dir()]
    marker = json.loads((converted / "medalign-cache.json").read_text())
    assert marker["source"].endswith(".gguf")
    assert not [p for p in model_cache.iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert local_generator.name == "SmolLM2-135M-Instruct"
    assert local_generator.context_length == 8192


@pytest.mark.slow
def test_local_answer_is_non_empty_and_within_max_tokens(local_generator):
    prompt = load_prompt_template().render(QUESTION, EHR, ANCHOR)
    [result] = local_generator.generate([prompt], max_tokens=48)
    assert result.text.strip()
    assert 0 < result.completion_tokens <= 48
    assert result.latency_s > 0


@pytest.mark.slow
def test_chat_template_is_applied(local_generator):
    chat = local_generator.chat_text("Hello there")
    assert "<|im_start|>user\nHello there<|im_end|>" in chat
    assert chat.rstrip().endswith("<|im_start|>assistant")
    [result] = local_generator.generate(["Hello there"], max_tokens=4)
    assert result.prompt_tokens == local_generator.count_prompt_tokens("Hello there")
    assert result.prompt_tokens > local_generator.tokenizer.count("Hello there")


@pytest.mark.slow
def test_token_counts_match_the_model_tokenizer(local_generator):
    prompts = ["Count to ten.", "List three colours.\n" * 5, load_prompt_template().render(QUESTION, EHR, None)]
    results = local_generator.generate(prompts, max_tokens=6)  # batch_size=2: two batches, reordered by length
    assert [r.prompt_tokens for r in results] == [local_generator.count_prompt_tokens(p) for p in prompts]
    chat_overhead = results[0].prompt_tokens - local_generator.tokenizer.count(prompts[0])
    assert all(r.prompt_tokens - local_generator.tokenizer.count(p) == chat_overhead for r, p in zip(results, prompts))
    for result in results:
        assert result.completion_tokens <= 6
        # Re-encoding decoded text may merge a token or two differently, never more.
        assert abs(local_generator.tokenizer.count(result.text) - result.completion_tokens) <= 2


@pytest.mark.slow
def test_greedy_decoding_is_deterministic(local_generator):
    first = local_generator.generate(["Name a fruit."], max_tokens=12)[0].text
    second = local_generator.generate(["Name a fruit."], max_tokens=12)[0].text
    assert first == second


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_clear_error(local_generator):
    too_long = "blood pressure " * (local_generator.context_length // 2 + 10)
    with pytest.raises(MedalignError, match="shrink the context budget"):
        local_generator.generate([too_long], max_tokens=4)


@pytest.mark.slow
def test_second_load_reuses_the_cached_copy(local_generator, model_cache):
    prompt = "What is hypertension? Answer in one sentence."
    expected = local_generator.generate([prompt], max_tokens=16)[0].text
    with create_generator("local", cache_dir=model_cache, threads=1) as again:
        assert again.loaded_from_cache is True
        assert again.generate([prompt], max_tokens=16)[0].text == expected
    with pytest.raises(MedalignError, match="closed"):
        again.generate([prompt])
    assert len([p for p in model_cache.iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_local_tokenizer_for_http_backends_matches_the_model(local_generator, model_cache):
    from medalign_rag.generation.local import load_smollm2_tokenizer

    counter = load_smollm2_tokenizer(model_cache)
    text = load_prompt_template().render(QUESTION, EHR, ANCHOR)
    assert counter.encode(text) == local_generator.tokenizer.encode(text)
