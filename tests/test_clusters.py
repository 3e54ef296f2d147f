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
