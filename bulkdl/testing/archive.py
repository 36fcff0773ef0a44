"""A synthetic, deterministic NBIA archive: patients, studies, series rows and real DICOM files.

:class:`ArchiveSpec` says what to make; :meth:`FakeArchive.build` makes it under a cache directory
keyed by a hash of the spec (built in a temporary folder, then renamed into place, and reused when
present), or, for ``metadata_only`` specs, makes only the rows in memory (fast enough for 200,000
series). Everything follows from ``seed``: UIDs live under TCIA's ``1.3.6.1.4.1.14519.5.2.1`` root.
The rows hold the v4 columns of getPatient, getPatientStudy and getSeries with nulls left out, as
the server sends them. This module does file I/O when it builds or loads an archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

from bulkdl.testing.dicomgen import CtInstance, derive_ct_file, noisy_pixels, write_ct_file

#: A column value as the server sends it (a null is an absent key, never None).
Value = str | int
Row = dict[str, Value]

UID_ROOT = "1.3.6.1.4.1.14519.5.2.1"
FORMAT_VERSION = 1
#: Values that break naive path building; spread over PatientID, descriptions and names.
AWKWARD_VALUES: tuple[str, ...] = (
    "../../x",
    "/abs",
    "C:\\x",
    "CON",
    "NUL",
    ".",
    "..",
    "",
    "ctl\x01\x07\x1b[31mred\x7f",
    "L" * 300,
    "rtl\u202egpj.exe\u200f",
    "emoji \U0001fac1\U0001fa7b",
    "Zo\u00eb \u00d1\u00fa\u00f1ez \u5c71\u7530",
    "trailing dot. ",
)
_NAMES = ("Doe^John", "M\u00fcller^J\u00fcrgen", "\u5c71\u7530^\u592a\u90ce", "O'Brien^Se\u00e1n")
_BODY_PARTS = ("CHEST", "ABDOMEN", "HEAD", "PELVIS")
_MANUFACTURERS = (
    ("GE MEDICAL SYSTEMS", "LightSpeed16", "LightSpeedverrel"),
    ("SIEMENS", "SOMATOM Definition AS", "syngo CT 2012B"),
    ("TOSHIBA", "Aquilion", None),
)
_LICENSE = (
    "Creative Commons Attribution 4.0 International License",
    "https://creativecommons.org/licenses/by/4.0/",
)


def default_cache_dir() -> Path:
    """Where built archives are kept between runs: ``$XDG_CACHE_HOME/bulkdl/fake-archives``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bulkdl" / "fake-archives"


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """What synthetic archive to make; equal specs give byte-identical archives.

    ``images_per_series`` is one count for every series, or a tuple cycled over the series.
    ``awkward`` puts hostile values in IDs and descriptions; ``metadata_only`` makes rows only.
    """

    collections: tuple[str, ...] = ("DEMO-CT",)
    patients_per_collection: int = 2
    studies_per_patient: int = 1
    series_per_study: int = 2
    images_per_series: int | tuple[int, ...] = 8
    rows: int = 512
    columns: int = 512
    seed: int = 0
    awkward: bool = False
    metadata_only: bool = False

    def key(self) -> str:
        """A short stable hash of the spec, naming its cache folder."""
        text = json.dumps([FORMAT_VERSION, asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def image_count(self, series_index: int) -> int:
        """How many images the ``series_index``-th series holds."""
        counts = self.images_per_series
        if isinstance(counts, int):
            return counts
        return counts[series_index % len(counts)]


@dataclass(frozen=True, slots=True)
class Instance:
    """One image file of a series: its identity, numbers and the file's size and MD5."""

    sop_uid: str
    instance_number: int
    acquisition_number: int
    relpath: str
    size: int
    md5: str


@dataclass(frozen=True, slots=True)
class SeriesData:
    """A series: its getSeries row and its images in database order (empty when metadata-only).

    ``revision`` is empty as built and a short content tag after :meth:`FakeArchive.revise`.
    """

    index: int
    uid: str
    study_uid: str
    patient_id: str
    collection: str
    row: Row
    instances: tuple[Instance, ...] = ()
    revision: str = ""


@dataclass(slots=True)
class FakeArchive:
    """A built archive: rows per patient, study and series, files under ``root``, licences."""

    spec: ArchiveSpec
    root: Path | None
    patients: list[Row] = field(default_factory=list)
    studies: list[Row] = field(default_factory=list)
    series: list[SeriesData] = field(default_factory=list)
    licenses: dict[str, str] = field(default_factory=dict)
    _by_uid: dict[str, SeriesData] = field(default_factory=dict)

    @classmethod
    def build(cls, spec: ArchiveSpec, cache_dir: Path | str | None = None) -> FakeArchive:
        """Make (or load from ``cache_dir``) the archive ``spec`` describes.

        ``cache_dir`` is required unless ``spec.metadata_only``. Raises OSError on disk errors.
        """
        if spec.metadata_only:
            archive = cls(spec, None)
            _generate(archive, None)
            archive._index()
            return archive
        if cache_dir is None:
            raise ValueError("cache_dir is required for an archive with files")
        root = Path(cache_dir) / f"archive-{spec.key()}"
        if not (root / "index.json").is_file():
            tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}-{random.randrange(10**9)}")
            tmp.mkdir(parents=True)
            try:
                staged = cls(spec, tmp)
                _generate(staged, tmp)
                _write_json(tmp / "index.json", staged._to_json())
                try:
                    tmp.rename(root)
                except OSError:
                    if not (root / "index.json").is_file():
                        raise  # a concurrent builder did not win the race either
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return cls._load(spec, root)

    def lookup(self, series_uid: str) -> SeriesData | None:
        """The series with this UID, or None."""
        return self._by_uid.get(series_uid)

    def revise(self, series_uid: str, *, drop: int = 0, add: int = 0) -> SeriesData:
        """Revise a series on the "server" as curators do: remove its last ``drop`` images (in
        database order), then add ``add`` new ones (new SOPInstanceUIDs, higher InstanceNumbers).

        ImageCount and FileSize in its rows follow (NBIA's ImageCount is a live count), and
        getImage then serves the new content. In memory only: the cached archive on disk gains
        the new files but its index is unchanged, so revise a :class:`FakeArchive` of your own
        rather than one other tests share. Returns the revised series; raises LookupError for an
        unknown UID or a metadata-only archive, ValueError when ``drop`` exceeds the images.
        """
        old = self._by_uid.get(series_uid)
        if old is None:
            raise LookupError(f"no series {series_uid}")
        if self.root is None:
            raise LookupError("a metadata-only archive has no files to revise")
        if not 0 <= drop <= len(old.instances) or add < 0:
            raise ValueError(f"cannot drop {drop} of {len(old.instances)} images (add {add})")
        kept = list(old.instances[: len(old.instances) - drop])
        # New images depend on the content revised, so revising twice adds distinct images.
        generation = old.revision or "0"
        source = old.instances[0] if old.instances else None
        top = max((i.instance_number for i in old.instances), default=0)
        for k in range(add):
            if source is None:
                raise ValueError("cannot add images to an empty series")
            sop = make_uid(self.spec.seed, "sop-revised", old.index, generation, k)
            relpath = f"files/{old.index:06d}/r{generation}-{k:05d}.dcm"  # beside the originals
            number = top + 1 + k
            size = derive_ct_file(
                self.file_path(source), self.root / relpath, sop_uid=sop, instance_number=number
            )
            md5 = hashlib.md5((self.root / relpath).read_bytes()).hexdigest()
            kept.append(Instance(sop, number, source.acquisition_number, relpath, size, md5))
        tag = hashlib.sha256("".join(i.md5 for i in kept).encode()).hexdigest()[:12]
        row = {**old.row, "ImageCount": len(kept), "FileSize": sum(i.size for i in kept)}
        new = replace(old, row=row, instances=tuple(kept), revision=tag)
        self.series[self.series.index(old)] = new
        self._index()
        return new

    def file_path(self, instance: Instance) -> Path:
        """Where an instance's DICOM file is on disk."""
        if self.root is None:
            raise LookupError("a metadata-only archive has no files")
        return self.root / instance.relpath

    def license_text(self, collection: str) -> str:
        """The LICENSE entry getImage puts first in a ZIP of this collection's series."""
        return self.licenses.get(collection, self.licenses.get("", ""))

    def _index(self) -> None:
        self._by_uid = {s.uid: s for s in self.series}

    def _to_json(self) -> dict[str, object]:
        return {
            "version": FORMAT_VERSION,
            "patients": self.patients,
            "studies": self.studies,
            "licenses": self.licenses,
            "series": [
                {
                    "index": s.index,
                    "uid": s.uid,
                    "study_uid": s.study_uid,
                    "patient_id": s.patient_id,
                    "collection": s.collection,
                    "row": s.row,
                    "instances": [asdict(i) for i in s.instances],
                }
                for s in self.series
            ],
        }

    @classmethod
    def _load(cls, spec: ArchiveSpec, root: Path) -> FakeArchive:
        data = json.loads((root / "index.json").read_text(encoding="utf-8"))
        archive = cls(spec, root, data["patients"], data["studies"], licenses=data["licenses"])
        for s in data["series"]:
            archive.series.append(
                SeriesData(
                    s["index"],
                    s["uid"],
                    s["study_uid"],
                    s["patient_id"],
                    s["collection"],
                    s["row"],
                    tuple(Instance(**i) for i in s["instances"]),
                )
            )
        archive._index()
        return archive


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def make_uid(seed: int, *parts: object) -> str:
    """A deterministic UID under TCIA's root, 64 characters, unique per (seed, parts)."""
    root = f"{UID_ROOT}.{1000 + seed % 9000}."
    digest = hashlib.sha256(f"{seed}:{parts}".encode()).digest()
    return root + str(int.from_bytes(digest, "big"))[: 64 - len(root)]


@lru_cache(maxsize=16384)
def mdy(d: date) -> str:
    """A date as NBIA writes it: MM-DD-YYYY."""
    return f"{d.month:02d}-{d.day:02d}-{d.year:04d}"


def _unique(value: str, index: int, period: int) -> str:
    return value if index < period else f"{value}-{index}"


def _generate(archive: FakeArchive, root: Path | None) -> None:
    """Fill ``archive`` with rows (and files under ``root`` when given)."""
    spec = archive.spec
    rng = random.Random(spec.seed)
    series_index = study_index = 0
    n_awk = len(AWKWARD_VALUES)
    for c_index, collection in enumerate(spec.collections):
        archive.licenses[collection] = (
            f"{collection} is distributed under the {_LICENSE[0]} ({_LICENSE[1]}).\n\n"
            "TCIA Data Usage Policy: users must abide by the TCIA Data Usage Policy and "
            "Restrictions and cite the collection's DOI.\n"
        )
        site = ("MDA", "VCU", "UCSF")[c_index % 3]
        doi = f"https://doi.org/10.7937/TCIA.{spec.seed % 10000:04d}.{c_index:04d}"
        for p in range(spec.patients_per_collection):
            if spec.awkward:
                pid = _unique(AWKWARD_VALUES[p % n_awk], p, n_awk)
                name = AWKWARD_VALUES[(p + 4) % n_awk] if p % 2 else _NAMES[p % len(_NAMES)]
            else:
                pid = f"{collection}-{p + 1:04d}"
                name = _NAMES[p % len(_NAMES)]
            sex = "FM"[rng.randrange(2)]
            age = f"{rng.randrange(30, 85):03d}Y"
            archive.patients.append(
                _row(
                    PatientId=pid,
                    PatientName=name,
                    PatientSex=sex,
                    EthnicGroup=None,
                    Collection=collection,
                    Phantom="NO",
                    SpeciesCode="337915000",
                    SpeciesDescription="Homo sapiens",
                    Authorized=1,
                )
            )
            for _st in range(spec.studies_per_patient):
                study_uid = make_uid(spec.seed, "study", study_index)
                study_day = date(1998, 1, 1) + timedelta(days=rng.randrange(5000))
                study_desc: str | None = ("CT CHEST W CONTRAST", "CT ABD PELVIS", None)[
                    study_index % 3
                ]
                if spec.awkward:
                    study_desc = AWKWARD_VALUES[(study_index + 7) % n_awk]
                study_id = str(rng.randrange(1, 99999)) if study_index % 4 else None
                archive.studies.append(
                    _row(
                        StudyInstanceUID=study_uid,
                        StudyDate=mdy(study_day),
                        StudyDescription=study_desc,
                        AdmittingDiagnosesDescription=None,
                        StudyID=study_id,
                        PatientAge=age if study_index % 5 else None,
                        PatientID=pid,
                        PatientName=name,
                        PatientSex=sex,
                        EthnicGroup=None,
                        Collection=collection,
                        SeriesCount=spec.series_per_study,
                        LongitudinalTemporalEventType=None,
                        LongitudinalTemporalOffsetFromEvent=None,
                        Authorized=1,
                    )
                )
                for se in range(spec.series_per_study):
                    maker, model, software = _MANUFACTURERS[series_index % len(_MANUFACTURERS)]
                    submitted = date(2015, 1, 1) + timedelta(days=rng.randrange(3000))
                    desc: str | None = (
                        AWKWARD_VALUES[(series_index + 3) % n_awk]
                        if spec.awkward
                        else ("AXIAL 2.5mm", "Recon 2: LUNG", None, "SCOUT")[series_index % 4]
                    )
                    number = 1 + se if series_index % 3 else 500 + 100 * se
                    count = spec.image_count(series_index)
                    uid = make_uid(spec.seed, "series", series_index)
                    instances: tuple[Instance, ...] = ()
                    if root is not None:
                        instances = _write_series(
                            root,
                            spec,
                            series_index,
                            CtInstance(
                                patient_id=pid,
                                patient_name=name,
                                patient_sex=sex,
                                patient_age=age,
                                study_uid=study_uid,
                                study_date=study_day.strftime("%Y%m%d"),
                                study_id=study_id or "",
                                study_description=study_desc or "",
                                series_uid=uid,
                                series_number=number,
                                series_description=desc or "",
                                protocol_name="CHEST ROUTINE",
                                body_part=_BODY_PARTS[series_index % len(_BODY_PARTS)],
                                manufacturer=maker,
                                model_name=model,
                                software_versions=software or "",
                                sop_uid="",
                                frame_of_reference_uid=make_uid(spec.seed, "for", series_index),
                                instance_number=0,
                                acquisition_number=0,
                                rows=spec.rows,
                                columns=spec.columns,
                            ),
                            count,
                        )
                        file_size = sum(i.size for i in instances)
                    else:
                        file_size = count * (
                            spec.rows * spec.columns * 2 + 1400 + rng.randrange(64)
                        )
                    row = _row(
                        SeriesInstanceUID=uid,
                        StudyInstanceUID=study_uid,
                        Modality="CT",
                        ProtocolName="CHEST ROUTINE" if series_index % 4 != 2 else None,
                        SeriesDate=mdy(study_day),
                        SeriesDescription=desc,
                        BodyPartExamined=_BODY_PARTS[series_index % len(_BODY_PARTS)],
                        SeriesNumber=f"{number}.000000",
                        AnnotationsFlag=None,
                        Collection=collection,
                        Site=site,
                        PatientID=pid,
                        PatientSex=sex,
                        PatientAge=age if study_index % 5 else None,
                        AdmittingDiagnosisDescription=None,
                        Manufacturer=maker,
                        ManufacturerModelName=model,
                        SoftwareVersions=software,
                        ImageCount=count,
                        MaxSubmissionTimestamp=mdy(submitted),
                        LicenseName=_LICENSE[0],
                        LicenseURI=_LICENSE[1],
                        DataDescriptionURI=doi,
                        FileSize=file_size,
                        ReleasedStatus="Yes",
                        DateReleased=mdy(submitted + timedelta(days=30)),
                        StudyDesc=study_desc,
                        StudyDate=mdy(study_day),
                        ThirdPartyAnalysis="YES" if series_index % 7 == 6 else None,
                        Authorized=1,
                    )
                    archive.series.append(
                        SeriesData(series_index, uid, study_uid, pid, collection, row, instances)
                    )
                    series_index += 1
                study_index += 1


def _row(**values: Value | None) -> Row:
    return {k: v for k, v in values.items() if v is not None}


def database_order(count: int, seed: int, series_index: int) -> list[int]:
    """A deterministic shuffle of ``range(count)`` that is not instance order when count > 1."""
    order = list(range(count))
    random.Random(f"{seed}:db:{series_index}").shuffle(order)
    if count > 1 and order == sorted(order):
        order = order[1:] + order[:1]
    return order


def _write_series(
    root: Path, spec: ArchiveSpec, series_index: int, template: CtInstance, count: int
) -> tuple[Instance, ...]:
    """Write a series' files; return its instances in database order."""
    folder = root / "files" / f"{series_index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{spec.seed}:px:{series_index}")
    two_acquisitions = series_index % 3 == 1 and count > 1
    made: list[Instance] = []
    for k in range(count):
        number = k + 1
        acquisition = 2 if two_acquisitions and k >= count // 2 else 1
        sop = make_uid(spec.seed, "sop", series_index, k)
        inst = _replace_instance(template, sop, number, acquisition)
        pixels = noisy_pixels(spec.rows, spec.columns, series_index % 4, rng)
        relpath = f"files/{series_index:06d}/{number:05d}.dcm"
        size = write_ct_file(root / relpath, inst, pixels)
        md5 = hashlib.md5((root / relpath).read_bytes()).hexdigest()
        made.append(Instance(sop, number, acquisition, relpath, size, md5))
    return tuple(made[i] for i in database_order(count, spec.seed, series_index))


def _replace_instance(template: CtInstance, sop: str, number: int, acquisition: int) -> CtInstance:
    return replace(template, sop_uid=sop, instance_number=number, acquisition_number=acquisition)
