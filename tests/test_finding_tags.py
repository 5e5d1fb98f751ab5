"""Finding tags: hand-written sentences per finding tag, the phantom's template sentences, and the
parser against the generator's ground truth over generated cohorts of the pre-training preset.

Every hand-written example lists the finding tags it expects to be 1 or 0 (or -1 where the point
is that it stays -1); every other finding tag must be -1, so a stray finding fails the test too.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosmoskit.data.phantom import PhantomConfig, generate_cohort, make_case, make_slices
from mosmoskit.data.phantom_reports import (
    NORMAL_DENIES,
    ORGAN_TEMPLATES,
    PAIR_TEMPLATES,
    OrganFinding,
    compose_report,
    finding_tags_from_findings,
)
from mosmoskit.reports import extract_tags
from mosmoskit.reports.findings import (
    FINDING_KINDS,
    FINDING_TABLE,
    FINDING_TAGS,
    explain_findings,
    extract_findings,
    extract_findings_batch,
    finding_names,
    finding_tag,
)

BTCV_FINDINGS = finding_names("btcv")
MIN_AGREEMENT = 0.98

# (report, expected finding tags that are not -1, or whose -1 is the point)
EXAMPLES: list[tuple[str, dict[str, int]]] = [
    # --- liver
    ("Hepatomegaly, the liver measures 19 cm.", {"hepatomegaly": 1}),
    ("The liver is enlarged, measuring 21 cm craniocaudally.", {"hepatomegaly": 1}),
    ("No hepatomegaly.", {"hepatomegaly": 0}),
    ("Liver normal in size.", {"hepatomegaly": 0, "liver_atrophy": 0}),
    ("Possible mild hepatomegaly.", {"hepatomegaly": -1}),
    ("Shrunken, nodular liver compatible with cirrhosis.", {"liver_atrophy": 1}),
    ("The liver is small.", {"liver_atrophy": 1}),
    ("Cirrhotic liver morphology.", {"liver_atrophy": -1}),
    ("A 2.3 cm hypodense lesion in segment 7 of the liver.", {"liver_lesion": 1}),
    ("Multiple hepatic metastases.", {"liver_lesion": 1}),
    ("Small hepatic lesion, too small to characterize.", {"liver_lesion": 1, "liver_atrophy": -1}),
    ("No focal liver lesions.", {"liver_lesion": 0}),
    ("No biliary dilatation or hepatic lesion.", {"liver_lesion": 0}),
    ("Possible hepatic metastasis.", {"liver_lesion": -1}),
    ("Liver metastases cannot be excluded.", {"liver_lesion": -1}),
    ("Hepatomegaly without focal lesion.", {"hepatomegaly": 1, "liver_lesion": 0}),
    ("The liver is unremarkable.", {"hepatomegaly": 0, "liver_atrophy": 0, "liver_lesion": 0}),
    # --- spleen
    ("Splenomegaly (15 cm).", {"splenomegaly": 1}),
    ("The spleen is enlarged.", {"splenomegaly": 1}),
    ("Spleen is not enlarged.", {"splenomegaly": 0}),
    ("Spleen: normal size.", {"splenomegaly": 0, "splenic_atrophy": 0}),
    ("Borderline splenomegaly?", {"splenomegaly": -1}),
    ("Small spleen.", {"splenic_atrophy": 1}),
    ("Atrophic spleen.", {"splenic_atrophy": 1}),
    ("Two small splenic hypodensities, likely cysts.", {"splenic_lesion": 1}),
    ("No focal splenic lesion.", {"splenic_lesion": 0}),
    ("Mild hepatosplenomegaly.", {"hepatomegaly": 1, "splenomegaly": 1}),
    ("No hepatosplenomegaly.", {"hepatomegaly": 0, "splenomegaly": 0}),
    ("Status post splenectomy.", {"splenomegaly": -1, "splenic_lesion": -1}),
    # --- kidneys: both sides, placed and unplaced
    ("Simple cyst in the upper pole of the left kidney.", {"renal_lesion_left": 1, "renal_lesion_right": -1}),
    ("Bilateral renal cysts.", {"renal_lesion_left": 1, "renal_lesion_right": 1}),
    ("No renal masses.", {"renal_lesion_left": 0, "renal_lesion_right": 0}),
    ("A renal cyst.", {"renal_lesion_left": -1, "renal_lesion_right": -1}),
    (
        "Right renal cyst, Bosniak I. The left kidney is normal.",
        {"renal_lesion_right": 1, "renal_lesion_left": 0, "renal_atrophy_left": 0, "renal_enlargement_left": 0},
    ),
    ("Possible small cyst in the left kidney.", {"renal_lesion_left": -1}),
    ("Suspicious mass in the right kidney.", {"renal_lesion_right": 1}),
    ("No hydronephrosis, small left renal cyst.", {"renal_lesion_left": 1, "renal_atrophy_left": -1}),
    ("Atrophic left kidney.", {"renal_atrophy_left": 1}),
    ("The right kidney is small and scarred.", {"renal_atrophy_right": 1}),
    (
        "Both kidneys are normal in size.",
        {"renal_atrophy_left": 0, "renal_atrophy_right": 0, "renal_enlargement_left": 0, "renal_enlargement_right": 0},
    ),
    ("The left kidney is enlarged.", {"renal_enlargement_left": 1}),
    ("Bilateral nephromegaly.", {"renal_enlargement_left": 1, "renal_enlargement_right": 1}),
    ("No hydronephrosis. The renal arteries are patent.", {}),
    # --- gallbladder
    ("Cholelithiasis without cholecystitis.", {"gallstones": 1}),
    ("Multiple gallstones.", {"gallstones": 1}),
    ("No gallstones.", {"gallstones": 0}),
    ("Possible tiny gallstone.", {"gallstones": -1}),
    ("Distended gallbladder.", {"gallbladder_distension": 1}),
    ("Gallbladder hydrops.", {"gallbladder_distension": 1}),
    ("The gallbladder is not distended.", {"gallbladder_distension": 0}),
    ("Contracted gallbladder.", {"gallbladder_contracted": 1}),
    ("Gallbladder not visualized, possibly contracted.", {"gallbladder_contracted": -1}),
    ("The gallbladder wall is not thickened.", {}),
    # --- esophagus and stomach
    ("Dilated esophagus with an air-fluid level.", {"esophageal_dilatation": 1}),
    ("The esophagus is not dilated.", {"esophageal_dilatation": 0}),
    ("Circumferential wall thickening of the distal esophagus.", {"esophageal_wall_thickening": 1}),
    ("No esophageal wall thickening.", {"esophageal_wall_thickening": 0}),
    ("Gastric distension.", {"gastric_distension": 1}),
    ("The stomach is distended with fluid.", {"gastric_distension": 1}),
    ("Gastric wall thickening in the antrum.", {"gastric_wall_thickening": 1}),
    ("No gastric mass.", {"gastric_wall_thickening": 0}),
    # --- aorta
    ("Infrarenal abdominal aortic aneurysm measuring 4.5 cm.", {"aortic_aneurysm": 1}),
    ("AAA measuring 5 cm.", {"aortic_aneurysm": 1}),
    ("No abdominal aortic aneurysm.", {"aortic_aneurysm": 0}),
    ("The aorta is of normal caliber.", {"aortic_aneurysm": 0}),
    ("Ectatic abdominal aorta.", {"aortic_aneurysm": 1}),
    ("Mural thrombus in the aorta.", {"aortic_wall_thickening": 1}),
    # --- IVC
    ("Distended IVC and hepatic veins.", {"ivc_dilatation": 1}),
    ("The IVC is not dilated.", {"ivc_dilatation": 0}),
    ("Flat IVC, suggesting hypovolemia.", {"ivc_flattening": 1}),
    ("Slit-like IVC.", {"ivc_flattening": 1}),
    ("Thrombus in the infrarenal IVC.", {"ivc_thrombus": 1}),
    ("Tumor thrombus extending into the inferior vena cava.", {"ivc_thrombus": 1}),
    ("No IVC thrombus.", {"ivc_thrombus": 0}),
    ("The IVC is patent.", {"ivc_thrombus": 0}),
    ("IVC filling defect, thrombus not excluded.", {"ivc_thrombus": 1}),
    ("Thrombus in the IVC cannot be excluded.", {"ivc_thrombus": -1}),
    # --- portal and splenic veins
    ("Portal vein thrombosis.", {"portal_vein_thrombosis": 1}),
    ("Occlusive thrombus in the main portal vein.", {"portal_vein_thrombosis": 1}),
    ("The portal vein is patent.", {"portal_vein_thrombosis": 0}),
    ("No portal or splenic vein thrombosis.", {"portal_vein_thrombosis": 0}),
    ("Questionable nonocclusive thrombus in the portal vein.", {"portal_vein_thrombosis": -1}),
    ("Findings suspicious for portal vein thrombosis.", {"portal_vein_thrombosis": -1}),
    ("Dilated portal vein (15 mm).", {"portal_vein_dilatation": 1}),
    ("Hepatic veins are patent.", {}),
    # --- pancreas
    ("A 1.2 cm cystic lesion in the pancreatic tail, likely a side-branch IPMN.", {"pancreatic_lesion": 1}),
    ("Hypodense mass in the pancreatic head.", {"pancreatic_lesion": 1}),
    ("No pancreatic mass.", {"pancreatic_lesion": 0}),
    ("Fatty atrophy of the pancreas.", {"pancreatic_atrophy": 1}),
    ("Diffusely atrophic pancreas.", {"pancreatic_atrophy": 1}),
    ("No pancreatic atrophy.", {"pancreatic_atrophy": 0}),
    ("Diffusely enlarged pancreas with peripancreatic stranding.", {"pancreatic_enlargement": 1}),
    ("Normal pancreatic enhancement without ductal dilatation.", {}),
    # --- adrenals
    ("1.5 cm left adrenal adenoma.", {"adrenal_nodule_left": 1}),
    ("Bilateral adrenal nodules.", {"adrenal_nodule_left": 1, "adrenal_nodule_right": 1}),
    ("No adrenal nodules.", {"adrenal_nodule_left": 0, "adrenal_nodule_right": 0}),
    ("Right adrenal nodule, indeterminate.", {"adrenal_nodule_right": 1}),
    ("Possible left adrenal nodule.", {"adrenal_nodule_left": -1}),
    ("Bilateral adrenal hyperplasia.", {"adrenal_hyperplasia_left": 1, "adrenal_hyperplasia_right": 1}),
    ("Thickened left adrenal gland.", {"adrenal_hyperplasia_left": 1}),
    ("Atrophic adrenal glands.", {"adrenal_atrophy_left": 1, "adrenal_atrophy_right": 1}),
    # --- lists, normal statements, things that are no finding
    (
        "The liver, spleen and pancreas are unremarkable.",
        {f: 0 for f, organ in FINDING_TAGS.items() if organ in ("liver", "spleen", "pancreas")},
    ),
    ("The liver and spleen are enlarged.", {"hepatomegaly": 1, "splenomegaly": 1}),
    ("No free fluid. Small bowel loops are unremarkable. No pathologically enlarged lymph nodes.", {}),
    ("Portal venous phase images were obtained.", {}),
]


def _full(expected: dict[str, int]) -> dict[str, int]:
    unknown = set(expected) - set(BTCV_FINDINGS)
    assert not unknown, f"test bug: {unknown} are not finding tags"
    return {n: expected.get(n, -1) for n in BTCV_FINDINGS}


@pytest.mark.parametrize(("text", "expected"), EXAMPLES, ids=[e[0][:45] for e in EXAMPLES])
def test_hand_written_examples(text, expected):
    got = extract_findings(text, "btcv")
    want = _full(expected)
    assert got == want, {n: (got[n], want[n]) for n in want if got[n] != want[n]}


def test_examples_cover_every_finding_tag_stated_and_denied():
    stated = {n for _, exp in EXAMPLES for n, v in exp.items() if v == 1}
    denied = {n for _, exp in EXAMPLES for n, v in exp.items() if v == 0}
    hedged = {n for _, exp in EXAMPLES for n, v in exp.items() if v == -1}
    assert stated == set(BTCV_FINDINGS), sorted(set(BTCV_FINDINGS) - stated)
    # every kind is seen denied, and enough tags hedged to exercise the rule
    assert {FINDING_KINDS[n] for n in denied} == {"enlarged", "atrophic", "lesion"} and len(denied) >= 20
    assert len(hedged) >= 10


# ------------------------------------------------------------------ vocabulary and API
def test_finding_table_and_names():
    assert len(FINDING_TABLE) == len(FINDING_TAGS) == 35 and BTCV_FINDINGS == tuple(FINDING_TAGS)
    assert FINDING_TAGS["hepatomegaly"] == "liver" and FINDING_TAGS["renal_lesion_left"] == "kidney_left"
    assert finding_tag("aorta", "enlarged") == "aortic_aneurysm" and finding_tag("aorta", "atrophic") is None
    # AMOS has no portal/splenic vein; its names (right_kidney, postcava) reach the same findings
    amos = finding_names("amos")
    assert "portal_vein_thrombosis" not in amos and {"renal_lesion_right", "ivc_thrombus", "gallstones"} <= set(amos)
    found = extract_findings("Right renal cyst. IVC thrombus.", "amos")
    assert tuple(found) == amos and found["renal_lesion_right"] == 1 and found["ivc_thrombus"] == 1


def test_batch_matches_single_and_validates():
    reports = [e[0] for e in EXAMPLES[:20]]
    batch = extract_findings_batch(reports, "btcv")
    assert batch.dtype == np.int8 and batch.shape == (20, 35)
    for row, text in zip(batch, reports):
        assert row.tolist() == list(extract_findings(text, "btcv").values())
    assert extract_findings_batch([], "btcv").shape == (0, 35)
    with pytest.raises(TypeError, match="single string"):
        extract_findings_batch("No hepatomegaly.", "btcv")
    with pytest.raises(TypeError, match="report 1 must be a str, got int"):
        extract_findings_batch(["No hepatomegaly.", 3], "btcv")
    with pytest.raises(ValueError, match="empty report"):
        extract_findings("  ", "btcv")
    assert set(extract_findings(" ", "btcv", allow_empty=True).values()) == {-1}


_SOUP = [
    "no", "not", "without", "possible", "?", "cannot be excluded", "left", "right", "bilateral", "kidney", "kidneys",
    "renal", "liver", "hepatic", "spleen", "splenic vein", "portal vein", "ivc", "adrenal", "adrenals", "small", "flat",
    "enlarged", "atrophic", "lesion", "cyst", "thrombus", "normal", "unremarkable", "patent", "in size", "and", "or",
    ",", ".", ";", ":", "\n", "the", "of", "is", "hepatomegaly", "gallstones", "aaa", "wall thickening", "hepatic vein",
    "small bowel", "(", ")", "ü", "—",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(min_size=1, max_size=300), st.lists(st.sampled_from(_SOUP), min_size=1, max_size=40).map(" ".join)))
def test_any_string_gives_every_key_and_valid_values(text):
    found = extract_findings(text, "btcv", allow_empty=True)
    assert tuple(found) == BTCV_FINDINGS and set(found.values()) <= {-1, 0, 1}


def test_explain_names_the_rule():
    evidence = {e.finding: e for e in explain_findings("No hepatomegaly. Small left kidney.", "btcv")}
    assert evidence["hepatomegaly"].value == 0 and "negated" in evidence["hepatomegaly"].reason
    assert evidence["renal_atrophy_left"].value == 1 and evidence["renal_atrophy_left"].term == "small"


def test_organ_tags_read_new_absences_and_atrophy():
    """The organ-tag parser reads every new absence wording as 0 and atrophy as 1."""
    cases = {
        "Status post total gastrectomy.": {"stomach": 0},
        "Total pancreatectomy.": {"pancreas": 0},
        "Status post esophagectomy with a pull-up conduit.": {"esophagus": 0},
        "Interrupted IVC with azygos continuation.": {"inferior_vena_cava": 0},
        "Congenital absence of the inferior vena cava; azygos continuation.": {"inferior_vena_cava": 0},
        "Cavernous transformation of the portal vein; the splenic vein is not identified.": {"portal_vein_and_splenic_vein": 0},
        "Gallbladder agenesis.": {"gallbladder": 0},
        "Left adrenal agenesis.": {"adrenal_gland_left": 0},
        "Asplenia.": {"spleen": 0},
        "Atrophic pancreas.": {"pancreas": 1},
        "Flat IVC.": {"inferior_vena_cava": 1},
        "Small contracted gallbladder.": {"gallbladder": 1},
        "The right kidney is atrophic.": {"kidney_right": 1},
    }
    for text, expected in cases.items():
        tags = extract_tags(text, "btcv")
        assert {k: tags[k] for k in expected} == expected, text
        assert all(v == -1 for k, v in tags.items() if k not in expected), text


# ------------------------------------------------------------------ the generator's sentences
_SIDES = {"kidney": {"left": "kidney_left", "right": "kidney_right"},
          "adrenal": {"left": "adrenal_gland_left", "right": "adrenal_gland_right"}}


def _template_expectation(kind: str, template: str, organs) -> dict[str, int]:
    base = kind.removeprefix("impression_").removesuffix("_more")
    stated = {"lesion_one": "lesion", "lesion_many": "lesion", "lesion": "lesion", "enlarged": "enlarged",
              "atrophic": "atrophic"}.get(base)
    denied = NORMAL_DENIES.get(template, ()) if base in ("normal", "no_lesion", "normal_size") else ()
    out = {}
    for organ in organs:
        if stated:
            out[finding_tag(organ, stated)] = 1
        for k in denied:
            if finding_tag(organ, k):
                out[finding_tag(organ, k)] = 0
    return out


def test_every_template_sentence_reads_as_the_generator_records_it():
    """Each sentence alone gives exactly the findings its row states (enlarged, atrophic, lesion: 1)
    and the kinds NORMAL_DENIES says it denies (0), for its own organ and side only."""
    wrong, n = [], 0
    fill = {"count": "two", "Count": "Two", "size": "12"}
    for row, kinds in ORGAN_TEMPLATES.items():
        for kind, templates in kinds.items():
            for template in templates:
                for side, organ in _SIDES.get(row, {None: row}).items():
                    text = template.format(side=side or "", Side=(side or "").capitalize(), **fill)
                    got, want = extract_findings(text, "btcv"), _full(_template_expectation(kind, template, [organ]))
                    n += 1
                    if got != want:
                        wrong.append((text, {k: (got[k], want[k]) for k in want if got[k] != want[k]}))
    for row, kinds in PAIR_TEMPLATES.items():
        for template in kinds.get("normal", ()):
            got, want = extract_findings(template, "btcv"), _full(_template_expectation("normal", template, _SIDES[row].values()))
            n += 1
            if got != want:
                wrong.append((template, {k: (got[k], want[k]) for k in want if got[k] != want[k]}))
    assert n > 400 and not wrong, f"{len(wrong)} sentences misread (got, expected): {wrong[:8]}"


def test_ground_truth_from_findings():
    findings = {
        "liver": OrganFinding(True, enlarged=True, denied=("lesion",)),
        "spleen": OrganFinding(True, mentioned=False),
        "kidney_left": OrganFinding(False, absence="congenital"),
        "kidney_right": OrganFinding(True, atrophic=True, n_lesions=1, lesion_size_mm=9.0),
    }
    truth = finding_tags_from_findings(findings)
    assert tuple(truth) == BTCV_FINDINGS
    assert (truth["hepatomegaly"], truth["liver_lesion"], truth["liver_atrophy"]) == (1, 0, -1)
    assert truth["splenomegaly"] == -1 and truth["renal_lesion_left"] == -1
    assert (truth["renal_atrophy_right"], truth["renal_lesion_right"], truth["renal_enlargement_right"]) == (1, 1, -1)
    with pytest.raises(ValueError, match="contradicts"):
        OrganFinding(True, enlarged=True, denied=("enlarged",))
    with pytest.raises(ValueError, match="both enlarged and atrophic"):
        OrganFinding(True, enlarged=True, atrophic=True)
    with pytest.raises(ValueError, match="absent organ"):
        OrganFinding(False, atrophic=True)
    # compose_report records what it denies, and the parser reads it back
    written = compose_report({"liver": OrganFinding(True), "spleen": OrganFinding(True, atrophic=True)},
                             np.random.default_rng(3))
    assert finding_tags_from_findings(written.findings) == extract_findings(written.text, "btcv")


@pytest.mark.parametrize("extended", [False, True])
def test_random_reports_read_back_as_composed(extended):
    """Any findings, either wording: the parser reads what compose_report says it wrote (also when
    the classic wording speaks of one kidney alone and then of both)."""
    from mosmoskit.data.phantom_reports import ReportStyle, has_wording

    rng = np.random.default_rng(17)
    style = ReportStyle(extended_phrasing=extended)
    for _ in range(300):
        findings = {}
        for organ in dict.fromkeys(FINDING_TAGS.values()):
            if rng.random() < 0.15:
                findings[organ] = OrganFinding(False, mentioned=bool(rng.random() < 0.8))
                continue
            r = rng.random()
            atrophic = extended and r < 0.2 and has_wording(organ, "atrophic")
            n = int(rng.integers(0, 3)) if rng.random() < 0.4 else 0
            findings[organ] = OrganFinding(True, enlarged=not atrophic and r > 0.75, atrophic=atrophic, n_lesions=n,
                                           lesion_size_mm=float(5 * n), mentioned=bool(rng.random() < 0.85))
        written = compose_report(findings, rng, style, scope=("volume", "slice")[int(rng.integers(2))])
        assert extract_findings(written.text, "btcv") == finding_tags_from_findings(written.findings), written.text


# ------------------------------------------------------------------ agreement with the generator
def _agreement(cases) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    """Per finding: agreement where the truth is said (1/0), the number of such reports, and the
    number of reports where the truth is -1 but the parser says something."""
    said, agree, stray = Counter(), Counter(), Counter()
    for case in cases:
        got = extract_findings(case.report, "btcv")
        for name in BTCV_FINDINGS:
            truth = case.finding_tags[name]
            if truth == -1:
                stray[name] += got[name] != -1
            else:
                said[name] += 1
                agree[name] += got[name] == truth
    return {n: agree[n] / said[n] for n in said}, dict(said), dict(stray)


@pytest.fixture(scope="module")
def pretraining_cases():
    cfg = PhantomConfig.pretraining()
    volumes = [make_case(11, i, shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0), config=cfg) for i in range(24)]
    slices = [c for i in range(30) for c in make_slices(11, i, 4, shape=(64, 64), spacing=(6.0, 6.0), config=cfg)]
    return volumes, slices


@pytest.mark.parametrize("which", ["volumes", "slices"])
def test_parser_agrees_with_generator_ground_truth(pretraining_cases, which):
    cases = pretraining_cases[0] if which == "volumes" else pretraining_cases[1]
    agreement, said, stray = _agreement(cases)
    print(f"\n{which}: {len(cases)} reports; per-finding agreement where said (n):")
    for name in BTCV_FINDINGS:
        print(f"  {name:28s} {agreement.get(name, float('nan')):.3f} ({said.get(name, 0)})  stray {stray.get(name, 0)}")
    low = {n: round(a, 3) for n, a in agreement.items() if a < MIN_AGREEMENT}
    assert not low, f"agreement below {MIN_AGREEMENT}: {low}"
    assert sum(stray.values()) <= 0.01 * len(cases) * len(BTCV_FINDINGS), stray
    # every finding is stated and denied somewhere in the two cohorts together: the reports carry
    # negatives, not only positives (adrenals are too thin to be mentioned in many 6 mm slices)
    both = pretraining_cases[0] + pretraining_cases[1]
    for value in (1, 0):
        seen = {n for c in both for n, v in c.finding_tags.items() if v == value}
        assert seen == set(BTCV_FINDINGS), (value, sorted(set(BTCV_FINDINGS) - seen))


def test_default_cohort_reports_agree_too():
    """The default cohort's wording (no extended phrasing) reads back the same way."""
    cases = [make_case(2, i, shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0)) for i in range(12)]
    agreement, _, stray = _agreement(cases)
    assert min(agreement.values()) >= MIN_AGREEMENT and sum(stray.values()) == 0


def test_reports_jsonl_carries_finding_tags(tmp_path):
    root = generate_cohort(tmp_path / "c", n=2, seed=4, spatial_dims=2, slices_per_case=2, shape=(64, 64),
                           spacing=(6.0, 6.0), progress=False, config=PhantomConfig.pretraining())
    rows = [json.loads(line) for line in (root / "reports.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert list(row["finding_tags"]) == list(BTCV_FINDINGS)
        findings = {o: OrganFinding.from_dict(f) for o, f in row["findings"].items()}
        assert row["finding_tags"] == finding_tags_from_findings(findings)
        assert extract_findings(row["report"], "btcv") == row["finding_tags"]
