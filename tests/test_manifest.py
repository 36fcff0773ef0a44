"""Tests for bulkdl.manifest: every format read whole, its errors located, writers round-tripped."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdl.errors import InputError, ManifestError
from bulkdl.manifest import (
    ManifestFormat,
    parse_manifest,
    read_manifest,
    read_manifests,
    sniff_format,
    write_csv,
    write_tcia,
)
from bulkdl.records import is_uid

# Three LIDC-IDRI series, as a real TCIA basket lists them.
U1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
U2 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"
U3 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170052181746004939527661217512"

TCIA_HEADER_30 = (
    "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet\n"
    "includeAnnotation=true\n"
    "noOfrRetry=4\n"
    "databasketId=manifest-1600709154662.tcia\n"
    "manifestVersion=3.0\n"
    "ListOfSeriesToDownload=\n"
)
TCIA_30 = TCIA_HEADER_30 + f"{U1}\n{U2}\n{U3}\n"


def manifest_error(text: str, source: str, fmt: ManifestFormat | None = None) -> ManifestError:
    """Parse ``text`` expecting a ManifestError, and return it."""
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source, fmt)
    return info.value


# --- .tcia -------------------------------------------------------------------------------------


def test_tcia_real_manifest_is_read_whole() -> None:
    """A TCIA 3.0 manifest gives its series in file order."""
    assert parse_manifest(TCIA_30, "LIDC.tcia") == [U1, U2, U3]


def test_tcia_tolerates_crlf_bom_blanks_series_id_and_duplicates() -> None:
    """CRLF, a BOM, blanks, spaces, a 'Series ID' line and repeats still give each UID once."""
    text = (
        "\ufeff"
        + TCIA_HEADER_30.replace("\n", "\r\n")
        + "Series ID\r\n"
        + f"\r\n  {U1}  \r\n\r\n{U2}\r\n{U1}\r\n\t{U3}\r\n{U2}\r\n\r\n"
    )
    assert parse_manifest(text, "LIDC.tcia") == [U1, U2, U3]


@pytest.mark.parametrize(
    "header",
    [
        # 1.0: before manifestVersion existed, public host
        "downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet\n"
        "includeAnnotation=true\nnoOfrRetry=4\ndatabasketId=manifest-1491489441577.tcia\n"
        "manifestVersion=1.0\nListOfSeriesToDownload=\n",
        "downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet\n"
        "includeAnnotation=false\nnoOfrRetry=4\ndatabasketId=manifest-1542731172463.tcia\n"
        "manifestVersion=2.0\nListOfSeriesToDownload=\n",
        TCIA_HEADER_30,
        TCIA_HEADER_30.replace("manifestVersion=3.0", "manifestVersion=3.1"),
    ],
    ids=["1.0", "2.0", "3.0", "3.1"],
)
def test_tcia_versions_read_alike(header: str) -> None:
    """Manifest versions 1.0, 2.0 and 3.x headers all give the listed series."""
    assert parse_manifest(header + f"{U1}\n{U2}\n", "basket.tcia") == [U1, U2]


def test_tcia_bad_line_names_file_and_line() -> None:
    """A non-UID line in the list is an error naming the file and its 1-based line."""
    text = TCIA_30 + "1.3.6.1.4.1.14519.5.2.1.6279.6001.17905x\n"
    error = manifest_error(text, "LIDC.tcia")
    assert (
        str(error)
        == "LIDC.tcia:10: not a SeriesInstanceUID: '1.3.6.1.4.1.14519.5.2.1.6279.6001.17905x'"
    )
    assert (error.source, error.line) == ("LIDC.tcia", 10)


def test_tcia_line_numbers_count_physical_lines_with_crlf_and_bom() -> None:
    """With a BOM and CRLF, the reported line is the one an editor shows."""
    text = "\ufeff" + TCIA_HEADER_30.replace("\n", "\r\n") + f"{U1}\r\n\r\nnot-a-uid\r\n"
    assert manifest_error(text, "m.tcia").line == 9


def test_tcia_series_id_line_is_only_tolerated_first() -> None:
    """'Series ID' after a UID is an error, not a silently skipped line."""
    error = manifest_error(TCIA_HEADER_30 + f"{U1}\nSeries ID\n", "m.tcia")
    assert str(error) == "m.tcia:8: not a SeriesInstanceUID: 'Series ID'"


def test_tcia_second_header_after_the_list_is_an_error() -> None:
    """Two manifests pasted together fail on the second one's first header line."""
    error = manifest_error(TCIA_30 + TCIA_30, "twice.tcia")
    assert error.line == 10
    assert "downloadServerUrl=" in str(error)


def test_tcia_uid_longer_than_64_is_an_error() -> None:
    """A 65-character digits-and-dots line is not a UID."""
    long_uid = "1." + "2" * 63
    assert manifest_error(TCIA_HEADER_30 + long_uid + "\n", "m.tcia").line == 7


def test_tcia_without_list_start_is_an_error() -> None:
    """A .tcia with no ListOfSeriesToDownload= line is an error naming the file."""
    text = TCIA_HEADER_30.replace("ListOfSeriesToDownload=\n", "") + U1 + "\n"
    assert str(manifest_error(text, "m.tcia")) == (
        "m.tcia: not a .tcia manifest: no 'ListOfSeriesToDownload=' line"
    )


def test_tcia_empty_list_gives_empty_result() -> None:
    """A basket with no series parses to [] for the caller to judge."""
    assert parse_manifest(TCIA_HEADER_30 + "\n\n", "m.tcia") == []


def test_tcia_uid_on_the_list_start_line_is_kept() -> None:
    """A UID written on the ListOfSeriesToDownload= line itself is not lost."""
    text = TCIA_HEADER_30.replace("ListOfSeriesToDownload=\n", f"ListOfSeriesToDownload={U1}\n")
    assert parse_manifest(text + U2, "m.tcia") == [U1, U2]


# --- CSV / TSV ---------------------------------------------------------------------------------


def test_csv_with_series_instance_uid_column() -> None:
    """A CSV with a SeriesInstanceUID column among others gives that column, in row order."""
    text = f"Collection,SeriesInstanceUID,Modality\nLIDC-IDRI,{U1},CT\nLIDC-IDRI,{U2},CT\n"
    assert parse_manifest(text, "cart.csv") == [U1, U2]


def test_csv_metadata_style_series_uid_column() -> None:
    """A metadata.csv-style table with 'Series UID' first works."""
    text = (
        "Series UID,Collection,Subject ID,Study UID,Number of Images\r\n"
        f"{U3},LIDC-IDRI,LIDC-IDRI-0001,1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178,133\r\n"
    )
    assert parse_manifest(text, "metadata.csv") == [U3]


@pytest.mark.parametrize(
    "column",
    [" seriesinstanceuid ", "Series Instance UID", "SeriesUID", "\ufeffSeries UID", "SERIES UID"],
)
def test_csv_uid_column_spellings(column: str) -> None:
    """The UID column is found whatever its case, spacing, BOM or TCIA spelling."""
    assert parse_manifest(f"PatientID,{column}\nP1,{U1}\nP2,{U2}\n", "m.csv") == [U1, U2]


def test_tsv_and_semicolon_delimiters_are_detected() -> None:
    """Tab- and semicolon-separated tables read like comma-separated ones."""
    assert parse_manifest(f"Subject ID\tSeries UID\nP1\t{U1}\n", "m.tsv") == [U1]
    assert parse_manifest(f"Subject ID;Series UID\nP1;{U2}\n", "m.csv") == [U2]
    assert parse_manifest(f"Subject ID\tSeries UID\nP1\t{U1}\n", "m.csv") == [U1]


def test_csv_quoted_fields_and_multiline_cells() -> None:
    """Quoted cells holding delimiters, quotes and newlines do not disturb the UID column."""
    text = (
        "SeriesInstanceUID,SeriesDescription\n"
        f'"{U1}","Chest, ""lung"" window"\n'
        f'{U2},"two\nlines"\n'
        f"{U3},plain\n"
    )
    assert parse_manifest(text, "m.csv") == [U1, U2, U3]


def test_csv_blank_lines_and_duplicates() -> None:
    """Blank lines are skipped and a UID seen twice is kept once, at its first place."""
    text = f"\nSeriesInstanceUID\n\n{U2}\n{U1}\n,\n{U2}\n"
    assert parse_manifest(text, "m.csv") == [U2, U1]


def test_csv_header_only_gives_empty_list() -> None:
    """A table with a header and no rows gives []."""
    assert parse_manifest("SeriesInstanceUID,Collection\n", "m.csv") == []


def test_csv_unknown_columns_is_a_clear_error() -> None:
    """A table with no UID column says which column it wants and where the header is."""
    error = manifest_error(f"\nCollection,Study UID\nLIDC,{U1}\n", "m.csv")
    assert str(error) == (
        "m.csv:2: no SeriesInstanceUID (or Series UID) column in the header row "
        "'Collection,Study UID'"
    )


def test_csv_without_header_row_is_a_clear_error() -> None:
    """A bare list of UIDs saved as .csv is refused with a hint about the missing header."""
    error = manifest_error(f"{U1},LIDC\n{U2},LIDC\n", "m.csv")
    assert error.line == 1
    assert str(error).endswith("(the file seems to have no header row)")


def test_csv_bad_uid_names_physical_line() -> None:
    """A bad UID is reported at its physical line, counting lines inside quoted cells."""
    text = f'SeriesInstanceUID,Note\n{U1},"a\nb\nc"\n1.2.3.x,bad\n'
    error = manifest_error(text, "m.csv")
    assert str(error) == "m.csv:5: not a SeriesInstanceUID in column SeriesInstanceUID: '1.2.3.x'"


def test_csv_empty_uid_cell_names_line() -> None:
    """A row with other cells but no UID is an error naming its line."""
    text = f"Subject ID,Series UID\nP1,{U1}\nP2,\nP3\n"
    assert str(manifest_error(text, "m.csv")) == "m.csv:3: empty Series UID cell"
    assert str(manifest_error("Subject ID,Series UID\nP3\n", "m.csv")) == (
        "m.csv:2: empty Series UID cell"
    )


def test_csv_unclosed_quote_is_an_error_at_its_row() -> None:
    """An unclosed quote is reported where its row starts instead of swallowing later rows."""
    text = f'SeriesInstanceUID,Note\n{U1},ok\n{U2},"unclosed\n{U3},lost\n'
    assert str(manifest_error(text, "m.csv")) == "m.csv:3: unreadable CSV: unexpected end of data"


def test_csv_empty_file_is_an_error() -> None:
    """A .csv with nothing in it has no header, which is an error."""
    assert str(manifest_error("\n \n", "m.csv")) == (
        "m.csv: empty table: expected a header row with a SeriesInstanceUID column"
    )


# --- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        [U1, U2, U1],
        [{"SeriesInstanceUID": U1, "Modality": "CT"}, {"Series UID": U2}],
        [{"series_instance_uid": U1}, U2],
        {"series": [U1, {"SeriesUID": U2}]},
        {"SeriesInstanceUIDs": [U1, U2], "note": "from a query"},
    ],
    ids=["strings", "rows", "mixed", "series-key", "uids-key"],
)
def test_json_forms(data: object) -> None:
    """UID lists, row lists and objects holding either all give the UIDs in order, once each."""
    assert parse_manifest(json.dumps(data, indent=2), "m.json") == [U1, U2]


def test_json_truncated_names_line() -> None:
    """Truncated JSON is an error naming the line where parsing stopped."""
    text = json.dumps([U1, U2], indent=2)[:-3]
    error = manifest_error(text, "m.json")
    assert (error.source, error.line) == ("m.json", 3)
    assert str(error).startswith("m.json:3: not valid JSON: ")


def test_json_bad_item_names_index() -> None:
    """A bad item is reported by its index in the list."""
    assert str(manifest_error(json.dumps([U1, "1.2.x"]), "m.json")) == (
        "m.json: item 1: not a SeriesInstanceUID: '1.2.x'"
    )
    assert str(manifest_error(json.dumps({"series": [U1, 1.2]}), "m.json")) == (
        "m.json: 'series' item 1: expected a UID string, got float"
    )
    assert str(manifest_error(json.dumps([{"Modality": "CT"}]), "m.json")) == (
        "m.json: item 0: object has no SeriesInstanceUID"
    )


def test_json_wrong_shapes_are_errors() -> None:
    """A JSON scalar or an object without a series list is refused."""
    assert (
        str(manifest_error('"1.2.3"', "m.json"))
        == "m.json: expected a JSON list of series, got str"
    )
    assert str(manifest_error('{"uids": []}', "m.json")) == (
        "m.json: JSON object has no 'series' or 'SeriesInstanceUIDs' list"
    )


def test_json_deep_nesting_is_our_error() -> None:
    """Nesting deep enough to exhaust the recursion limit is still a ManifestError."""
    assert (
        str(manifest_error("[" * 100_000, "m.json")) == "m.json: not valid JSON: nested too deeply"
    )


# --- plain lists -------------------------------------------------------------------------------


def test_plain_list_with_comments_and_blanks() -> None:
    """A UID list allows # comments (whole-line or trailing), blank lines and repeats."""
    text = f"# LIDC subset\n\n{U1}\n  {U2}   # the big one\n#{U3}\n{U1}\n"
    assert parse_manifest(text, "ids.txt") == [U1, U2]


def test_plain_list_bad_line_names_line() -> None:
    """A line that is not a UID is an error naming its line."""
    assert str(manifest_error(f"{U1}\n\nLIDC-IDRI-0001\n", "ids.lst")) == (
        "ids.lst:3: not a SeriesInstanceUID: 'LIDC-IDRI-0001'"
    )


# --- format detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("\ufeff" + TCIA_30, ManifestFormat.TCIA),
        (f'  ["{U1}"]', ManifestFormat.JSON),
        ('{"series": []}', ManifestFormat.JSON),
        (f"\nCollection,Series UID\nLIDC,{U1}\n", ManifestFormat.CSV),
        (f"Collection\tSeriesInstanceUID\nLIDC\t{U1}\n", ManifestFormat.TSV),
        (f"# ids\n{U1}\n", ManifestFormat.LIST),
        ("", ManifestFormat.LIST),
    ],
)
def test_sniff_format(text: str, fmt: ManifestFormat) -> None:
    """Content alone picks the format: list start, bracket, UID header, else plain list."""
    assert sniff_format(text) is fmt


def test_unknown_extension_and_stdin_are_sniffed() -> None:
    """A name with no known extension is read by content."""
    assert parse_manifest(TCIA_30, "basket.download") == [U1, U2, U3]
    assert parse_manifest(f"Series UID\n{U2}\n", "-") == [U2]
    assert parse_manifest(json.dumps([U3]), "manifest") == [U3]


def test_txt_holding_a_tcia_manifest_is_read() -> None:
    """A .tcia saved as .txt by a browser still reads, since .txt names no structure."""
    assert parse_manifest(TCIA_30, "manifest.txt") == [U1, U2, U3]


def test_forced_format_overrides_extension() -> None:
    """A format given by the caller wins over the file name."""
    assert parse_manifest(f"{U1}\n", "weird.json", ManifestFormat.LIST) == [U1]
    assert manifest_error(TCIA_30, "m.tcia", ManifestFormat.CSV).line == 1


# --- reading files -----------------------------------------------------------------------------


def test_read_manifest_file_with_bom_and_crlf(tmp_path: Path) -> None:
    """A UTF-8 file with a BOM and CRLF reads like the clean text."""
    path = tmp_path / "LIDC.tcia"
    path.write_bytes(b"\xef\xbb\xbf" + TCIA_30.replace("\n", "\r\n").encode())
    assert read_manifest(str(path)) == [U1, U2, U3]


def test_read_manifest_missing_file(tmp_path: Path) -> None:
    """A missing file is a ManifestError naming the path, not an OSError."""
    path = str(tmp_path / "nope.tcia")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value) == f"{path}: no such file"


def test_read_manifest_directory(tmp_path: Path) -> None:
    """A directory is a ManifestError naming the path."""
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: is a directory, not a manifest file"


def test_read_manifest_invalid_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a ManifestError naming the path and line."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"SeriesInstanceUID,Note\n1.2.3,caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(str(path))
    assert str(info.value) == f"{path}:2: not UTF-8 text (byte 0xe9 at offset 32)"


def test_read_manifest_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    """'-' reads stdin's bytes and sniffs their format; errors name <stdin>."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TCIA_30.encode())))
    assert read_manifest("-") == [U1, U2, U3]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1.2\nxyz\n")))
    with pytest.raises(ManifestError) as info:
        read_manifest("-")
    assert str(info.value) == "<stdin>:2: not a SeriesInstanceUID: 'xyz'"


def test_read_manifests_merges_in_order(tmp_path: Path) -> None:
    """Several manifests merge into one list, each UID once at its first place."""
    (tmp_path / "a.tcia").write_text(TCIA_HEADER_30 + f"{U2}\n{U1}\n")
    (tmp_path / "b.csv").write_text(f"Series UID\n{U1}\n{U3}\n")
    paths = [str(tmp_path / "a.tcia"), str(tmp_path / "b.csv")]
    assert read_manifests(paths) == [U2, U1, U3]


# --- writers -----------------------------------------------------------------------------------


def test_write_tcia_exact_text() -> None:
    """write_tcia gives TCIA's 3.0 header, the basket name, then each UID once."""
    assert write_tcia([U1, U2, U1], database_id="1600709154662") == TCIA_HEADER_30 + f"{U1}\n{U2}\n"


def test_write_tcia_basket_id() -> None:
    """The default basket id is stable for a list; a full 'manifest-....tcia' id is not doubled."""
    first = write_tcia([U1, U2])
    assert first == write_tcia([U1, U2])
    assert first != write_tcia([U2, U1])
    assert "databasketId=manifest-42.tcia\n" in write_tcia([U1], database_id="manifest-42.tcia")


def test_write_tcia_refuses_bad_input() -> None:
    """A bad UID or a basket id that would break the file is an InputError."""
    with pytest.raises(InputError, match=r"1\.2\.x"):
        write_tcia([U1, "1.2.x"])
    with pytest.raises(InputError, match="databasketId"):
        write_tcia([U1], database_id="a\nListOfSeriesToDownload=")


def test_write_csv_exact_text() -> None:
    """write_csv puts SeriesInstanceUID first, quotes as needed, and drops repeated UIDs."""
    rows: list[str | Mapping[str, object]] = [
        {"Series UID": U1, "SeriesDescription": 'Chest, "lung"', "ImageCount": 133},
        U2,
        {"SeriesInstanceUID": U1, "SeriesDescription": "again"},
    ]
    text = write_csv(rows, ["SeriesDescription", "ImageCount", "SeriesInstanceUID"])
    assert text == (
        "SeriesInstanceUID,SeriesDescription,ImageCount\r\n"
        f'{U1},"Chest, ""lung""",133\r\n'
        f"{U2},,\r\n"
    )
    assert parse_manifest(text, "out.csv") == [U1, U2]


def test_write_csv_row_without_uid() -> None:
    """A row with no UID is an InputError."""
    with pytest.raises(InputError, match="no SeriesInstanceUID"):
        write_csv([{"Modality": "CT"}])


# --- properties --------------------------------------------------------------------------------

uids = (
    st.lists(st.from_regex(r"[0-9]{1,12}", fullmatch=True), min_size=1, max_size=12)
    .map(".".join)
    .filter(lambda uid: len(uid) <= 64)
)

formats = st.sampled_from([None, *ManifestFormat])
names = st.sampled_from(["m.tcia", "m.csv", "m.tsv", "m.json", "m.txt", "m.lst", "-", "manifest"])

# Pieces of real manifests, so random text reaches past the first check of each parser.
fragments = st.sampled_from(
    [
        "ListOfSeriesToDownload=",
        "manifestVersion=3.0",
        "Series ID",
        "SeriesInstanceUID",
        "Series UID",
        U1,
        "1.2",
        ",",
        "\t",
        ";",
        '"',
        "\n",
        "\r\n",
        "\r",
        "#",
        "[",
        "]",
        "{",
        "}",
        ":",
        '"series"',
        "\ufeff",
        " ",
        "\x00",
    ]
)
manifest_like = st.lists(fragments | uids | st.text(max_size=5), max_size=40).map("".join)


def check_outcome(text: str, source: str, fmt: ManifestFormat | None) -> None:
    """parse_manifest gives distinct valid UIDs or raises ManifestError, nothing else."""
    try:
        result = parse_manifest(text, source, fmt)
    except ManifestError:
        return
    assert all(is_uid(uid) for uid in result)
    assert len(set(result)) == len(result)


@given(st.text(), names, formats)
def test_any_text_parses_or_raises_manifest_error(
    text: str, source: str, fmt: ManifestFormat | None
) -> None:
    """Any text, under any forced format or detection, parses to UIDs or raises ManifestError."""
    check_outcome(text, source, fmt)


@given(manifest_like, names, formats)
def test_manifest_like_text_parses_or_raises_manifest_error(
    text: str, source: str, fmt: ManifestFormat | None
) -> None:
    """Text built from manifest fragments parses to UIDs or raises ManifestError."""
    check_outcome(text, source, fmt)


@given(st.binary(), names, formats)
def test_any_bytes_decoded_parse_or_raise_manifest_error(
    data: bytes, source: str, fmt: ManifestFormat | None
) -> None:
    """Arbitrary bytes decoded with surrogateescape parse to UIDs or raise ManifestError."""
    check_outcome(data.decode("utf-8", errors="surrogateescape"), source, fmt)


@settings(max_examples=200)
@given(
    data=st.binary() | manifest_like.map(lambda text: text.encode("utf-8", "surrogatepass")),
    suffix=st.sampled_from([".tcia", ".csv", ".tsv", ".json", ".txt", ".lst", ""]),
)
def test_read_manifest_any_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str
) -> None:
    """read_manifest on a file of arbitrary bytes gives UIDs or raises ManifestError."""
    path = tmp_path_factory.mktemp("bytes") / f"manifest{suffix}"
    path.write_bytes(data)
    try:
        result = read_manifest(str(path))
    except ManifestError as error:
        assert error.source == str(path)
        return
    assert all(is_uid(uid) for uid in result)


@given(st.lists(uids, max_size=30))
def test_write_tcia_round_trips(listed: list[str]) -> None:
    """write_tcia's text reads back, by extension and by sniffing, to the de-duplicated list."""
    text = write_tcia(listed)
    expected = list(dict.fromkeys(listed))
    assert parse_manifest(text, "out.tcia") == expected
    assert parse_manifest(text, "-") == expected


@given(
    st.lists(st.tuples(uids, st.text(), st.none() | st.integers() | st.text()), max_size=20),
    st.lists(st.text(), max_size=3),
)
def test_write_csv_round_trips(rows: list[tuple[str, str, object]], extra: list[str]) -> None:
    """write_csv's text, with arbitrary other cells and column names, reads back to the UIDs."""
    columns = ["Note", "Count", *extra]
    text = write_csv([{"SeriesInstanceUID": u, "Note": n, "Count": c} for u, n, c in rows], columns)
    expected = list(dict.fromkeys(u for u, _, _ in rows))
    assert parse_manifest(text, "out.csv") == expected
    assert parse_manifest(text, "-") == expected
