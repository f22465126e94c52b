"""The embedded demo corpus: synthetic biomedical abstracts and a matching NER set, made on the fly.

Nothing is downloaded and nothing large is shipped: a seeded generator fills sentence templates with
real chemical and disease names, so the demo and the tests exercise the whole recipe (vocabulary,
shards, whole-word masking on multi-piece words, distillation init, NER) on text that looks like
PubMed. Same seed ⇒ byte-identical output.
"""
from __future__ import annotations

import random
from pathlib import Path

CHEMICALS = [
    "acetaminophen", "amiodarone", "amoxicillin", "atorvastatin", "azathioprine", "bleomycin",
    "bupivacaine", "captopril", "carbamazepine", "cisplatin", "clozapine", "cocaine",
    "cyclophosphamide", "cyclosporine", "dexamethasone", "diclofenac", "digoxin", "doxorubicin",
    "enalapril", "fluorouracil", "furosemide", "gentamicin", "haloperidol", "heparin",
    "hydrochlorothiazide", "ibuprofen", "indomethacin", "isoniazid", "ketamine", "lamotrigine",
    "levodopa", "lidocaine", "lisinopril", "lithium", "methotrexate", "metformin", "metoprolol",
    "morphine", "naloxone", "nifedipine", "paclitaxel", "phenytoin", "prednisone", "propranolol",
    "puromycin aminonucleoside", "rifampicin", "risperidone", "streptozotocin", "tacrolimus",
    "tamoxifen", "valproic acid", "vancomycin", "verapamil", "warfarin", "sodium chloride",
    "nitric oxide", "angiotensin ii", "calcium carbonate", "zoledronic acid", "oxaliplatin",
]
DISEASES = [
    "acute kidney injury", "agranulocytosis", "alzheimer disease", "anemia", "arrhythmia",
    "asthma", "atrial fibrillation", "breast cancer", "cardiomyopathy", "cardiotoxicity",
    "cholestasis", "chronic obstructive pulmonary disease", "colorectal cancer", "delirium",
    "depression", "diabetes mellitus", "dyskinesia", "epilepsy", "hepatitis", "hepatotoxicity",
    "hypertension", "hypokalemia", "hypotension", "interstitial nephritis", "leukemia",
    "lupus erythematosus", "lymphoma", "myocardial infarction", "myopathy", "nephrotoxicity",
    "neuropathy", "neutropenia", "osteoporosis", "ototoxicity", "pancreatitis",
    "parkinson disease", "pneumonia", "proteinuria", "psoriasis", "pulmonary fibrosis",
    "renal failure", "rhabdomyolysis", "schizophrenia", "seizures", "sepsis", "stroke",
    "tardive dyskinesia", "thrombocytopenia", "torsade de pointes", "tuberculosis",
    "urinary retention", "ventricular tachycardia", "hyperglycemia", "bradycardia", "migraine",
]
FILLERS = {
    "pop": ["patients", "adults", "children", "rats", "mice", "elderly patients", "volunteers",
            "outpatients", "women", "men"],
    "design": ["randomized controlled trial", "double-blind study", "cohort study",
               "case-control study", "retrospective analysis", "open-label trial",
               "prospective study", "meta-analysis"],
    "effect": ["induced", "prevented", "attenuated", "exacerbated", "reduced", "increased the risk of",
               "was associated with", "did not affect"],
    "measure": ["serum creatinine", "blood pressure", "heart rate", "plasma concentration",
                "glomerular filtration rate", "body weight", "white blood cell count",
                "liver enzymes", "oxygen saturation", "quality of life"],
    "time": ["after two weeks", "within 24 hours", "at 12 months", "during follow-up",
             "after the first dose", "at baseline", "over six months"],
}
# Each template: a list of parts; ("C",) / ("D",) are entity slots, ("F", key) a filler slot.
TEMPLATES = [
    ["in this", ("F", "design"), ", we examined whether", ("C",), ("F", "effect"), ("D",), "in",
     ("F", "pop"), "."],
    [("C",), ("F", "effect"), ("D",), "in", ("F", "pop"), ("F", "time"), "."],
    ["the incidence of", ("D",), "was higher in", ("F", "pop"), "treated with", ("C",),
     "than with", ("C",), "."],
    [("F", "measure"), "changed significantly", ("F", "time"), "of", ("C",), "treatment ."],
    ["a total of", ("N",), ("F", "pop"), "with", ("D",), "received", ("C",), "or placebo ."],
    ["we report a case of", ("D",), "associated with", ("C",), "therapy ."],
    [("C",), "-induced", ("D",), "was reversible after withdrawal of the drug ."],
    ["combination of", ("C",), "and", ("C",), "reduced", ("F", "measure"), "in", ("F", "pop"),
     "with", ("D",), "."],
    ["no cases of", ("D",), "or", ("D",), "were observed", ("F", "time"), "."],
    ["these results suggest that", ("C",), "may be useful in the treatment of", ("D",), "."],
    ["the mean", ("F", "measure"), "was", ("N",), "in the", ("C",), "group ."],
    ["risk factors for", ("D",), "included age , sex and prior exposure to", ("C",), "."],
]


def _sentence(rng: random.Random) -> list[tuple[str, str]]:
    """One sentence as (word, IOB2 tag) pairs; entity words get B-/I- Chemical or Disease."""
    words: list[tuple[str, str]] = []
    for part in rng.choice(TEMPLATES):
        if isinstance(part, str):
            words += [(w, "O") for w in part.split()]
        elif part[0] in ("C", "D"):
            name = rng.choice(CHEMICALS if part[0] == "C" else DISEASES)
            kind = "Chemical" if part[0] == "C" else "Disease"
            words += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(name.split())]
        elif part[0] == "N":
            words.append((str(rng.randint(2, 480)), "O"))
        else:
            words += [(w, "O") for w in rng.choice(FILLERS[part[1]]).split()]
    return words


def _detokenize(words: list[str]) -> str:
    text = " ".join(words)
    for punct in (" .", " ,"):
        text = text.replace(punct, punct.strip())
    return text.replace(" -induced", "-induced")


def demo_documents(num_docs: int = 1500, seed: int = 0) -> list[str]:
    """Synthetic abstracts: a title line then 5-12 sentences; document = one string."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        title = _detokenize([w for w, _ in _sentence(rng)]).rstrip(".").capitalize()
        body = " ".join(_detokenize([w for w, _ in _sentence(rng)]).capitalize()
                        for _ in range(rng.randint(5, 12)))
        docs.append(f"{title}\n{body}")
    return docs


def write_demo_corpus(out_dir: str | Path, num_docs: int = 1500, seed: int = 0) -> Path:
    """Write the demo corpus as a folder of .txt files (document = file), like the PMC corpus."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(demo_documents(num_docs, seed)):
        (out / f"demo{i:05d}.txt").write_text(doc + "\n", encoding="utf-8")
    return out


def write_demo_ner(out_dir: str | Path, sizes=(400, 100, 100), seed: int = 1) -> Path:
    """Write train/devel/test IOB2 files (`token<TAB>tag`) in the BLURB layout used by the NER stage."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "devel", "test"), sizes):
        lines = []
        for _ in range(n):
            lines += [f"{w}\t{t}" for w, t in _sentence(rng)] + [""]
        (out / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
