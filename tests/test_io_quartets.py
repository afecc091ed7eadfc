"""Which files make each quartet (m3rcr_xr.io.quartets): published file lists."""

from __future__ import annotations

import pytest

import m3rcr_xr
from m3rcr_xr.io.quartets import read_filelist


def test_filelist_with_wrong_columns(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("a.tif,b.tif\n")
    with pytest.raises(m3rcr_xr.InputFileError, match="list.csv:1: expected 5 columns"):
        read_filelist(csv)


def test_filelist_that_is_not_utf8_names_the_line(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_bytes(b"a,b,c,d,e\ncaf\xe9.tif,b,c,d,e\n")
    with pytest.raises(m3rcr_xr.InputFileError, match="list.csv:2: file list is not UTF-8"):
        read_filelist(csv)


def test_filelist_with_a_byte_order_mark(samples_dir, tmp_path):
    text = (samples_dir / "one_test_sample.csv").read_text()
    csv = tmp_path / "list.csv"
    csv.write_bytes("\ufeff".encode() + text.replace("\n", "\r\n").encode())
    (quartet,) = read_filelist(csv)
    assert quartet.cloudfree.startswith("planet_cloudfree_summer/")
    assert m3rcr_xr.open_m3rcr(samples_dir / "test", csv).sizes["patch"] == 1


@pytest.mark.parametrize("column", range(5))
def test_filelist_row_with_an_empty_path_names_line_and_column(tmp_path, column):
    row = ["a.tif", "b.tif", "c.tif", "d.tif", "e.npy"]
    row[column] = "  "
    csv = tmp_path / "list.csv"
    csv.write_text("\n" + ",".join(row) + "\n")  # a blank first line is skipped, but counted
    name = ("cloudfree", "cloudy", "sar", "landcover", "cloudmask")[column]
    with pytest.raises(m3rcr_xr.InputFileError, match=f"list.csv:2: empty path in column '{name}'"):
        read_filelist(csv)


def _sample_row(samples_dir) -> list[str]:
    return (samples_dir / "one_test_sample.csv").read_text().splitlines()[0].split(",")


def test_filelist_row_with_swapped_layers_names_line_and_column(samples_dir, tmp_path):
    row = _sample_row(samples_dir)
    row[0], row[1] = row[1], row[0]
    csv = tmp_path / "list.csv"
    csv.write_text(",".join(row) + "\n")
    with pytest.raises(
        m3rcr_xr.InputFileError,
        match=r"list.csv:1: column 'cloudy' holds 'planet_cloudfree_summer/.*_p_1.tif', "
        "a planet_cloudfree file",
    ):
        read_filelist(csv)


def test_filelist_row_with_a_file_in_another_layers_folder(samples_dir, tmp_path):
    row = _sample_row(samples_dir)
    row[2] = row[2].replace("S1_summer/S1_summer_33/", "landcover_summer/landcover_summer_33/")
    csv = tmp_path / "list.csv"
    csv.write_text(",".join(row) + "\n")
    with pytest.raises(m3rcr_xr.InputFileError, match="list.csv:1: column 'sar' .* a landcover"):
        read_filelist(csv)


def test_filelist_row_mixing_two_patches_names_the_patches(samples_dir, tmp_path):
    row = _sample_row(samples_dir)
    row[2:] = [path.replace("_p_1.", "_p_2.") for path in row[2:]]
    csv = tmp_path / "list.csv"
    csv.write_text("\n" + ",".join(row) + "\n")
    with pytest.raises(
        m3rcr_xr.InputFileError,
        match=r"list.csv:2: files of different patches: summer_33_p_1 \(cloudy, cloudfree\); "
        r"summer_33_p_2 \(sar, landcover, cloudmask\)",
    ):
        read_filelist(csv)


def test_filelist_row_with_a_users_own_file_names_is_taken_as_given(samples_dir, tmp_path):
    row = _sample_row(samples_dir)
    row[4] = "masks/planet_cloudy_udm2.tif"  # not the dataset's naming: not checked
    csv = tmp_path / "list.csv"
    csv.write_text(",".join(row) + "\n" + "b/cf.tif,b/cloudy.tif,b/s1.tif,b/lc.tif,b/m.npy\n")
    assert [q.cloudmask for q in read_filelist(csv)] == [row[4], "b/m.npy"]


def test_filelist_with_a_cell_over_the_csv_field_limit_names_the_line(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("a,b,c,d,e\n" + "a" * 200_000 + ",b,c,d,e\n")
    with pytest.raises(m3rcr_xr.InputFileError, match="list.csv:2: not a CSV row: field larger"):
        read_filelist(csv)
