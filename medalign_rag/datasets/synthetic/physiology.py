"""Latent physiology: what a patient's vitals and labs truly are at a moment, and what a measurement reports.

Baselines are drawn once per patient; conditions that show, active drugs and the current acute problem shift
them (read from the `PatientState`, never changed here).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Sequence

from medalign_rag.datasets.synthetic.state import PatientState
from medalign_rag.datasets.synthetic.vocabulary import MEASURES


def egfr_ckd_epi(creatinine: float, age: float, female: bool) -> float:
    """CKD-EPI 2021 (race-free) estimate, as labs report it."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = 142.0 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.2 * 0.9938**age
    return value * (1.012 if female else 1.0)


class Physiology:
    """One patient's body: baselines drawn from the patient's random stream, values that follow their state."""

    def __init__(self, patient: PatientState) -> None:
        self.patient = patient
        rng, female = patient.rng, patient.female
        self.height_m = rng.uniform(1.52, 1.72) if female else rng.uniform(1.63, 1.88)
        bmi0 = rng.uniform(30.5, 38.0) if "obesity" in patient.onset else rng.uniform(22.0, 29.5)
        self.weight0 = bmi0 * self.height_m**2
        self.weight_drift = rng.uniform(-0.8, 1.0)  # kg per year
        self.sbp_normal = rng.uniform(116, 130)
        self.sbp_high = rng.uniform(150, 166)
        self.hr0 = rng.uniform(62, 82)
        self.rr0 = rng.choice((14, 15, 16, 16, 17, 18))
        self.a1c_normal = rng.uniform(5.1, 5.8)
        self.a1c_diabetic = rng.uniform(7.6, 9.6)
        self.a1c_slope = rng.uniform(0.12, 0.32)  # per year of diabetes, before treatment
        self.creatinine0 = rng.uniform(0.6, 0.9) if female else rng.uniform(0.8, 1.1)
        self.ckd_slope = rng.uniform(0.05, 0.11)  # mg/dL per year once kidney disease shows
        self.ckd_egfr = rng.uniform(47, 57)
        self.hemoglobin0 = rng.uniform(12.4, 14.2) if female else rng.uniform(13.6, 15.6)
        self.platelets0 = rng.uniform(180, 320)
        self.ldl_normal = rng.uniform(90, 135)
        self.ldl_high = rng.uniform(165, 200)
        self.hdl0 = rng.uniform(45, 68) if female else rng.uniform(36, 55)
        self.tg0 = rng.uniform(90, 200)
        self.tsh_normal = rng.uniform(1.1, 3.0)
        self.tsh_high = rng.uniform(7.5, 13.0)
        self.uacr0 = rng.uniform(8, 25)
        self.bnp0 = rng.uniform(140, 320)

    def _effect(self, measure: str) -> float:
        drugs = self.patient.active.values()
        return sum(delta for drug in drugs for name, delta in drug.effects if name == measure)

    def _acute_effect(self, measure: str) -> float:
        patient = self.patient
        if patient.acute is None:
            return 0.0
        problem, severity = patient.acute
        if measure == "hemoglobin":
            severity = max(severity, 0.6)  # blood loss is made up over weeks, not within the stay
        return severity * sum(delta for name, delta in problem.effects if name == measure)

    def _since_onset(self, key: str, when: datetime) -> float:
        started = self.patient.diagnosed.get(key, when)
        return max(0.0, (when - started).days / 365.25)

    def true_value(self, key: str, when: datetime) -> float:
        """The latent physiology at `when` (before measurement noise)."""
        patient = self.patient
        years = patient.years(when)
        if key == "sbp":
            base = self.sbp_high if patient.shows("hypertension") else self.sbp_normal
            return base + 0.5 * years + self._effect("sbp") + self._acute_effect("sbp")
        if key == "hr":
            base = self.hr0 + (32 if patient.shows("atrial_fibrillation") and "apixaban" not in patient.active else 0)
            return base + self._effect("hr") + self._acute_effect("hr")
        if key == "weight":
            return self.weight0 + self.weight_drift * years + self._effect("weight") + self._acute_effect("weight")
        if key == "a1c":
            if not patient.shows("t2dm"):
                return self.a1c_normal + 0.025 * years
            return max(5.6, self.a1c_diabetic + self.a1c_slope * self._since_onset("t2dm", when) + self._effect("a1c"))
        if key == "creatinine":
            value = self.creatinine0
            if patient.shows("ckd"):
                value = max(value, self._ckd_creatinine(when)) + self.ckd_slope * self._since_onset("ckd", when)
            return value * (1.0 + self._acute_effect("creatinine"))
        if key == "hemoglobin":
            value = self.hemoglobin0 - (0.9 if patient.shows("ckd") else 0.0)
            if patient.bleed_at is not None and when > patient.bleed_at:
                value -= 2.0 * math.exp(-(when - patient.bleed_at).days / 40.0)
            return value + self._acute_effect("hemoglobin")
        if key == "ldl":
            base = self.ldl_high if patient.shows("hyperlipidemia") else self.ldl_normal
            return base * (1.0 + self._effect("ldl"))
        if key == "tsh":
            base = self.tsh_high if patient.shows("hypothyroidism") else self.tsh_normal
            return base * (1.0 + self._effect("tsh"))
        raise KeyError(key)

    def _ckd_creatinine(self, when: datetime) -> float:
        """The creatinine at which this patient's eGFR sits at its (stage 3a) value when kidney disease shows."""
        patient = self.patient
        kappa = 0.7 if patient.female else 0.9
        scale = 142.0 * 0.9938 ** patient.age(when) * (1.012 if patient.female else 1.0)
        return kappa * (self.ckd_egfr / scale) ** (-1 / 1.2)

    def measure(self, key: str, when: datetime) -> float:
        """A measured value: latent state plus noise, clipped to what a lab would report."""
        patient = self.patient
        g = patient.rng.gauss
        acute = self._acute_effect
        if key == "sbp":
            return max(82.0, self.true_value("sbp", when) + g(0, 7))
        if key == "dbp":
            return max(48.0, 0.58 * self.true_value("sbp", when) + 6 + g(0, 4))
        if key == "hr":
            return max(48.0, self.true_value("hr", when) + g(0, 5))
        if key == "rr":
            return self.rr0 + acute("rr") + g(0, 1.2)
        if key == "temp":
            return 36.8 + acute("temp") + g(0, 0.2)
        if key == "spo2":
            base = 97.5 - (3.0 if patient.shows("copd") else 0.0) + self._effect("spo2")
            return min(100.0, base + acute("spo2") + g(0, 1.0))
        if key == "weight":
            return self.true_value("weight", when) + g(0, 0.6)
        if key == "a1c":
            return min(13.5, max(4.6, self.true_value("a1c", when) + g(0, 0.15)))
        if key == "glucose":
            if patient.acute is not None and patient.acute[0].key == "hypoglycemia":
                return patient.rng.uniform(38, 52) if patient.acute[1] > 0.6 else patient.rng.uniform(70, 110)
            # fasting draws run below the A1c-estimated average glucose
            return max(65.0, 28.7 * self.true_value("a1c", when) - 62.0 + g(0, 10))
        if key == "creatinine":
            return max(0.4, self.true_value("creatinine", when) * (1 + g(0, 0.04)))
        if key == "bun":
            return max(7.0, 14 + 10 * (self.true_value("creatinine", when) - 0.9) + acute("bun") + g(0, 2.5))
        if key == "sodium":
            on_thiazide = "hydrochlorothiazide" in patient.active and patient.traits["thiazide_hyponatremia"]
            thiazide = -4.0 if on_thiazide else 0.0
            return 140 + self._effect("sodium") + thiazide + g(0, 1.8)
        if key == "potassium":
            ckd = 0.3 if patient.shows("ckd") else 0.0
            return min(6.4, max(3.0, 4.1 + self._effect("potassium") + ckd + acute("potassium") + g(0, 0.25)))
        if key == "chloride":
            return 103 + g(0, 2)
        if key == "co2":
            return 25 + acute("co2") + g(0, 1.6)
        if key == "calcium":
            return 9.4 + g(0, 0.25)
        if key == "wbc":
            return max(3.2, 7.0 + acute("wbc") + g(0, 1.2))
        if key == "hemoglobin":
            return max(6.0, self.true_value("hemoglobin", when) + g(0, 0.3))
        if key == "platelets":
            return max(90.0, self.platelets0 + g(0, 22))
        if key == "ldl":
            return max(40.0, self.true_value("ldl", when) + g(0, 8))
        if key == "hdl":
            return max(25.0, self.hdl0 + g(0, 4))
        if key == "triglycerides":
            return max(50.0, self.tg0 + (45 if patient.shows("t2dm") else 0) + g(0, 20))
        if key == "tsh":
            return max(0.05, self.true_value("tsh", when) * (1 + g(0, 0.1)))
        if key == "uacr":
            grow = 9.0 * self._since_onset("t2dm", when) + (60.0 if patient.shows("ckd") else 0.0)
            return max(3.0, (self.uacr0 + grow) * (1 + self._effect("uacr")) * (1 + g(0, 0.15)))
        if key == "troponin":
            return patient.rng.choice((0.01, 0.01, 0.02, 0.02, 0.03))
        if key == "bnp":
            base = self.bnp0 if patient.shows("heart_failure") else 40.0
            return max(10.0, base + 1500 * acute("bnp") + g(0, 25))
        if key == "inr":
            return 1.0 + abs(g(0, 0.08))
        raise KeyError(key)

    def panel(self, keys: Sequence[str], when: datetime) -> dict[str, float]:
        """Measured values of `keys` as a lab reports them (rounded to each measure's decimals), in `keys` order.

        eGFR is computed from the panel's creatinine, BMI from its weight, total cholesterol from its parts.
        """
        values: dict[str, float] = {}
        for key in keys:
            spec = MEASURES[key]
            if key == "egfr":
                # The default is evaluated (and draws its noise) even when the panel has a creatinine.
                creatinine = values.get("creatinine", self.measure("creatinine", when))
                value = min(120.0, egfr_ckd_epi(creatinine, self.patient.age(when), self.patient.female))
            elif key == "bmi":
                value = values["weight"] / self.height_m**2
            elif key == "cholesterol":
                continue  # computed from its parts below, written in panel order
            else:
                value = self.measure(key, when)
            values[key] = float(spec.fmt(value))
        if "cholesterol" in keys:
            values["cholesterol"] = float(round(values["ldl"] + values["hdl"] + values["triglycerides"] / 5))
        return {key: values[key] for key in keys}  # report order, not computation order
