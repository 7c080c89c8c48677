"""The user's labelled photos: ImageFolder and CSV layouts, clear refusals, and accuracy with paired intervals."""

import shutil

import numpy as np
import pytest

from mobile_vision_export.export.images import ImageDataError, calibration_photos, heldout_photos, load_rgb
from mobile_vision_export.pipeline.export import EXIT_USER_ERROR, main
from mobile_vision_export.validate.labelled import accuracy, check_disjoint, read_labelled

LABELS = ["cat", "dog", "fish"]


def _imagefolder(root, names=("cat", "dog", "fish"), per_class=3):
    photos = heldout_photos()[20 : 20 + per_class * len(names)]
    for i, photo in enumerate(photos):
        folder = root / names[i % len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo.path, folder / photo.path.name)
    return root


def test_folders_match_names_or_indices(tmp_path):
    labelled = read_labelled(_imagefolder(tmp_path / "a", ("Cat", "1", "fish")), LABELS)
    assert sorted(set(labelled.labels.tolist())) == [0, 1, 2] and len(labelled.photos) == 9
    with pytest.raises(ImageDataError, match=r"2 folders .* match no class name or index: \['bird', 'zebra'\]"):
        read_labelled(_imagefolder(tmp_path / "b", ("cat", "bird", "zebra")), LABELS)


def test_csv_layout_and_its_mistakes(tmp_path):
    folder = _imagefolder(tmp_path / "photos")
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(folder.rglob("*.*"))]
    (tmp_path / "val.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    assert len(read_labelled(tmp_path / "val.csv", LABELS).photos) == 9
    (tmp_path / "bad.csv").write_text(rows[0].rsplit(",", 1)[0] + ",horse\n")
    with pytest.raises(ImageDataError, match=r"labels \['horse'\] match no class"):
        read_labelled(tmp_path / "bad.csv", LABELS)
    (tmp_path / "gone.csv").write_text("nowhere.jpg,cat\n")
    with pytest.raises(ImageDataError, match="lists 1 missing photo, e.g."):
        read_labelled(tmp_path / "gone.csv", LABELS)


@pytest.mark.parametrize(
    "header, separator, bom",
    [("path,label", ",", False), ("path,label", ",", True), ("filename;label", ";", False), ("", "\t", True)],
)
def test_csv_as_spreadsheets_write_it(tmp_path, header, separator, bom):
    folder = _imagefolder(tmp_path / "photos")
    rows = [f"{p.relative_to(tmp_path)}{separator}{p.parent.name}" for p in sorted(folder.rglob("*.*"))]
    text = ("\ufeff" if bom else "") + (header.replace(",", separator) + "\n" if header else "") + "\n".join(rows)
    (tmp_path / "val.csv").write_text(text + "\n", encoding="utf-8")
    labelled = read_labelled(tmp_path / "val.csv", LABELS)
    assert len(labelled.photos) == 9 and sorted(set(labelled.labels.tolist())) == [0, 1, 2]


def test_photos_calibration_saw_are_refused(tmp_path):
    labelled = read_labelled(_imagefolder(tmp_path / "val"), LABELS)
    with pytest.raises(ImageDataError, match="also calibration photos.*keep --val-dir and --calib-dir apart"):
        check_disjoint(labelled.photos, labelled.photos[:2], user_calibration=True)
    check_disjoint(labelled.photos[:4], labelled.photos[4:], user_calibration=True)


def test_a_resaved_copy_of_a_calibration_photo_is_the_same_photo(tmp_path):
    """Compared by pixels, not bytes: a lossless PNG of a built-in calibration JPEG is refused, and the message does
    not name --calib-dir, which was not given."""
    calibration = calibration_photos()
    (tmp_path / "cat").mkdir()
    load_rgb(calibration[7].path).save(tmp_path / "cat" / "renamed.png")
    labelled = read_labelled(tmp_path, LABELS)
    with pytest.raises(ImageDataError, match="1 validation photo is also.*remove them from --val-dir") as caught:
        check_disjoint(labelled.photos, calibration, user_calibration=False)
    assert "--calib-dir" not in str(caught.value)


def test_refused_by_the_cli_before_converting(tmp_path, capsys, tiny_model):
    val = _imagefolder(tmp_path / "val", ("class_0", "class_1", "class_2"))
    code = main(
        ["--model", f"{tiny_model}:build", "--input-size", "32", "--val-dir", str(val), "--calib-dir", str(val)]
        + ["--out", str(tmp_path / "out")]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == EXIT_USER_ERROR and len(errors) == 1 and "also calibration photos" in errors[0]
    assert not (tmp_path / "out" / "tiny_model_build").exists()


def test_accuracy_drop_and_its_paired_interval():
    labels = np.arange(200) % 4
    right = np.eye(4)[labels]
    reference = accuracy("float", right, labels)
    same = accuracy("copy", right.copy(), labels, reference)
    assert reference.top1 == 1.0 and same.drop_points == 0.0 and same.drop_ci95 == (0.0, 0.0)
    wrong = right.copy()
    wrong[:20] = np.roll(wrong[:20], 1, axis=1)  # 20 of 200 photos now wrong: 10 points
    worse = accuracy("int8", wrong, labels, reference, right)
    assert worse.drop_points == pytest.approx(10.0) and worse.drop_ci95[0] < 10.0 < worse.drop_ci95[1]
    assert worse.agreement == pytest.approx(0.9)  # parity on the user's photos: 180 of 200 answers agree
    assert worse.drop_ci95[0] > 5.0  # paired: only the 20 changed photos vary
