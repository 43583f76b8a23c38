"""Seeded synthetic breast-cancer clinical notes with a known risk model.

Why this exists: a fine-tuned classifier can only be judged against the best score the data allows.
Here every note is written from sampled facts, the label is drawn from a logistic risk model over the
same facts, and each note's true probability is known, so the best possible ROC AUC of a data set is
the AUC of those probabilities (`best_possible_auc`).

Risk model (log-odds of death, one additive term per fact, `RiskCoefficients` holds the numbers):

    logit = intercept + age_per_year * (age - 60)
            + stage term (I..IV) + grade term (1..3)
            + ER-negative + PR-negative + HER2-positive
            + positive-lymph-node band (0, 1-3, 4-9, 10+)
            + one term per distant metastasis site (bone, lung, liver, brain)
            + ECOG performance status term (0..4)
            + one term per comorbidity (diabetes, heart failure, COPD, CKD; hypertension is filler)
            + response to treatment (complete, partial, stable, progression)
    P(death) = 1 / (1 + exp(-logit));  label ~ Bernoulli(P(death))

Most of the signal sits on categorical facts written as words (stage, metastases, ECOG, response,
comorbidities); age has a modest linear effect. Laterality and histology are facts without effect.

Two hospitals ("styles") write differently and differ in ONE effect:
- "narrative": long prose notes with filler (medications, social history, plans), negations, some
  quotes and line breaks. HER2-positive disease is HARMFUL there (+0.9 log-odds): that hospital had no
  access to HER2-directed therapy, so HER2 keeps its historical poor prognosis.
- "terse": another hospital's abbreviated one-liners ("67F IDC L breast pT2N1M0 stg IIB G2 ...").
  HER2-positive disease is PROTECTIVE there (-0.9 log-odds): its patients get trastuzumab-based
  regimens. Every other coefficient is shared. Its population is a little older and more advanced.

With these numbers the death rate is about 30% and the best possible AUC about 0.88 for both styles
(0.86-0.90 on a 2,000-note sample).
Nothing in a note names the outcome: the text is written from the facts alone (see FORBIDDEN_WORDS).

Randomness comes from three independent seeded streams per (style, seed): facts, labels and wording,
so rewording a template never changes which patients die.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from ml.errors import UserError

STYLES = ("narrative", "terse")

# Words that would state or hint at the outcome; no generated note may contain them.
FORBIDDEN_WORDS = (
    "died",
    "death",
    "dead",
    "deceased",
    "expired",
    "survived",
    "survival",
    "survivor",
    "hospice",
    "passed away",
    "mortality",
    "autopsy",
    "fatal",
    "comfort care",
    "end of life",
)

MET_SITES = ("bone", "lung", "liver", "brain")
COMORBIDITIES = ("diabetes", "heart failure", "COPD", "CKD", "hypertension")
RESPONSES = ("complete", "partial", "stable", "progression")


@dataclass(frozen=True)
class Patient:
    """The facts a note is written from; the risk model reads the same facts."""

    age: int
    laterality: str  # "left" | "right" (no effect)
    histology: str  # "ductal" | "lobular" | "mixed" (no effect)
    stage: int  # 1..4 (anatomic AJCC stage group)
    substage: str  # e.g. "IIB"; "IV" for stage 4
    t_category: str  # "T1".."T4"
    n_category: str  # "N0".."N3"
    positive_nodes: int  # positive axillary lymph nodes, consistent with n_category
    nodes_examined: int
    metastasis_sites: tuple[str, ...]  # subset of MET_SITES, non-empty exactly when stage == 4
    grade: int  # 1..3
    er_positive: bool
    pr_positive: bool
    her2_positive: bool
    ecog: int  # 0..4
    comorbidities: tuple[str, ...]  # subset of COMORBIDITIES
    response: str  # one of RESPONSES

    @property
    def m_category(self) -> str:
        return "M1" if self.metastasis_sites else "M0"

    @property
    def tnm(self) -> str:
        return f"{self.t_category}{self.n_category}{self.m_category}"


@dataclass(frozen=True)
class RiskCoefficients:
    """Log-odds of death for each fact; 0 marks the reference level."""

    intercept: float = -3.25  # a stage I, grade 1, ER+/PR+/HER2-, node-negative, ECOG 0 60-year-old
    age_per_year: float = 0.02  # modest: +0.2 log-odds per decade past 60
    stage: tuple[float, ...] = (0.0, 0.4, 0.9, 1.6)  # stage I, II, III, IV
    grade: tuple[float, ...] = (0.0, 0.25, 0.6)  # grade 1, 2, 3
    er_negative: float = 0.5  # loses endocrine therapy
    pr_negative: float = 0.25
    her2_positive: float = 0.9  # the effect that differs between hospitals (see module docstring)
    nodes: tuple[float, ...] = (0.0, 0.25, 0.5, 0.8)  # 0, 1-3, 4-9, 10+ positive nodes
    metastasis: tuple[tuple[str, float], ...] = (
        ("bone", 0.2),  # bone-only disease is the most indolent
        ("lung", 0.5),
        ("liver", 0.9),  # visceral crisis
        ("brain", 1.2),  # worst site
    )
    ecog: tuple[float, ...] = (0.0, 0.4, 1.0, 1.7, 2.4)  # ECOG 0..4
    comorbidity: tuple[tuple[str, float], ...] = (
        ("diabetes", 0.3),
        ("heart failure", 0.8),  # limits anthracyclines and trastuzumab
        ("COPD", 0.5),
        ("CKD", 0.5),
        ("hypertension", 0.0),  # common and harmless here: filler a model must learn to ignore
    )
    response: tuple[tuple[str, float], ...] = (
        ("complete", -1.0),
        ("partial", 0.0),
        ("stable", 0.5),
        ("progression", 1.6),
    )


NARRATIVE_RISK = RiskCoefficients()
TERSE_RISK = replace(NARRATIVE_RISK, her2_positive=-0.9)  # trastuzumab access: HER2+ becomes protective


@dataclass(frozen=True)
class Population:
    """How facts are distributed at one hospital."""

    age_mean: float
    age_sd: float
    stage_weights: tuple[float, ...]  # stage I..IV
    her2_rate: float
    comorbidity_rates: tuple[tuple[str, float], ...]  # at age 60; rises with age


NARRATIVE_POPULATION = Population(
    age_mean=60.0,
    age_sd=12.0,
    stage_weights=(0.30, 0.34, 0.21, 0.15),
    her2_rate=0.18,
    comorbidity_rates=(
        ("diabetes", 0.15),
        ("heart failure", 0.06),
        ("COPD", 0.08),
        ("CKD", 0.07),
        ("hypertension", 0.35),
    ),
)
TERSE_POPULATION = Population(
    age_mean=63.0,
    age_sd=11.0,
    stage_weights=(0.26, 0.33, 0.23, 0.18),
    her2_rate=0.22,
    comorbidity_rates=(
        ("diabetes", 0.18),
        ("heart failure", 0.07),
        ("COPD", 0.10),
        ("CKD", 0.08),
        ("hypertension", 0.40),
    ),
)

# (substage, T, N) combinations allowed in each anatomic stage group (AJCC, simplified).
STAGE_TNM = {
    1: (("IA", "T1", "N0"),),
    2: (("IIA", "T1", "N1"), ("IIA", "T2", "N0"), ("IIB", "T2", "N1"), ("IIB", "T3", "N0")),
    3: (
        ("IIIA", "T2", "N2"),
        ("IIIA", "T3", "N1"),
        ("IIIA", "T3", "N2"),
        ("IIIB", "T4", "N1"),
        ("IIIC", "T2", "N3"),
        ("IIIC", "T3", "N3"),
    ),
    4: tuple(("IV", t, n) for t in ("T1", "T2", "T3", "T4") for n in ("N0", "N1", "N2")),
}
NODE_RANGES = {"N0": (0, 0), "N1": (1, 3), "N2": (4, 9), "N3": (10, 18)}
# Sicker, more advanced patients are more often in poor performance status and respond less.
ECOG_WEIGHTS = {
    1: (0.55, 0.30, 0.10, 0.04, 0.01),
    2: (0.45, 0.33, 0.14, 0.06, 0.02),
    3: (0.30, 0.35, 0.20, 0.10, 0.05),
    4: (0.12, 0.28, 0.28, 0.20, 0.12),
}
RESPONSE_WEIGHTS = {
    1: (0.60, 0.25, 0.10, 0.05),
    2: (0.50, 0.30, 0.12, 0.08),
    3: (0.35, 0.33, 0.18, 0.14),
    4: (0.08, 0.30, 0.30, 0.32),
}
GRADE_WEIGHTS = {1: (0.35, 0.45, 0.20), 2: (0.22, 0.45, 0.33), 3: (0.15, 0.40, 0.45), 4: (0.12, 0.40, 0.48)}
MET_SITE_RATES = (("bone", 0.65), ("lung", 0.35), ("liver", 0.35), ("brain", 0.12))


def check_style(style: str) -> None:
    if style not in STYLES:
        raise UserError(f"unknown note style {style!r}; expected one of {', '.join(STYLES)}")


def risk_for(style: str) -> RiskCoefficients:
    check_style(style)
    return NARRATIVE_RISK if style == "narrative" else TERSE_RISK


def population_for(style: str) -> Population:
    check_style(style)
    return NARRATIVE_POPULATION if style == "narrative" else TERSE_POPULATION


def stream(style: str, seed: int, purpose: str) -> random.Random:
    """An independent RNG per purpose; string seeds hash with SHA-512, stable across runs."""
    return random.Random(f"synth:{style}:{seed}:{purpose}")


# ---------------------------------------------------------------- facts


def sample_patient(rng: random.Random, population: Population) -> Patient:
    age = round(min(92.0, max(28.0, rng.gauss(population.age_mean, population.age_sd))))
    stage = rng.choices((1, 2, 3, 4), weights=population.stage_weights)[0]
    substage, t_category, n_category = rng.choice(STAGE_TNM[stage])
    low, high = NODE_RANGES[n_category]
    positive_nodes = rng.randint(low, high)
    er_positive = rng.random() < 0.75
    # PR follows ER: PR-positive, ER-negative tumours are rare.
    pr_positive = rng.random() < (0.82 if er_positive else 0.08)
    return Patient(
        age=age,
        laterality=rng.choice(("left", "right")),
        histology=rng.choices(("ductal", "lobular", "mixed"), weights=(0.78, 0.15, 0.07))[0],
        stage=stage,
        substage=substage,
        t_category=t_category,
        n_category=n_category,
        positive_nodes=positive_nodes,
        nodes_examined=positive_nodes + rng.randint(1 if positive_nodes == 0 else 0, 16),
        metastasis_sites=sample_metastases(rng) if stage == 4 else (),
        grade=rng.choices((1, 2, 3), weights=GRADE_WEIGHTS[stage])[0],
        er_positive=er_positive,
        pr_positive=pr_positive,
        her2_positive=rng.random() < population.her2_rate,
        ecog=rng.choices(range(5), weights=ECOG_WEIGHTS[stage])[0],
        comorbidities=sample_comorbidities(rng, population, age),
        response=rng.choices(RESPONSES, weights=RESPONSE_WEIGHTS[stage])[0],
    )


def sample_metastases(rng: random.Random) -> tuple[str, ...]:
    while True:
        sites = tuple(site for site, rate in MET_SITE_RATES if rng.random() < rate)
        if sites:
            return sites


def sample_comorbidities(rng: random.Random, population: Population, age: int) -> tuple[str, ...]:
    # Chronic disease roughly doubles between 50 and 80.
    age_factor = min(2.0, max(0.4, 1.0 + (age - 60) / 30))
    return tuple(name for name, rate in population.comorbidity_rates if rng.random() < rate * age_factor)


def sample_patients(n: int, seed: int, style: str = "narrative") -> list[Patient]:
    population = population_for(style)
    rng = stream(style, seed, "facts")
    return [sample_patient(rng, population) for _ in range(n)]


# ---------------------------------------------------------------- risk


def node_band(positive_nodes: int) -> int:
    if positive_nodes == 0:
        return 0
    if positive_nodes <= 3:
        return 1
    return 2 if positive_nodes <= 9 else 3


def log_odds(patient: Patient, risk: RiskCoefficients) -> float:
    metastasis = dict(risk.metastasis)
    comorbidity = dict(risk.comorbidity)
    return (
        risk.intercept
        + risk.age_per_year * (patient.age - 60)
        + risk.stage[patient.stage - 1]
        + risk.grade[patient.grade - 1]
        + (0.0 if patient.er_positive else risk.er_negative)
        + (0.0 if patient.pr_positive else risk.pr_negative)
        + (risk.her2_positive if patient.her2_positive else 0.0)
        + risk.nodes[node_band(patient.positive_nodes)]
        + sum(metastasis[site] for site in patient.metastasis_sites)
        + risk.ecog[patient.ecog]
        + sum(comorbidity[name] for name in patient.comorbidities)
        + dict(risk.response)[patient.response]
    )


def true_probability(patient: Patient, style: str) -> float:
    """P(death) under the named hospital's risk model."""
    return 1.0 / (1.0 + math.exp(-log_odds(patient, risk_for(style))))


# ---------------------------------------------------------------- narrative wording


def pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def stage_phrase(p: Patient, rng: random.Random) -> str:
    arabic = f"{p.stage}{p.substage.lstrip('IV')}"
    if p.stage == 4:
        return pick(
            rng, "stage IV metastatic", "de novo stage IV", "stage 4 metastatic", "metastatic (stage IV)"
        )
    return pick(
        rng,
        f"stage {p.substage}",
        f"stage {arabic}",
        f"clinical stage {p.substage} ({p.tnm})",
        f"pathologic stage {p.substage}",
        f"stage {p.substage}, {p.tnm},",
    )


def histology_phrase(p: Patient, rng: random.Random) -> str:
    return {
        "ductal": pick(rng, "invasive ductal carcinoma", "infiltrating ductal carcinoma", "IDC"),
        "lobular": pick(rng, "invasive lobular carcinoma", "infiltrating lobular carcinoma", "ILC"),
        "mixed": pick(rng, "mixed ductal and lobular carcinoma", "invasive mammary carcinoma"),
    }[p.histology]


def opening(p: Patient, rng: random.Random) -> str:
    woman = pick(rng, "woman", "female", "female patient", "lady")
    if p.age >= 55:
        woman = pick(rng, woman, "postmenopausal woman")
    elif p.age < 48:
        woman = pick(rng, woman, "premenopausal woman")
    cancer = f"{stage_phrase(p, rng)} {histology_phrase(p, rng)} of the {p.laterality} breast"
    return pick(
        rng,
        f"{p.age}-year-old {woman} with {cancer}.",
        f"The patient is a {p.age} year old {woman} with {cancer}.",
        f"Patient is a {p.age}-year-old {woman} seen today for follow-up of {cancer}.",
        f"This is a {p.age} yo {woman} with a history of {cancer}, here for a scheduled visit.",
        f"{p.age} year old {woman} presenting to oncology clinic with {cancer}.",
    )


def grade_phrase(p: Patient, rng: random.Random) -> str:
    words = {
        1: ("grade 1", "low grade", "well differentiated", "Nottingham grade 1"),
        2: ("grade 2", "intermediate grade", "moderately differentiated", "Nottingham grade 2"),
        3: ("grade 3", "high grade", "poorly differentiated", "Nottingham grade 3"),
    }
    return rng.choice(words[p.grade])


def receptor_sentence(p: Patient, rng: random.Random) -> str:
    er, pr = ("positive" if p.er_positive else "negative"), ("positive" if p.pr_positive else "negative")
    marks = {True: "+", False: "-"}
    her2_words = (
        pick(rng, "HER2 amplified", "HER2 positive", "HER2 3+ by IHC")
        if p.her2_positive
        else pick(rng, "HER2 negative", "HER2 not amplified", "HER2 1+ by IHC")
    )
    grade = grade_phrase(p, rng)
    options = [
        f"Pathology showed a {grade} tumor, ER {er}, PR {pr}, {her2_words}.",
        f"Receptor status: ER{marks[p.er_positive]}, PR{marks[p.pr_positive]}, "
        f"HER2{marks[p.her2_positive]}. Tumor was {grade}.",
        f"The tumor was {grade}, estrogen receptor {er} and progesterone receptor {pr}, {her2_words}.",
    ]
    if not (p.er_positive or p.pr_positive or p.her2_positive):
        options.append(f"Biopsy revealed {grade}, triple-negative disease (ER, PR and HER2 negative).")
    if p.er_positive and p.pr_positive:
        options.append(f"Hormone receptor positive (ER and PR positive), {her2_words}, {grade}.")
    return rng.choice(options)


def node_sentence(p: Patient, rng: random.Random) -> str:
    k, m = p.positive_nodes, p.nodes_examined
    if k == 0:
        return pick(
            rng,
            "Sentinel lymph node biopsy was negative.",
            f"All {m} lymph nodes examined were negative for carcinoma.",
            "Axillary nodes negative (0 positive).",
            "She was node negative.",
        )
    plural = "node" if k == 1 else "nodes"
    return pick(
        rng,
        f"{k} of {m} axillary lymph nodes were positive.",
        f"Axillary dissection showed {k} positive {plural} out of {m}.",
        f"Nodal status: {k} positive lymph {plural}.",
        f"There were {k} involved axillary lymph {plural}.",
    )


def metastasis_sentence(p: Patient, rng: random.Random) -> str:
    if not p.metastasis_sites:
        return pick(
            rng,
            "Staging CT and bone scan showed no evidence of distant metastasis.",
            "No distant metastatic disease on staging imaging.",
            "PET/CT was negative for distant disease.",
            "Staging workup negative for metastases.",
            "",
        )
    plain = [f"{site}" for site in p.metastasis_sites]
    medical = {"bone": "osseous", "lung": "pulmonary", "liver": "hepatic", "brain": "intracranial"}
    technical = [medical[site] for site in p.metastasis_sites]
    return pick(
        rng,
        f"Imaging demonstrates metastases to the {join_words(plain)}.",
        f"PET/CT shows {join_words(technical)} metastatic disease.",
        f"Sites of metastatic disease: {', '.join(plain)}.",
        f"She has known {join_words(plain)} metastases.",
    )


def ecog_sentence(p: Patient, rng: random.Random) -> str:
    described = {
        0: "fully active without restriction",
        1: "restricted in strenuous activity but ambulatory and able to do light work",
        2: "ambulatory and capable of self-care but unable to work, up more than half the day",
        3: "capable of only limited self-care and confined to bed or chair most of the day",
        4: "completely disabled and bedbound",
    }[p.ecog]
    return pick(
        rng,
        f"ECOG performance status {p.ecog}.",
        f"Performance status: ECOG {p.ecog}.",
        f"She is {described} (ECOG {p.ecog}).",
        f"ECOG PS {p.ecog}; she is {described}.",
        f"Functionally she is {described}.",
    )


def comorbidity_sentence(p: Patient, rng: random.Random) -> str:
    if not p.comorbidities:
        return pick(
            rng,
            "No significant past medical history.",
            "She is otherwise healthy.",
            "Past medical history is unremarkable.",
        )
    words = {
        "diabetes": pick(rng, "type 2 diabetes", "diabetes mellitus", "diabetes on metformin"),
        "heart failure": pick(
            rng, "congestive heart failure", "heart failure with reduced ejection fraction"
        ),
        "COPD": pick(rng, "COPD", "chronic obstructive pulmonary disease"),
        "CKD": pick(rng, "chronic kidney disease stage 3", "CKD"),
        "hypertension": pick(rng, "hypertension", "essential hypertension"),
    }
    items = [words[name] for name in p.comorbidities]
    return pick(
        rng,
        f"Past medical history is notable for {join_words(items)}.",
        f"Comorbidities include {join_words(items)}.",
        f"PMH: {', '.join(items)}.",
    )


def treatment_sentence(p: Patient, rng: random.Random) -> str:
    if p.stage == 4:
        regimen = pick(
            rng,
            "letrozole with palbociclib" if p.er_positive else "weekly paclitaxel",
            "capecitabine",
            "first-line systemic therapy",
        )
        extra = ""
        if "brain" in p.metastasis_sites:
            extra = pick(rng, " She also received stereotactic radiosurgery to the brain lesions.", "")
        elif "bone" in p.metastasis_sites:
            extra = pick(rng, " Zoledronic acid was added for bone health.", "")
        return f"She was started on {regimen}.{extra}"
    surgery = pick(rng, "lumpectomy", "partial mastectomy", "total mastectomy", "modified radical mastectomy")
    chemo = pick(rng, "dose-dense AC followed by paclitaxel", "TC for four cycles", "AC-T")
    endocrine = (
        pick(rng, " followed by anastrozole", " and tamoxifen", " with letrozole") if p.er_positive else ""
    )
    return pick(
        rng,
        f"She underwent {surgery} and received {chemo}{endocrine}.",
        f"Treatment to date: neoadjuvant {chemo}, then {surgery}{endocrine}.",
        f"She completed {chemo} and {surgery}, followed by adjuvant radiation{endocrine}.",
    )


def her2_access_sentence(p: Patient, rng: random.Random) -> str:
    if not p.her2_positive:
        return ""
    return pick(
        rng,
        "HER2-directed therapy was not available to her.",
        "Trastuzumab was discussed but could not be obtained.",
        "",
        "",
    )


def response_sentence(p: Patient, rng: random.Random) -> str:
    return {
        "complete": pick(
            rng,
            "Restaging shows a complete response.",
            "Most recent imaging shows no evidence of disease, consistent with complete response.",
            "She achieved a complete response to therapy.",
            "Surgical pathology showed a pathologic complete response.",
        ),
        "partial": pick(
            rng,
            "Restaging shows a partial response.",
            "Interval imaging shows decrease in size of known disease, a partial response.",
            "She had a partial response to treatment.",
        ),
        "stable": pick(
            rng,
            "Restaging shows stable disease.",
            "Imaging is unchanged compared with prior, consistent with stable disease.",
            "Disease has remained stable on current therapy.",
        ),
        "progression": pick(
            rng,
            "Restaging shows disease progression.",
            "Unfortunately imaging shows progression of disease with new lesions.",
            "There is progressive disease despite treatment.",
            "CT shows interval growth of known lesions, consistent with progression.",
        ),
    }[p.response]


def filler_sentences(p: Patient, rng: random.Random) -> list[str]:
    """Sentences without effect on risk, kept consistent with the facts they could contradict."""
    home = ("She lives alone, and her daughter visits most days.", "Retired, lives with her partner.")
    if p.ecog <= 1:
        home += ("She lives with her husband and is independent at home.", "She works as a teacher.")
    exam = ("Vital signs stable. Breast exam without new masses.",)
    if p.ecog <= 2:
        exam += ("Exam: well appearing, no palpable axillary adenopathy, surgical scar well healed.",)
    options = [
        rng.choice(home),
        rng.choice(exam),
        pick(
            rng,
            "Former smoker, quit 15 years ago.",
            "Never smoker. Drinks a glass of wine on weekends.",
            "Denies tobacco, alcohol or drug use.",
        ),
        pick(
            rng,
            "She denies chest pain, fevers or night sweats.",
            "Review of systems is negative for headache, cough and abdominal pain.",
            "She reports mild fatigue, but denies nausea or vomiting.",
            "Denies new bone pain.",
        ),
        pick(
            rng,
            'She states she feels "tired but hanging in there".',
            'Patient says she is "doing okay, just worried about the scans".',
            'She describes her energy as "about the same as last visit".',
        ),
        pick(
            rng,
            "Family history: mother had breast cancer at 70. Genetic testing was negative for BRCA1/2.",
            "Family history is notable for a sister with ovarian cancer.",
            "No family history of breast or ovarian cancer.",
        ),
        pick(
            rng,
            "Medications reviewed and reconciled, including calcium and vitamin D.",
            "Current medications include ondansetron as needed and a multivitamin.",
            "She takes acetaminophen as needed.",
        ),
    ]
    return rng.sample(options, k=rng.randint(0, 3))


def plan_sentence(rng: random.Random) -> str:
    return pick(
        rng,
        "Plan: continue current therapy, labs today, return to clinic in 3 months.",
        "Will repeat imaging in 3 months and follow up with results.",
        "Discussed the plan with the patient, questions answered. Follow up in 6 weeks.",
        "Continue current regimen; refer to physical therapy; see back in clinic after restaging.",
        "Plan to review at tumor board, then follow up next month.",
    )


def narrative_note(p: Patient, rng: random.Random) -> str:
    history = [receptor_sentence(p, rng), node_sentence(p, rng), metastasis_sentence(p, rng)]
    course = [treatment_sentence(p, rng), her2_access_sentence(p, rng), response_sentence(p, rng)]
    status = [ecog_sentence(p, rng), comorbidity_sentence(p, rng), *filler_sentences(p, rng)]
    rng.shuffle(status)
    sections = [
        [opening(p, rng), *history],
        course,
        status,
        [plan_sentence(rng)],
    ]
    texts = [" ".join(s for s in section if s) for section in sections]
    if rng.random() < 0.4:
        headings = ("HPI:", "Oncologic history:", "Interval history:", "Assessment and plan:")
        return "\n".join(f"{heading} {text}" for heading, text in zip(headings, texts, strict=True))
    return " ".join(texts)


# ---------------------------------------------------------------- terse wording


def terse_note(p: Patient, rng: random.Random) -> str:
    side = {"left": pick(rng, "L", "Lt", "left"), "right": pick(rng, "R", "Rt", "right")}[p.laterality]
    histology = {"ductal": "IDC", "lobular": "ILC", "mixed": pick(rng, "mixed IDC/ILC", "IMC")}[p.histology]
    parts = [
        pick(rng, f"{p.age}F", f"{p.age} yo F", f"{p.age}yoF"),
        f"{histology} {side} {pick(rng, 'breast', 'br ca', 'breast ca')}",
        f"{pick(rng, 'p', 'c', '')}{p.tnm} {pick(rng, 'stg', 'stage', 'st')} {p.substage}",
        pick(rng, f"G{p.grade}", f"gr {p.grade}"),
        terse_receptors(p, rng),
        terse_nodes(p, rng),
    ]
    mets = terse_metastases(p, rng)
    if mets:
        parts.append(mets)
    parts.append(pick(rng, f"ECOG{p.ecog}", f"ECOG {p.ecog}", f"PS {p.ecog}"))
    parts.append(terse_comorbidities(p, rng))
    parts.append(f"{terse_treatment(p, rng)}, {terse_response(p, rng)}")
    if rng.random() < 0.3:
        parts.append(pick(rng, "RTC 3mo", "f/u w/ onc", "restage 12wk"))
    return rng.choices((" ", "; ", ". ", "\n"), weights=(0.55, 0.2, 0.15, 0.1))[0].join(
        part for part in parts if part
    )


def terse_receptors(p: Patient, rng: random.Random) -> str:
    def sign(positive: bool) -> str:
        return "+" if positive else "-"

    if not (p.er_positive or p.pr_positive or p.her2_positive) and rng.random() < 0.5:
        return "TNBC"
    return pick(
        rng,
        f"ER{sign(p.er_positive)}/PR{sign(p.pr_positive)}/HER2{sign(p.her2_positive)}",
        f"ER{sign(p.er_positive)} PR{sign(p.pr_positive)} HER2{sign(p.her2_positive)}",
    )


def terse_nodes(p: Patient, rng: random.Random) -> str:
    if p.positive_nodes == 0:
        return pick(rng, "SLNB neg", f"LN 0/{p.nodes_examined}", "node neg")
    return pick(
        rng, f"{p.positive_nodes}/{p.nodes_examined} LN+", f"LN {p.positive_nodes}/{p.nodes_examined}"
    )


def terse_metastases(p: Patient, rng: random.Random) -> str:
    if not p.metastasis_sites:
        return pick(rng, "no dist mets", "", "")
    return pick(
        rng,
        f"mets: {', '.join(p.metastasis_sites)}",
        " + ".join(p.metastasis_sites) + " mets",
    )


def terse_comorbidities(p: Patient, rng: random.Random) -> str:
    if not p.comorbidities:
        return pick(rng, "no sig PMH", "")
    words = {"diabetes": "DM2", "heart failure": "CHF", "COPD": "COPD", "CKD": "CKD3", "hypertension": "HTN"}
    return pick(rng, "PMH ", "") + " ".join(words[name] for name in p.comorbidities)


def terse_treatment(p: Patient, rng: random.Random) -> str:
    # This hospital gives trastuzumab/pertuzumab (HP) to every HER2-positive patient.
    anti_her2 = "+HP" if p.her2_positive else ""
    if p.stage == 4:
        regimen = pick(rng, "letrozole+palbo" if p.er_positive else "wkly taxol", "cape")
        return f"on {regimen}{anti_her2}"
    surgery = pick(rng, "lumpectomy", "MRM", "mastectomy")
    chemo = "TCHP" if p.her2_positive else pick(rng, "AC-T", "TC x4", "ddAC-T")
    endocrine = pick(rng, ", on AI", ", on tam", "") if p.er_positive else ""
    return f"s/p {surgery}+{chemo}{endocrine}"


def terse_response(p: Patient, rng: random.Random) -> str:
    return {
        "complete": pick(rng, "CR", "pCR", "NED on restaging"),
        "partial": pick(rng, "PR to tx", "partial resp", "resp: PR"),
        "stable": pick(rng, "SD", "stable dz", "resp: SD"),
        "progression": pick(rng, "PD", "POD w/ new lesions", "progressing"),
    }[p.response]


# ---------------------------------------------------------------- data sets


def write_note(patient: Patient, style: str, rng: random.Random) -> str:
    return narrative_note(patient, rng) if style == "narrative" else terse_note(patient, rng)


def generate(
    n: int, style: str = "narrative", seed: int = 0, include_truth: bool = False, effect_scale: float = 1.0
) -> pd.DataFrame:
    """`n` notes with columns Text and label (1 = died), plus true_prob when include_truth.

    `effect_scale` multiplies every effect (not the intercept): below 1 the facts say less about the
    outcome and the best possible AUC falls, so a benchmark can try its defaults on weaker signals.
    """
    check_style(style)
    patients = sample_patients(n, seed, style)
    label_rng = stream(style, seed, "labels")
    text_rng = stream(style, seed, "text")
    probabilities = [_scaled_probability(patient, style, effect_scale) for patient in patients]
    frame = pd.DataFrame(
        {
            "Text": [write_note(patient, style, text_rng) for patient in patients],
            "label": [int(label_rng.random() < prob) for prob in probabilities],
        }
    )
    if include_truth:
        frame["true_prob"] = probabilities
    return frame


def _scaled_probability(patient: Patient, style: str, effect_scale: float) -> float:
    if effect_scale == 1.0:
        return true_probability(patient, style)
    risk = risk_for(style)
    logit = risk.intercept + effect_scale * (log_odds(patient, risk) - risk.intercept)
    return 1.0 / (1.0 + math.exp(-logit))


def best_possible_auc(frame: pd.DataFrame) -> float:
    """ROC AUC that the true probabilities reach on these labels: the ceiling for any model."""
    return float(roc_auc_score(frame["label"], frame["true_prob"]))


def write_csv(frame: pd.DataFrame, path: str | Path, include_truth: bool = False) -> None:
    columns = ["Text", "label", "true_prob"] if include_truth else ["Text", "label"]
    frame[columns].to_csv(path, index=False, encoding="utf-8")
