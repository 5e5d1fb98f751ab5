"""More report wording for the enriched pre-training phantom, and what each normal sentence denies.

Data only; :mod:`mosmoskit.data.phantom_reports` merges :data:`EXTENDED_TEMPLATES` into its
``ORGAN_TEMPLATES`` table at import and uses :data:`NORMAL_DENIES` to record, for every report it
writes, which findings the chosen sentences deny (the ground truth of the finding tags,
:mod:`mosmoskit.reports.findings`).

Rows (keys of a template row):

* ``atrophic`` / ``impression_atrophic``: present and atrophic (small, shrunken, flattened,
  contracted);
* ``congenital`` / ``impression_congenital``: absent since birth (tag 0); organs without this row
  fall back to ``resected``;
* ``*_more``: more wordings of an existing row, used only with
  :attr:`~mosmoskit.data.phantom_reports.ReportStyle.extended_phrasing`, so cohorts without it keep
  their text (and random stream) byte for byte;
* ``no_lesion``: (extended) a denial added after an enlarged or atrophic organ without lesions;
* ``normal_size``: (extended) a denial added after a lesion-bearing organ of normal size.

The rule of the report writer holds here too: a sentence names only its own organ (no "gastric
pull-up" after an esophagectomy, no "esophagojejunostomy" after a gastrectomy, no "hepatic" in a
vessel sentence), so an unmentioned organ never leaks into the text.
"""

from __future__ import annotations

__all__ = ["EXTENDED_TEMPLATES", "NORMAL_DENIES"]

_ALL = ("enlarged", "atrophic", "lesion")
_SIZE = ("enlarged", "atrophic")

#: Template rows per report row (``liver``, ``kidney``, ``adrenal`` ...), as in ``ORGAN_TEMPLATES``.
EXTENDED_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "liver": {
        "atrophic": (
            "The liver is small with a nodular contour.",
            "Small, nodular liver consistent with cirrhosis.",
            "Atrophic liver with a nodular surface.",
            "Shrunken cirrhotic liver.",
            "The liver is atrophic.",
        ),
        "impression_atrophic": ("Cirrhotic liver with atrophy.", "Small cirrhotic liver."),
        "normal_more": (
            "No hepatomegaly.",
            "The liver is not enlarged.",
            "Normal liver size, no focal hepatic lesion.",
            "The liver is normal in size.",
            "No focal liver lesion.",
            "Liver: normal size and contour, no focal lesion.",
            "Liver within normal limits.",
        ),
        "no_lesion": ("No focal hepatic lesion.", "No focal liver lesion is seen."),
        "normal_size": ("The liver is normal in size.", "Normal hepatic size."),
    },
    "spleen": {
        "atrophic": ("The spleen is small.", "Small spleen.", "Atrophic spleen.", "Splenic atrophy."),
        "impression_atrophic": ("Small spleen.", "Splenic atrophy."),
        "congenital": ("Asplenia.", "Congenital absence of the spleen.", "The spleen is congenitally absent."),
        "impression_congenital": ("Asplenia.",),
        "normal_more": (
            "No splenomegaly or focal splenic lesion.",
            "Spleen normal in size.",
            "The spleen is not enlarged.",
            "No focal splenic lesion.",
            "Spleen within normal limits.",
        ),
        "no_lesion": ("No focal splenic lesion.",),
        "normal_size": ("The spleen is normal in size.", "Normal splenic size."),
    },
    "kidney": {
        "atrophic": (
            "The {side} kidney is atrophic.",
            "Small {side} kidney with cortical thinning.",
            "{Side} renal atrophy.",
            "Atrophic {side} kidney.",
        ),
        "impression_atrophic": ("Atrophic {side} kidney.", "{Side} renal atrophy."),
        "congenital": (
            "{Side} renal agenesis.",
            "Congenital absence of the {side} kidney.",
            "The {side} kidney is congenitally absent.",
            "Agenesis of the {side} kidney.",
        ),
        "impression_congenital": ("{Side} renal agenesis.",),
        "normal_more": (
            "The {side} kidney is not enlarged.",
            "{Side} kidney normal in size.",
            "No {side} renal cyst.",
            "No cyst or mass in the {side} kidney.",
            "The {side} kidney is of normal size with no focal lesion.",
        ),
        "no_lesion": ("No {side} renal cyst.", "No focal lesion in the {side} kidney."),
        "normal_size": ("The {side} kidney is normal in size.",),
    },
    "gallbladder": {
        "atrophic": ("Small contracted gallbladder.", "The gallbladder is contracted.", "Shrunken gallbladder."),
        "impression_atrophic": ("Contracted gallbladder.",),
        "congenital": (
            "Gallbladder agenesis.",
            "Congenital absence of the gallbladder.",
            "The gallbladder is congenitally absent.",
        ),
        "impression_congenital": ("Gallbladder agenesis.",),
        "normal_more": (
            "No cholelithiasis.",
            "No gallstones.",
            "The gallbladder is not distended.",
            "Normal gallbladder size, no gallstones.",
        ),
        "no_lesion": ("No gallstones.", "No cholelithiasis."),
        "normal_size": ("The gallbladder is not distended.",),
    },
    "esophagus": {
        "resected_more": (
            "The esophagus has been resected.",
            "Status post esophagectomy with a pull-up conduit.",
            "Esophagectomy.",
        ),
        "normal_more": (
            "No esophageal wall thickening or dilatation.",
            "The esophagus is not dilated.",
            "No focal esophageal wall thickening.",
        ),
        "no_lesion": ("No esophageal wall thickening.",),
        "normal_size": ("The esophagus is not dilated.",),
    },
    "stomach": {
        "resected_more": (
            "Status post total gastrectomy.",
            "The stomach has been resected.",
            "Total gastrectomy with Roux-en-Y reconstruction.",
        ),
        "normal_more": (
            "The stomach is not distended.",
            "No gastric wall thickening or distension.",
            "No focal gastric wall thickening.",
        ),
        "no_lesion": ("No gastric wall thickening.",),
        "normal_size": ("The stomach is not distended.",),
    },
    "aorta": {
        "enlarged_more": ("Fusiform aneurysm of the abdominal aorta.", "Aneurysmal abdominal aorta."),
        "normal_more": (
            "No aortic aneurysm.",
            "Normal caliber abdominal aorta.",
            "The aorta is not aneurysmal.",
            "No aortic wall thickening.",
        ),
        "no_lesion": ("No aortic wall thickening.",),
        "normal_size": ("The abdominal aorta is normal in caliber.",),
    },
    "inferior_vena_cava": {
        "atrophic": ("Flat IVC.", "The IVC is flattened.", "Slit-like inferior vena cava."),
        "impression_atrophic": ("Flat IVC, correlate for hypovolemia.",),
        "congenital": (
            "Interrupted IVC with azygos continuation.",
            "Congenital absence of the inferior vena cava; azygos continuation.",
            "The IVC is not visualized (interruption with azygos continuation).",
        ),
        "impression_congenital": ("Interrupted IVC with azygos continuation.", "Azygos continuation of the IVC."),
        "lesion_one_more": ("Nonocclusive thrombus in the IVC, {size} mm.",),
        "normal_more": (
            "The IVC is patent and of normal caliber.",
            "No IVC thrombus.",
            "The inferior vena cava is not dilated.",
        ),
        "no_lesion": ("The IVC is patent.",),
        "normal_size": ("Normal caliber IVC.",),
    },
    "portal_vein_and_splenic_vein": {
        "resected_more": (
            "The portal and splenic veins are not visualized (chronic occlusion with cavernous transformation).",
            "Cavernous transformation of the portal vein; the splenic vein is not identified.",
            "The portal venous system is not visualized, consistent with chronic occlusion.",
        ),
        "lesion_one_more": ("Partial portal vein thrombosis ({size} mm).", "Nonocclusive thrombus in the main portal vein, {size} mm."),
        "normal_more": (
            "No portal vein thrombosis.",
            "The portal vein is not dilated.",
            "Patent portal vein of normal caliber.",
        ),
        "no_lesion": ("The portal vein is patent.",),
        "normal_size": ("The portal vein is not dilated.",),
    },
    "pancreas": {
        "atrophic": (
            "The pancreas is atrophic.",
            "Atrophic pancreas.",
            "Diffuse pancreatic atrophy.",
            "Fatty atrophy of the pancreas.",
        ),
        "impression_atrophic": ("Pancreatic atrophy.",),
        "resected_more": (
            "Status post total pancreatectomy.",
            "The pancreas has been resected.",
            "Total pancreatectomy.",
        ),
        "normal_more": (
            "No pancreatic atrophy or mass.",
            "The pancreas is normal in size.",
            "No focal pancreatic lesion.",
            "Normal pancreatic size, no focal lesion.",
        ),
        "no_lesion": ("No focal pancreatic lesion.", "No pancreatic mass."),
        "normal_size": ("The pancreas is normal in size.",),
    },
    "adrenal": {
        "atrophic": (
            "The {side} adrenal gland is atrophic.",
            "Atrophic {side} adrenal gland.",
            "Thin, atrophic {side} adrenal.",
        ),
        "impression_atrophic": ("{Side} adrenal atrophy.",),
        "congenital": (
            "{Side} adrenal agenesis.",
            "The {side} adrenal gland is congenitally absent.",
            "Congenital absence of the {side} adrenal gland.",
        ),
        "impression_congenital": ("{Side} adrenal agenesis.",),
        "normal_more": (
            "No {side} adrenal mass.",
            "The {side} adrenal gland is not thickened.",
            "Normal {side} adrenal gland without nodule.",
        ),
        "no_lesion": ("No {side} adrenal nodule.",),
        "normal_size": ("The {side} adrenal gland is not thickened.",),
    },
}

#: Sentence -> the finding kinds it denies ("No hepatomegaly." denies ``enlarged``; "normal in size"
#: denies ``enlarged`` and ``atrophic``; "unremarkable" denies every kind). Every normal, normal_more,
#: no_lesion and normal_size sentence (and every normal pair sentence) has an entry, checked at
#: import; the finding parser (:mod:`mosmoskit.reports.findings`) must read each sentence this way
#: (tested in ``tests/test_finding_tags.py``). A kind the organ has no finding tag for is ignored.
NORMAL_DENIES: dict[str, tuple[str, ...]] = {
    # liver
    "The liver is normal in size and attenuation.": _SIZE,
    "Normal hepatic size and contour.": _SIZE,
    "No focal hepatic lesion.": ("lesion",),
    "Liver: unremarkable.": _ALL,
    "No hepatomegaly. The liver enhances homogeneously.": ("enlarged",),
    "The liver is unremarkable without focal lesion.": _ALL,
    "No hepatomegaly.": ("enlarged",),
    "The liver is not enlarged.": ("enlarged",),
    "Normal liver size, no focal hepatic lesion.": _ALL,
    "The liver is normal in size.": _SIZE,
    "No focal liver lesion.": ("lesion",),
    "Liver: normal size and contour, no focal lesion.": _ALL,
    "Liver within normal limits.": _ALL,
    "No focal liver lesion is seen.": ("lesion",),
    "Normal hepatic size.": _SIZE,
    # spleen
    "The spleen is normal in size.": _SIZE,
    "No splenomegaly.": ("enlarged",),
    "Spleen: unremarkable.": _ALL,
    "Normal splenic size and attenuation.": _SIZE,
    "The spleen is homogeneous and not enlarged.": ("enlarged",),
    "No splenomegaly or focal splenic lesion.": ("enlarged", "lesion"),
    "Spleen normal in size.": _SIZE,
    "The spleen is not enlarged.": ("enlarged",),
    "No focal splenic lesion.": ("lesion",),
    "Spleen within normal limits.": _ALL,
    "Normal splenic size.": _SIZE,
    # kidneys
    "The {side} kidney is normal in size.": _SIZE,
    "Unremarkable {side} kidney without hydronephrosis.": _ALL,
    "No hydronephrosis of the {side} kidney.": (),
    "The {side} kidney enhances symmetrically, no renal calculus on the {side}.": (),
    "{Side} kidney: unremarkable.": _ALL,
    "The {side} kidney is not enlarged.": ("enlarged",),
    "{Side} kidney normal in size.": _SIZE,
    "No {side} renal cyst.": ("lesion",),
    "No cyst or mass in the {side} kidney.": ("lesion",),
    "The {side} kidney is of normal size with no focal lesion.": _ALL,
    "No focal lesion in the {side} kidney.": ("lesion",),
    "Both kidneys are normal in size.": _SIZE,
    "The kidneys are unremarkable, no hydronephrosis.": _ALL,
    "Normal bilateral kidneys without hydronephrosis.": _ALL,
    "Kidneys: unremarkable.": _ALL,
    # gallbladder
    "The gallbladder is unremarkable.": _ALL,
    "Normal gallbladder without stones.": _ALL,
    "No cholelithiasis. The gallbladder wall is not thickened.": ("lesion",),
    "Gallbladder: unremarkable.": _ALL,
    "No cholelithiasis.": ("lesion",),
    "No gallstones.": ("lesion",),
    "The gallbladder is not distended.": ("enlarged",),
    "Normal gallbladder size, no gallstones.": _ALL,
    # esophagus
    "The distal esophagus is unremarkable.": _ALL,
    "No esophageal wall thickening.": ("lesion",),
    "Esophagus: unremarkable.": _ALL,
    "No esophageal wall thickening or dilatation.": ("enlarged", "lesion"),
    "The esophagus is not dilated.": ("enlarged",),
    "No focal esophageal wall thickening.": ("lesion",),
    # stomach
    "The stomach is unremarkable.": _ALL,
    "No gastric wall thickening.": ("lesion",),
    "Stomach: normal.": _ALL,
    "The stomach is partially filled with fluid and gas, without wall thickening.": ("lesion",),
    "The stomach is not distended.": ("enlarged",),
    "No gastric wall thickening or distension.": ("enlarged", "lesion"),
    "No focal gastric wall thickening.": ("lesion",),
    # aorta
    "The abdominal aorta is normal in caliber.": _SIZE,
    "No abdominal aortic aneurysm.": ("enlarged",),
    "Aorta: normal caliber.": _SIZE,
    "The aorta is of normal caliber without dissection.": _SIZE,
    "No aortic aneurysm.": ("enlarged",),
    "Normal caliber abdominal aorta.": _SIZE,
    "The aorta is not aneurysmal.": ("enlarged",),
    "No aortic wall thickening.": ("lesion",),
    # IVC
    "The IVC is patent.": ("lesion",),
    "The inferior vena cava is unremarkable.": _ALL,
    "Normal caliber IVC.": _SIZE,
    "The IVC is patent and of normal caliber.": _ALL,
    "No IVC thrombus.": ("lesion",),
    "The inferior vena cava is not dilated.": ("enlarged",),
    # portal and splenic veins
    "The portal vein is patent.": ("lesion",),
    "Patent portal and splenic veins.": ("lesion",),
    "The portal venous system is patent.": ("lesion",),
    "Portal vein: normal caliber, patent.": _ALL,
    "No portal vein thrombosis.": ("lesion",),
    "The portal vein is not dilated.": ("enlarged",),
    "Patent portal vein of normal caliber.": _ALL,
    # pancreas
    "The pancreas is unremarkable.": _ALL,
    "Normal pancreatic enhancement without ductal dilatation.": (),
    "Pancreas: normal.": _ALL,
    "No pancreatic mass.": ("lesion",),
    "No pancreatic atrophy or mass.": ("atrophic", "lesion"),
    "The pancreas is normal in size.": _SIZE,
    "No focal pancreatic lesion.": ("lesion",),
    "Normal pancreatic size, no focal lesion.": _ALL,
    # adrenals
    "The {side} adrenal gland is unremarkable.": _ALL,
    "Normal {side} adrenal.": _ALL,
    "No {side} adrenal nodule.": ("lesion",),
    "No {side} adrenal mass.": ("lesion",),
    "The {side} adrenal gland is not thickened.": ("enlarged",),
    "Normal {side} adrenal gland without nodule.": _ALL,
    "The adrenal glands are unremarkable.": _ALL,
    "Normal adrenals.": _ALL,
    "Both adrenal glands are normal.": _ALL,
}
