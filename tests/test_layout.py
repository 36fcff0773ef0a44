"""Tests for bulkdl.layout: presets and filters render exactly, hostile values never escape DIR."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdl.errors import InputError
from bulkdl.layout import PRESETS, Layout, dedupe_name, resolve_layout, sanitize_component
from bulkdl.place import Placer
from bulkdl.records import Series, StagedFile

# One LIDC-IDRI instance, as its header and TCIA's series record give it.
STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
SOP = "1.3.6.1.4.1.14519.5.2.1.6279.6001.143451261327128179989900675595"
VALUES = {
    "Collection": "LIDC-IDRI",
    "PatientID": "LIDC-IDRI-0001",
    "StudyInstanceUID": STUDY,
    "SeriesInstanceUID": SERIES,
    "SOPInstanceUID": SOP,
    "Modality": "CT",
    "StudyDate": "20000101",
    "SeriesNumber": "3000566.000000",
    "InstanceNumber": "7",
}
DESCRIPTIVE = (
    "{Collection}/{PatientID}"
    "/{StudyDate|date(%m-%d-%Y)}-{StudyID|default(NA)}"
    "-{StudyDescription|first(53)|default(NA)|replace(/,-)}-{StudyInstanceUID|last(5)}"
    "/{SeriesNumber}-{SeriesDescription|first(53)|default(NA)|replace(/,-)}"
    "-{SeriesInstanceUID|last(5)}/1-{InstanceNumber|pad(3)}.dcm"
)


def render(template: str, **values: str | None) -> str:
    """Parse ``template`` and render it with ``values``, as a POSIX string."""
    return Layout.parse(template).render(values).as_posix()


def parse_error(template: str) -> str:
    """Parse ``template`` expecting an InputError, and return its message."""
    with pytest.raises(InputError) as info:
        Layout.parse(template)
    return str(info.value)


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("default", f"LIDC-IDRI-0001/{STUDY}/{SERIES}/{SOP}.dcm"),
        ("nbia-classic", f"LIDC-IDRI/LIDC-IDRI-0001/{STUDY}/{SERIES}/{SOP}.dcm"),
        ("idc", f"lidc_idri/LIDC-IDRI-0001/{STUDY}/CT_{SERIES}/{SOP}.dcm"),
        ("flat", f"{SERIES}/{SOP}.dcm"),
    ],
)
def test_presets_render_real_values_unchanged(preset: str, expected: str) -> None:
    """Each preset lays out a real LIDC-IDRI instance with its UIDs exactly as they are."""
    path = resolve_layout(preset).render(VALUES)
    assert path == PurePosixPath(expected)
    assert not path.is_absolute()


def test_preset_names_and_keywords() -> None:
    """The five presets exist and report exactly the keywords they read."""
    assert sorted(PRESETS) == ["default", "flat", "idc", "nbia-classic", "nbia-descriptive"]
    assert resolve_layout("idc").keywords == {
        "Collection",
        "PatientID",
        "StudyInstanceUID",
        "Modality",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    }
    assert resolve_layout("flat").keywords == {"SeriesInstanceUID", "SOPInstanceUID"}
    assert resolve_layout("nbia-descriptive").keywords == {
        *("Collection", "PatientID", "StudyDate", "StudyID", "StudyDescription"),
        *("StudyInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesInstanceUID"),
        *("AcquisitionNumber", "InstanceNumber"),
    }


def test_resolve_layout_takes_a_template_and_rejects_unknown_presets() -> None:
    """A template is parsed as such; a bare word that is no preset is an InputError."""
    assert resolve_layout("{Modality}/{SOPInstanceUID}.dcm").render(VALUES) == PurePosixPath(
        f"CT/{SOP}.dcm"
    )
    with pytest.raises(InputError, match="unknown layout preset 'descriptive'"):
        resolve_layout("descriptive")


def test_missing_values_become_the_fallback() -> None:
    """Missing, None, empty and padding-only values render as 'unknown'."""
    path = resolve_layout("idc").render(
        {"PatientID": None, "StudyInstanceUID": "", "Modality": "  "}
    )
    assert path == PurePosixPath("unknown/unknown/unknown/unknown_unknown/unknown.dcm")
    assert resolve_layout("nbia-descriptive").render({}) == PurePosixPath(
        "unknown/unknown/unknown/unknown/unknown-unknown.dcm"
    )


def test_dicom_padding_is_stripped() -> None:
    """Trailing space and NUL padding (DICOM even-length padding) do not reach the path."""
    assert render(
        "{PatientID}/{SOPInstanceUID}.dcm", PatientID="P1 ", SOPInstanceUID="1.2\x00"
    ) == ("P1/1.2.dcm")


def test_descriptive_layout_can_be_expressed() -> None:
    """The Data Retriever's example path also comes out of a hand-written template."""
    assert render(DESCRIPTIVE, **{**VALUES, "InstanceNumber": "1"}) == (
        "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192/1-001.dcm"
    )


# --- nbia-descriptive --------------------------------------------------------------------------

# What the headers of LIDC-IDRI-0001's CT series say (TCIA keeps "NA" in its empty fields).
LIDC_HEADER = {
    "Collection": "LIDC-IDRI",
    "PatientID": "LIDC-IDRI-0001",
    "StudyDate": "20000101",
    "StudyID": "NA",
    "StudyDescription": "NA",
    "StudyInstanceUID": STUDY,
    "SeriesNumber": "3000566",
    "SeriesDescription": "NA",
    "SeriesInstanceUID": SERIES,
    "AcquisitionNumber": "1",
}
LIDC_PATH = "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192/1-001.dcm"


def descriptive(instances: int = 133, **changes: str) -> list[str]:
    """The nbia-descriptive paths of a series of ``instances`` files (InstanceNumber 1...)."""
    layout = resolve_layout("nbia-descriptive")
    rows = [{**LIDC_HEADER, **changes, "InstanceNumber": str(n)} for n in range(1, instances + 1)]
    context = layout.series_context(rows)
    return [layout.render(row, context).as_posix() for row in rows]


def test_nbia_descriptive_reproduces_the_lidc_example() -> None:
    """LIDC-IDRI-0001's first slice lands exactly where the NBIA Data Retriever puts it."""
    paths = descriptive()
    assert paths[0] == LIDC_PATH
    assert paths[132].endswith("/3000566.000000-NA-03192/1-133.dcm")


def test_nbia_descriptive_through_the_placer(tmp_path: Path) -> None:
    """The placer measures the series' widths itself: a download gets 1-001.dcm unaided."""
    placer = Placer(tmp_path, resolve_layout("nbia-descriptive"), lambda _path: None)
    staged = [
        StagedFile(
            f"{n:08d}.dcm",
            tmp_path / f"{n}.dcm",
            1,
            "0" * 32,
            "0" * 64,
            {**LIDC_HEADER, "InstanceNumber": str(n), "SOPInstanceUID": f"{SOP}.{n}"},
        )
        for n in range(1, 134)
    ]
    moves = placer.plan(Series(SERIES, Collection="LIDC-IDRI"), staged)
    assert sorted(m.placed.path for m in moves)[0] == LIDC_PATH
    assert len({m.placed.path for m in moves}) == 133


@pytest.mark.parametrize(
    ("instances", "first", "last"),
    [(9, "1-1.dcm", "1-9.dcm"), (10, "1-01.dcm", "1-10.dcm"), (1000, "1-0001.dcm", "1-1000.dcm")],
)
def test_nbia_descriptive_file_names_take_their_width_from_the_series(
    instances: int, first: str, last: str
) -> None:
    """Instance numbers are padded to the width of the series' largest, as NBIA names them."""
    paths = descriptive(instances)
    assert (paths[0].rsplit("/", 1)[1], paths[-1].rsplit("/", 1)[1]) == (first, last)


def test_nbia_descriptive_pads_each_acquisition_and_instance_number_separately() -> None:
    """Two acquisitions and leading zeros in the header: '1-01.dcm' ... '12-12.dcm'."""
    layout = resolve_layout("nbia-descriptive")
    rows = [
        {**LIDC_HEADER, "AcquisitionNumber": acq, "InstanceNumber": inst}
        for acq, inst in (("1", "0001"), ("+12", "12"), ("2", " 3 "))
    ]
    context = layout.series_context(rows)
    names = [layout.render(row, context).name for row in rows]
    assert names == ["01-01.dcm", "12-12.dcm", "02-03.dcm"]
    assert layout.render(rows[0]).name == "1-1.dcm"  # no series context: each number's own width


@pytest.mark.parametrize(
    ("changes", "study", "series"),
    [
        ({}, "01-01-2000-NA-NA-30178", "3000566.000000-NA-03192"),
        ({"StudyID": "", "StudyDescription": ""}, "01-01-2000-30178", "3000566.000000-NA-03192"),
        (
            {"StudyID": "null", "SeriesDescription": "null"},
            "01-01-2000-NA-30178",
            "3000566.000000-03192",
        ),
        ({"StudyDate": "", "SeriesNumber": ""}, "NA-NA-30178", "NA-03192"),
        (
            {"StudyDescription": "CT/CHEST", "SeriesDescription": "1/2"},
            "01-01-2000-NA-CT-CHEST-30178",
            "3000566.000000-1-2-03192",
        ),
        ({"SeriesDescription": "/"}, "01-01-2000-NA-NA-30178", "3000566.000000-03192"),
        ({"StudyID": "A/B"}, "01-01-2000-A-B-NA-30178", "3000566.000000-NA-03192"),
        ({"SeriesNumber": "500.000000"}, "01-01-2000-NA-NA-30178", "500.000000-NA-03192"),
        ({"SeriesNumber": "0"}, "01-01-2000-NA-NA-30178", "0.000000-NA-03192"),
        ({"StudyDate": "2000"}, "2000-NA-NA-30178", "3000566.000000-NA-03192"),
        (
            {"SeriesDescription": "Recon 2  LUNG"},
            "01-01-2000-NA-NA-30178",
            "3000566.000000-Recon 2  LUNG-03192",
        ),
    ],
)
def test_nbia_descriptive_follows_the_data_retriever_rules(
    changes: dict[str, str], study: str, series: str
) -> None:
    """Empty and 'null' parts drop with their dash, '/' becomes '-', NA is kept as a value."""
    parts = PurePosixPath(descriptive(1, **changes)[0]).parts
    assert parts[2:4] == (study, series)


def test_nbia_descriptive_cuts_descriptions_at_53_characters() -> None:
    """Descriptions are cut to their first 53 characters (after '/' became '-')."""
    long = "ABCDEFGHIJ/" * 6  # 66 characters
    parts = PurePosixPath(descriptive(1, StudyDescription=long, SeriesDescription=long)[0]).parts
    cut = long.replace("/", "-")[:53]
    assert parts[2] == f"01-01-2000-NA-{cut}-30178"
    assert parts[3] == f"3000566.000000-{cut}-03192"
    assert len(cut) == 53


def test_nbia_descriptive_keeps_hostile_values_inside_the_tree() -> None:
    """A description of '..' or with control characters is sanitized like any value."""
    parts = PurePosixPath(
        descriptive(1, StudyDescription="..", SeriesDescription="a\x00b")[0]
    ).parts
    assert parts[2] == "01-01-2000-NA-..-30178"
    assert parts[3].startswith("3000566.000000-a_b-03192~")


# --- derived values and series-wide filters ----------------------------------------------------


def test_collection_id_is_idc_s_lower_case_underscore_form() -> None:
    """{collection_id} is Collection as IDC writes it; a value given for it is kept as is."""
    layout = Layout.parse("{collection_id}")
    assert layout.keywords == {"Collection"}
    for collection, expected in [
        ("LIDC-IDRI", "lidc_idri"),
        ("NSCLC Radiomics-Genomics", "nsclc_radiomics_genomics"),
        ("CPTAC-CCRCC", "cptac_ccrcc"),
        (" TCGA--BRCA ", "tcga_brca"),
    ]:
        assert layout.render({"Collection": collection}).as_posix() == expected
    assert layout.render({"collection_id": "given", "Collection": "X-Y"}).as_posix() == "given"
    assert layout.render({}).as_posix() == "unknown"


def test_series_context_measures_the_value_as_it_reaches_padmax() -> None:
    """Filters before padmax apply first; values that are not integers do not count."""
    layout = Layout.parse("{N|int|padmax}")
    rows = [{"N": "7.000000"}, {"N": "123.5"}, {"N": "x"}, {"N": ""}, {}]
    context = layout.series_context(rows)
    assert [layout.render(row, context).as_posix() for row in rows] == [
        "007",
        "123",
        "x",
        "unknown",
        "unknown",
    ]
    assert Layout.parse("{N}").series_context(rows).widths == {}
    assert not Layout.parse("{N|pad(3)}").series_wide
    assert Layout.parse("{N|padmax}").series_wide


# --- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("{V|last(5)}", SERIES, "03192"),
        ("{V|last(99)}", "1.2", "1.2"),
        ("{V|first(3)}", "CHEST", "CHE"),
        ("{V|date(%m-%d-%Y)}", "20000131", "01-31-2000"),
        ("{V|date(%Y.%m.%d)}", "2000-01-31", "2000.01.31"),
        (
            "{V|date(%d %b %y, day %j, %B, 100%%)}",
            "2000.02.03",
            "03 Feb 00, day 034, February, 100%",
        ),
        ("{V|date(%Y)}", "20001341", "20001341"),
        ("{V|date(%Y)}", "not a date", "not a date"),
        ("{V|default(NA)}", "", "NA"),
        ("{V|default(NA)}", "x", "x"),
        ("{V|lower}", "CT", "ct"),
        ("{V|upper}", "Chest", "CHEST"),
        ("{V|int}", "500.000000", "500"),
        ("{V|int}", "-0042.9", "-42"),
        ("{V|int}", "-0.5", "0"),
        ("{V|int}", "1e3", "1e3"),
        ("{V|pad(4)}", "7", "0007"),
        ("{V|pad(2)}", "123", "123"),
        ("{V|pad(4)}", "7.5", "7.5"),
        ("{V|int|pad(4)}", "7.000000", "0007"),
        ("{V|prefix(S)}", "3", "S3"),
        ("{V|suffix(-)}", "3", "3-"),
        ("{V|replace(/,-)}", "a/b/c", "a-b-c"),
        ("{V|omit(null)|default()}x", "null", "x"),
        ("{V|omit(null)}", "nullx", "nullx"),
        ("{V|omit(-)|default(NA)}", "-", "NA"),
        ("{V|decimal(6)}", "3000566", "3000566.000000"),
        ("{V|decimal(6)}", "500.000000", "500.000000"),
        ("{V|decimal(2)}", "1.005", "1.01"),
        ("{V|decimal(1)}", "-0.01", "0.0"),
        ("{V|decimal(3)}", "+7", "7.000"),
        ("{V|decimal(3)}", "1e3", "1e3"),
        ("{V|decimal(3)}", "9" * 40, "9" * 40),
        ("{V|snake}", "Head-Neck Cetuximab", "head_neck_cetuximab"),
        ("{V|padmax}", "007", "7"),
        ("{V|padmax}", "-03", "-3"),
        ("{V|padmax}", "1.5", "1.5"),
        ("{V|padmax}", "9" * 300, "9" * 246 + "~" + hashlib.sha256(b"9" * 300).hexdigest()[:8]),
        ("{V|default()|suffix(-)}x", "", "x"),
        ("{V|default(n_a)|upper}", "", "N_A"),
        ("{V|upper|default(n_a)}", "", "n_a"),
        ("{V|last(3)}", "", "unknown"),
        ("{V|pad(3)}", "", "unknown"),
        ("{{{V}}}", "x", "{x}"),
    ],
)
def test_filter_output(template: str, value: str, expected: str) -> None:
    """Each filter gives exactly its documented output, empty values included."""
    assert render(template, V=value) == expected


def test_filter_output_is_sanitized() -> None:
    """What a filter produces goes through sanitization like any value."""
    assert render("{V|last(4)}", V="ab/cd") == "b_cd~7ae9572a"  # sha256 of "b/cd"


def test_extension_survives_sanitizing_and_cutting() -> None:
    """A literal '.dcm' stays at the end when the value is changed or cut to 255 bytes."""
    assert render("{SOPInstanceUID}.dcm", SOPInstanceUID="../x") == "___x~d6b96a97.dcm"
    long = render("{SOPInstanceUID}.dcm", SOPInstanceUID="9" * 300)
    assert len(long.encode()) == 255
    assert long.endswith(".dcm")


# --- sanitize_component ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../x", "___.._x~9cdf6a50"),
        ("/abs", "_abs~e802dcc0"),
        ("C:\\x", "C__x~520186e2"),
        ("CON", "_CON~a3dbc4b6"),
        ("con", "_con~1143da2b"),
        ("COM1", "_COM1~6eac394b"),
        ("lpt9.dcm", "_lpt9.dcm~b5930c85"),
        ("nul.txt", "_nul.txt~7f3cbdd5"),
        ("NUL.tar.gz", "_NUL.tar.gz~94c5937c"),
        ("CONIN$", "_CONIN$~4954c3bf"),
        (".", "_~cdb4ee2a"),
        ("..", "__~5ec1f7e7"),
        (".hidden", "_hidden~16924190"),
        ("", "unknown~e3b0c442"),
        ("a\x00b", "a_b~59b271ae"),
        ("a\x07b\x1b[31m", "a_b_[31m~939e8da1"),
        ("a\x7fb", "a_b~4ef99256"),
        ("a\x85b", "a_b~75e7cf7e"),
        ("a\u202eb", "a_b~1f7a9d5e"),
        ("a\u2066b", "a_b~5a75dade"),
        ("a\u200fb", "a_b~42db16aa"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h~03ef3b0b"),
        ("trail.", "trail_~cedd4b9f"),
        ("trail ", "trail_~59413e90"),
        ("e\u0301", "\u00e9~bf12767b"),
        ("a/b", "a_b~c14cddc0"),
        ("a\\b", "a_b~c62016d0"),
        ("abc~deadbeef", "abc~deadbeef~884f55f9"),
        (b"\xff\xfe", "\ufffd\ufffd~b3d510ef"),
        (b"a\xe9b", "a\ufffdb~5941946d"),
    ],
)
def test_sanitize_hostile_values(raw: str | bytes, expected: str) -> None:
    """Every hostile value becomes its exact safe form, marked with the hash of the raw value."""
    assert sanitize_component(raw) == expected


@pytest.mark.parametrize(
    "clean",
    [
        "a_b",
        "LIDC-IDRI-0001",
        SOP,
        "Müller 李",
        "😀",
        "👨\u200d👩\u200d👧",
        "\u00e9",
        "x.dcm",
        "CONSOLE",
    ],
)
def test_clean_values_stay_exactly_as_they_are(clean: str) -> None:
    """Clean values, non-ASCII letters and emoji (ZWJ sequences too) are kept unchanged."""
    assert sanitize_component(clean) == clean
    assert sanitize_component(clean.encode()) == clean


def test_sanitize_distinguishes_slash_backslash_and_underscore() -> None:
    """'a/b', 'a\\b' and 'a_b' stay three different components."""
    assert len({sanitize_component(v) for v in ("a/b", "a\\b", "a_b")}) == 3


def test_long_names_are_cut_to_255_bytes_on_a_character_boundary() -> None:
    """A 300-byte name is cut to 255 bytes, keeping whole characters, with the hash appended."""
    digest = hashlib.sha256(b"x" * 300).hexdigest()[:8]
    assert sanitize_component("x" * 300) == "x" * 246 + "~" + digest
    accented = sanitize_component("\u00e9" * 200)  # 400 bytes of 2-byte characters
    assert (
        accented == "\u00e9" * 123 + "~" + hashlib.sha256(("\u00e9" * 200).encode()).hexdigest()[:8]
    )
    assert len(accented.encode()) == 255


def test_sanitize_fallback_is_itself_cleaned() -> None:
    """An empty value takes the given fallback, cleaned and marked, never a hostile path."""
    assert sanitize_component("", fallback="none") == "none~e3b0c442"
    assert sanitize_component(b"", fallback="..") == "__~e3b0c442"


def test_lone_surrogates_become_replacement_characters() -> None:
    """A str holding a lone surrogate (not encodable as UTF-8) still gives a valid name."""
    assert (
        sanitize_component("a\ud800")
        == "a\ufffd~" + (hashlib.sha256("a\ud800".encode("utf-8", "surrogatepass")).hexdigest()[:8])
    )


# --- dedupe_name -------------------------------------------------------------------------------


def test_dedupe_name_puts_the_key_hash_before_the_extension() -> None:
    """A colliding name gets '~' + 8 hex of sha256(key) before '.dcm', the same on every run."""
    digest = hashlib.sha256(SOP.encode()).hexdigest()[:8]
    assert dedupe_name("1-001.dcm", SOP) == f"1-001~{digest}.dcm"
    assert dedupe_name(f"{SOP}.dcm", "k") == f"{SOP}~8254c329.dcm"
    assert dedupe_name("1.2.3", "k") == "1.2.3~8254c329"


def test_dedupe_name_stays_within_255_bytes() -> None:
    """A name already at the limit is cut so the suffix and extension still fit."""
    name = "9" * 251 + ".dcm"
    deduped = dedupe_name(name, "k")
    assert deduped == "9" * 242 + "~8254c329.dcm"
    assert len(deduped.encode()) == 255


# --- parse errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "problem", "column"),
    [
        ("", "empty", 1),
        ("{PatientID", "unbalanced '{'", 1),
        ("a}/{X}", "unbalanced '}'", 2),
        ("a/{}", "empty placeholder", 3),
        ("{ X}", "must start with a DICOM keyword", 2),
        ("{X|nope}", "unknown filter 'nope'", 4),
        ("{X|last}", "needs an argument", 4),
        ("{X|last(0)}", "from 1 to 255", 9),
        ("{X|first(x)}", "whole number", 10),
        ("{X|lower(1)}", "takes no argument", 9),
        ("{X|first(3}", "unclosed '('", 9),
        ("{X|date(%Q)}", "unknown date directive '%Q'", 9),
        ("{X|default(a/b)}", "'/' is not allowed", 13),
        ("{X|replace(a)}", "OLD,NEW", 12),
        ("{X|omit()}", "needs the text to omit", 9),
        ("{X|omit}", "needs an argument", 4),
        ("{X|decimal(0)}", "from 1 to 20", 12),
        ("{X|decimal(21)}", "from 1 to 20", 12),
        ("{X|padmax(3)}", "takes no argument", 10),
        ("{X|snake(3)}", "takes no argument", 9),
        ("{_X}", "must start with a DICOM keyword", 2),
        ("{X!}", "expected '|'", 3),
        ("{X|}", "expected a filter name", 4),
        ("{X{Y}}", "'{' inside a placeholder", 3),
        ("{X}/../{Y}", "'..' is not allowed", 5),
        ("./{Y}", "'.' is not allowed", 1),
        ("/abs/{Y}", "absolute", 1),
        ("{X}//{Y}", "empty path component", 5),
        ("{X}/", "empty path component", 5),
        ("a\\b/{Y}", "'\\\\' is not allowed in literal text", 2),
        ("{X}/.{Y}", "may not start with '.'", 5),
        ("{X}/{Y}.", "may not end with '.'", 8),
        ("CON/{Y}", "not a portable", 1),
        ("{X}/a\x00b", "not allowed in literal text", 6),
        ("{X}:{Y}", "':' is not allowed in literal text", 4),
    ],
)
def test_parse_errors_name_the_template_and_column(
    template: str, problem: str, column: int
) -> None:
    """Each malformed template raises InputError naming it, the problem and the column."""
    message = parse_error(template)
    assert repr(template) in message
    assert problem in message
    assert message.endswith(f"(column {column})")


def test_literal_braces_and_text_parse() -> None:
    """'{{' and '}}' are literal braces, and a template needs no placeholder to parse."""
    assert render("{{x}}/{{{V}}}.dcm", V="1") == "{x}/{1}.dcm"
    assert Layout.parse("all.dcm").keywords == frozenset()


# --- properties --------------------------------------------------------------------------------

KEYWORDS = [
    *("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"),
    *("Collection", "StudyID", "StudyDescription", "SeriesDescription", "SeriesNumber"),
    *("InstanceNumber", "AcquisitionNumber", "StudyDate"),
]
HOSTILE = st.sampled_from(["", ".", "..", "/", "\\", "\x00", "\u202e", "CON", "nul", "~", "a", "é"])
RAW = st.one_of(
    st.text(),
    st.binary(),
    st.lists(HOSTILE).map("".join),
    st.text(min_size=200, max_size=400),
)
TEMPLATES = st.sampled_from(
    [
        *PRESETS.values(),
        DESCRIPTIVE,
        "{collection_id}/{InstanceNumber|padmax}",
        "{PatientID}{Modality}.{SOPInstanceUID}",
        "x{Modality|last(3)}",
    ]
)


def assert_safe(path: PurePosixPath, root: Path) -> None:
    """``path`` is relative, each component portable, and joined to ``root`` it stays inside."""
    assert not path.is_absolute()
    assert path.parts
    for part in path.parts:
        assert part and part not in (".", "..")
        assert len(part.encode("utf-8")) <= 255
        assert not any(c in "/\\\x00" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in part)
        assert not part.startswith(".")
        assert not part.endswith((".", " "))
    joined = os.path.normpath(os.path.join(root, *path.parts))
    assert joined.startswith(str(root) + os.sep)


@settings(max_examples=300)
@given(template=TEMPLATES, values=st.dictionaries(st.sampled_from(KEYWORDS), st.none() | RAW))
def test_render_never_escapes_the_root(
    template: str, values: dict[str, str | bytes | None], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """For any header values, every preset's path stays inside DIR with portable components."""
    root = tmp_path_factory.getbasetemp().resolve() / "out"
    assert_safe(Layout.parse(template).render(values), root)


def as_bytes(raw: str | bytes) -> bytes:
    """The raw value as the bytes it stands for."""
    return raw if isinstance(raw, bytes) else raw.encode("utf-8")


@settings(max_examples=500)
@given(first=RAW, second=RAW)
def test_different_raw_values_never_share_a_component(
    first: str | bytes, second: str | bytes
) -> None:
    """Two different raw values always give two different sanitized components."""
    same = sanitize_component(first) == sanitize_component(second)
    assert same == (as_bytes(first) == as_bytes(second))


TEMPLATE_TEXT = st.lists(
    st.sampled_from(
        [
            *("{", "}", "{{", "}}", "|", "(", ")", "/", ".", "..", "\\", ":", " ", "\x00", "%"),
            *("PatientID", "X", "last", "first(3", "date(%m-%d-%Y)", "default()", "int"),
            *("pad(4)", "replace(/,-)", "nope", "CON", ",", "5", "é", "\u202e"),
            *("omit(null)", "decimal(6)", "padmax", "snake", "collection_id", "_"),
        ]
    )
).map("".join)


@settings(max_examples=500)
@given(template=st.one_of(TEMPLATE_TEXT, st.text()), values=st.dictionaries(st.text(), RAW))
def test_any_template_parses_or_raises_input_error(
    template: str, values: dict[str, str | bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any template text parses or raises InputError; what parses renders a safe path."""
    try:
        layout = Layout.parse(template)
    except InputError as error:
        assert "column" in str(error)
        return
    root = tmp_path_factory.getbasetemp().resolve() / "out"
    assert_safe(layout.render({keyword: values.get(keyword) for keyword in layout.keywords}), root)
