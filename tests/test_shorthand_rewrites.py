"""The third held-out shorthand rewrite (benchmarks/ablation/events/make_shorthand_test2.py) keeps each question's
meaning: its patient id, and a drug's name where a salt word looks like a lab (sodium, calcium, potassium)."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest

EVENTS = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation" / "events"


@pytest.fixture(scope="module")
def rewriter():
    spec = importlib.util.spec_from_file_location("make_shorthand_test2", EVENTS / "make_shorthand_test2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lab_words_become_symbols_but_drug_salts_do_not(rewriter):
    assert rewriter.rewrite("What was the maximum sodium of patient 10020187?") == "max Na of pt 10020187?"
    assert rewriter.rewrite("What is patient 10037975's average value for potassium, whole blood in 02/2185?") == \
        "pt 10037975's avg value for K, whole blood in 2/2185?"
    drugs = ("Was patient 10005909 prescribed with the medication enoxaparin sodium, docusate sodium, or 5% dextrose "
             "in their last hospital visit?")
    assert rewriter.rewrite(drugs) == "pt 10005909 rx'd with med enoxaparin sodium, Colace, or D5W in last adm?"
    for drug in ("calcium carbonate", "rosuvastatin calcium", "potassium chl 20 meq", "glucose gel"):
        assert drug in rewriter.rewrite(f"How much {drug} was prescribed to patient 10021938?")


def test_the_lab_pt_is_not_confused_with_the_patient(rewriter):
    assert rewriter.rewrite("Was patient 10000032 tested on pt in 08/2180?") == \
        "pt 10000032 tested on prothrombin time in 8/2180?"


def test_committed_rewrites_keep_every_patient_id_and_are_all_rewritten(rewriter):
    with open(EVENTS / "shorthand_test2.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(rewriter.rewrite(row["question"]) == row["shorthand"] for row in rows)
    for row in rows:
        assert re.findall(r"\b\d{8}\b", row["question"]) == re.findall(r"\b\d{8}\b", row["shorthand"])
        assert row["shorthand"] != row["question"].strip() and row["shorthand"].endswith("?")
