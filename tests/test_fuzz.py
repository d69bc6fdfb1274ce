"""Property-based fuzzing of every reader (hypothesis): arbitrary bytes and mutated valid files fed to the EHR XML
reader (both layouts), the two instruction tables, run configs and prompt templates. The only outcomes allowed are
a valid result or one MedalignError; anything else (a KeyError, a UnicodeDecodeError, a TypeError from comparing
datetimes...) would reach the user as a traceback. Records that read are also chunked and rendered, the way every
command uses them next, and a small sample is indexed: an index is then either complete or absent, never partial.

The runs are derandomized so CI sees the same examples every time; raise FUZZ_EXAMPLES to search longer locally.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.config import RunConfig, load_run_config
from medalign_rag.errors import MedalignError
from medalign_rag.generation.prompt import PromptTemplate, load_prompt_template
from medalign_rag.records.instructions import read_instruction_table, read_model_responses
from medalign_rag.records.model import PatientRecord
from medalign_rag.records.readers import read_record
from medalign_rag.records.serialize import render_record
from medalign_rag.tokenization import default_counter
from tests import robust_data

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="medalign-fuzz-"))
COUNTER = default_counter()

PAPER_XML = b"""<record>
  <visit type="Emergency Room Visit" start="10/08/2018 20:00">
    <day start="10/08/2018 20:00">
      <person>
        Birth:7/19/1966
        Gender: FEMALE
      </person>
      <condition_occurrence start="10/08/2018 08:00 PM">
        <code>[ICD/163.5] Cerebral infarction</code>
      </condition_occurrence>
      <measurement start="10/08/2018 08:05 PM">
        <code>[LOINC/8462-4] Diastolic blood pressure 100</code>
        <code>[LOINC/8478-0] Mean blood pressure 122 mm Hg</code>
      </measurement>
      <note type="progress" start="10/09/2018 09:00 AM">Pt stable &amp; improving.</note>
    </day>
  </visit>
  <visit type="Office Visit" start="2019-01-02T10:00:00+05:00">
    <measurement start="2019-01-02T10:30:00">
      <code>[LOINC/4548-4] Hemoglobin A1c 7.1 %</code>
    </measurement>
  </visit>
</record>
"""


def _release_xml() -> bytes:
    from medalign_rag.records.serialize import write_release_xml

    path = WORK / "seed-release.xml"
    write_release_xml(robust_data.small_records(1)[0], path)
    return path.read_bytes()


def _instruction_tsv() -> bytes:
    from medalign_rag.records.instructions import write_instruction_table

    path = WORK / "seed-instructions.tsv"
    write_instruction_table(robust_data.instructions_for(robust_data.small_records(1)), path)
    return path.read_bytes()


RELEASE_XML = _release_xml()
INSTRUCTION_TSV = _instruction_tsv()
RESPONSES_TSV = (b"instruction_id\tperson_id\tquestion\tmodel_name\tmodel_response\tmodel_rank\tbinary_correct\n"
                 b"i1\tp1\tWhat is the A1c?\tgpt-4\t\"It is 7.1%\nper the record\"\t1\t1\n"
                 b"i1\tp1\tWhat is the A1c?\tvicuna\tunknown\t2.5\tno\n")
RUN_CONFIG = (b"name: fuzz\ndata: ../cohort\nsynth: {patients: 2, seed: 7}\n"
              b"index: {index_dir: ../idx, window_tokens: 128, overlap_tokens: 16, chunking: {max_tokens: 256}}\n"
              b"strategies: [full, bm25, oracle]\nbudgets: [2048, 4096]\nbackend: none\n"
              b"backend_options: {base_url: 'http://127.0.0.1:8000/v1'}\nreserve_tokens: 256\nmax_instructions: 3\n")
PROMPT = (b"name: fuzz\ntemplate: |-\n  Answer from the EHR.{time_anchor}\n\n  EHR:\n  {context}\n\n"
          b"  Question: {question}\ntime_anchor: ' Now is {time}.'\ntime_format: '%Y-%m-%d'\n")

# Pieces that stress what each format's reader has to get right: markup, entities, timestamps with offsets or out
# of range, encodings, separators and quotes, YAML structure.
SNIPPETS = [b"<", b">", b"</encounter>", b"</events>", b"<entry timestamp=\"\">", b"<event type=\"note\">",
            b"&bogus;", b"&#0;", b"&amp;", b"<![CDATA[", b"<!DOCTYPE r [<!ENTITY e 'x'>]>", b"\x00", b"\xff\xfe",
            b"\xc3", b"\"", b"'", b"\t", b"\n", b"\r", b"\r\n", b"2019-02-30T25:61:00", b"+05:00", b"-23:59",
            b"9999-12-31T23:59:59", b"0001-01-01", b"13/45/2019 99:99 PM", b"id=\"\"", b"person_id=\"../x\"",
            b"{", b"}", b"{context}", b"{nope}", b": ", b"- ", b"[", b"]", b"*anchor", b"&anchor ", b"!!python/object",
            b"null", b"-1", b"0", b"1e309", b"nan", b"\xe2\x80\xae"]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """A valid file with a few byte-level edits: flips, deletions, duplicated spans and inserted snippets."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate"]))
        if operation == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[position:position] = draw(st.sampled_from(SNIPPETS) | st.binary(max_size=16))
        elif operation == "duplicate":
            span = bytes(data[position:position + draw(st.integers(1, 200))])
            data[position:position] = span
        elif operation == "truncate":
            del data[position:]
    return bytes(data)


@st.composite
def attribute_swapped(draw, seed: bytes) -> bytes:
    """A valid XML file with one attribute value replaced by arbitrary text (escaped, so the XML stays well formed):
    what the reader makes of odd timestamps, ids and types."""
    text = seed.decode("utf-8")
    matches = list(re.finditer(r'(\w+)="([^"]*)"', text))
    match = draw(st.sampled_from(matches))
    value = draw(st.text(max_size=30) | st.sampled_from([s.decode("latin-1") for s in SNIPPETS]))
    value = "".join(ch for ch in value if ch in "\t\n\r" or ord(ch) >= 0x20 and not 0xD800 <= ord(ch) <= 0xDFFF)
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    return (text[:match.start(2)] + escaped + text[match.end(2):]).encode("utf-8")


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def check_record(record: PatientRecord) -> None:
    """What every command does with a record next must work too."""
    PatientRecord.model_validate(record.model_dump())
    for _, event in record.iter_events():
        assert event.timestamp.tzinfo is None
    assert record.last_timestamp is None or isinstance(record.last_timestamp, datetime)
    render_record(record, include_ids=False)
    chunk_record(record, COUNTER, ChunkingSettings(max_tokens=128))


def read_xml_or_error(data: bytes) -> PatientRecord | None:
    try:
        record = read_record(write("p1.xml", data))
    except MedalignError:
        return None
    check_record(record)
    return record


# -- EHR XML -----------------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_xml_from_arbitrary_bytes(data):
    read_xml_or_error(data)


@FUZZ
@given(st.one_of(mutated(RELEASE_XML), mutated(PAPER_XML)))
def test_xml_mutated_from_both_layouts(data):
    read_xml_or_error(data)


@FUZZ
@given(st.one_of(attribute_swapped(RELEASE_XML), attribute_swapped(PAPER_XML)))
def test_xml_with_odd_attribute_values(data):
    read_xml_or_error(data)


def test_the_seed_files_are_valid():
    """The mutations start from files that read: otherwise the tests above would only ever see errors."""
    assert read_xml_or_error(RELEASE_XML) is not None and read_xml_or_error(PAPER_XML) is not None
    assert read_instruction_table(write("t.tsv", INSTRUCTION_TSV))
    assert read_model_responses(write("r.tsv", RESPONSES_TSV))
    assert isinstance(load_run_config(write("c.yaml", RUN_CONFIG)), RunConfig)
    assert isinstance(load_prompt_template(write("p.yaml", PROMPT)), PromptTemplate)


# -- instruction tables ------------------------------------------------------------------------------------------


def read_tables_or_error(data: bytes) -> None:
    path = write("table.tsv", data)
    for reader in (read_instruction_table, read_model_responses):
        try:
            rows = reader(path)
        except MedalignError as error:
            assert error.path == str(path)
            continue
        for row in rows:
            assert getattr(row, "time_anchor", None) is None or row.time_anchor.tzinfo is None


@FUZZ
@given(st.one_of(st.binary(max_size=1500), mutated(INSTRUCTION_TSV), mutated(RESPONSES_TSV)))
def test_instruction_tables(data):
    read_tables_or_error(data)


# -- run configs and prompt templates ----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
CONFIG_KEYS = st.sampled_from(sorted(RunConfig.model_fields) + ["index", "budgetz"])


@st.composite
def structured_config(draw) -> bytes:
    """A YAML mapping with the config's own keys and arbitrary values: the validation, not the YAML parser."""
    import yaml

    raw = yaml.safe_load(RUN_CONFIG)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(CONFIG_KEYS)
        if key == "index" and draw(st.booleans()):
            base = raw["index"] if isinstance(raw.get("index"), dict) else {}
            raw["index"] = {**base, draw(st.sampled_from(["window_tokens", "overlap_tokens", "batch_size",
                                                                  "chunking", "index_dir"])): draw(JSON_VALUES)}
        else:
            raw[key] = draw(JSON_VALUES)
    return yaml.safe_dump(raw).encode()


def read_config_or_error(data: bytes) -> None:
    try:
        config = load_run_config(write("run.yaml", data))
    except MedalignError:
        return
    assert config.budgets and all(b > 0 for b in config.budgets)
    assert config.index.overlap_tokens < config.index.window_tokens


@FUZZ
@given(st.one_of(st.text(max_size=800).map(str.encode), mutated(RUN_CONFIG).filter(lambda b: _is_utf8(b)),
                 structured_config()))
def test_run_configs(data):
    read_config_or_error(data)


@FUZZ
@given(st.one_of(st.binary(max_size=800), mutated(RUN_CONFIG)))
def test_run_configs_from_arbitrary_bytes(data):
    read_config_or_error(data)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(PROMPT)), st.text(max_size=40), st.text(max_size=40))
def test_prompt_templates(data, context, question):
    try:
        template = load_prompt_template(write("prompt.yaml", data))
    except MedalignError:
        return
    prompt = template.render(question, context, datetime(2020, 1, 2, 3, 4))
    assert context in prompt


# -- indexes: complete or absent ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    from medalign_rag.index.builder import IndexBuilder, IndexSettings

    return IndexBuilder(IndexSettings(index_dir=tmp_path_factory.mktemp("fuzz-index")))


@settings(max_examples=max(6, EXAMPLES // 12), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated(RELEASE_XML), attribute_swapped(RELEASE_XML)))
def test_an_index_is_complete_or_absent(builder, data):
    from medalign_rag.index.store import load_index, patient_dir
    from medalign_rag.records.dataset import open_data_folder

    folder = WORK / "index-data"
    (folder / "ehrs").mkdir(parents=True, exist_ok=True)
    (folder / "ehrs" / "p1.xml").write_bytes(data)
    index_dir = builder.settings.index_dir
    report = builder.build(open_data_folder(folder), ["p1"], force=True)
    (result,) = report.results
    if result.status == "failed":
        # a failed rebuild leaves the previous index (complete) or none at all
        if patient_dir(index_dir, "p1").exists():
            load_index(index_dir, "p1")
        return
    index = load_index(index_dir, "p1")
    assert len(index.chunks) == result.chunks
    assert index.manifest.n_windows == result.windows
