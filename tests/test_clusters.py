"""Reference embeddings and centroids for DataComp's image-based filter: safe loading."""

import numpy as np
import pytest
import torch

from capmix.clusters import load_embedding_file


class _RunsCodeOnLoad:
    """A pickled object whose unpickling would create a file (as hostile code could)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_embedding_files_in_every_format(tmp_path):
    array = np.arange(12, dtype="float32").reshape(4, 3)
    np.save(tmp_path / "e.npy", array)
    np.savez(tmp_path / "e.npz", image_features=array)
    torch.save(torch.from_numpy(array), tmp_path / "t.pt")
    torch.save({"image_features": torch.from_numpy(array)}, tmp_path / "d.pt")
    for name in ("e.npy", "e.npz", "t.pt", "d.pt"):
        np.testing.assert_array_equal(load_embedding_file(tmp_path / name), array)


def test_a_torch_file_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"image_features": _RunsCodeOnLoad(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: not a plain tensor file"):
        load_embedding_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_datacomps_centroid_files_load(tmp_path):
    """DataComp's published centroids are a numpy array saved with torch.save (its code:
    ``torch.from_numpy(torch.load(download(f"{scale}_centroids")))``), pickled in 2023 under
    numpy 1's module name ``numpy.core.multiarray``; both that name and numpy 2's load."""
    centroids = np.arange(12, dtype="float32").reshape(3, 4)
    torch.save(centroids, tmp_path / "zip.pt")
    # The legacy (non-zip) format writes the pickle as it is: protocol 2 names globals as
    # text lines, so the numpy-1 name can be written in place of numpy 2's.
    torch.save(centroids, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    assert legacy.count(b"numpy._core.multiarray\n") == 1
    (tmp_path / "numpy1.pt").write_bytes(
        legacy.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    for name in ("zip.pt", "legacy.pt", "numpy1.pt"):
        np.testing.assert_array_equal(load_embedding_file(tmp_path / name), centroids)


def test_an_object_array_in_a_torch_file_is_refused(tmp_path):
    """numpy arrays are allowed as plain numbers only: an object array pickles its items."""
    marker = tmp_path / "ran"
    array = np.empty(1, dtype=object)
    array[0] = _RunsCodeOnLoad(marker)
    torch.save(array, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match=r"objects\.pt: not a plain tensor file"):
        load_embedding_file(tmp_path / "objects.pt")
    assert not marker.exists()
