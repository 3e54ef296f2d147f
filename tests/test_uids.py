import numpy as np
import pytest

from capmix.uids import (
    ascending_uid_array,
    derive_uid,
    duplicate_positions,
    is_valid_uid,
    pairs_to_uids,
    repeats,
    sorted_uid_array,
    uid_sample_mask,
    uids_to_pairs,
)


def test_derived_uid_is_stable_md5_of_url_and_text():
    uid = derive_uid("http://x/a.jpg", "a red circle")
    assert uid == derive_uid("http://x/a.jpg", "a red circle")
    assert is_valid_uid(uid)
    import hashlib

    assert uid == hashlib.md5(b"http://x/a.jpg\na red circle").hexdigest()


def test_derived_uid_depends_on_both_fields_and_unicode():
    base = derive_uid("http://x/a.jpg", "caption")
    assert derive_uid("http://x/b.jpg", "caption") != base
    assert derive_uid("http://x/a.jpg", "caption!") != base
    # the field separator keeps ("ab", "c") and ("a", "bc") apart
    assert derive_uid("ab", "c") != derive_uid("a", "bc")
    assert is_valid_uid(derive_uid("http://x/ü.jpg", "Straße 🚲"))


@pytest.mark.parametrize("bad", ["", "abc", "g" * 32, "A" * 32, "0" * 33, None, 12])
def test_malformed_uids_are_rejected(bad):
    assert not is_valid_uid(bad)


def test_pairs_match_datacomp_definition():
    uids = ["0123456789abcdef0011223344556677", "ffffffffffffffff0000000000000001"]
    pairs = uids_to_pairs(uids)
    expected = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    assert pairs.dtype == np.dtype("u8,u8")
    assert (pairs == expected).all()
    assert pairs_to_uids(pairs) == uids


def test_sorted_uid_array_is_sorted_like_datacomp():
    uids = [derive_uid(f"u{i}", "t") for i in range(100)]
    array = sorted_uid_array(uids)
    expected = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    expected.sort()
    assert (array == expected).all()


def test_ascending_uid_array_skips_the_sort_only_when_it_may():
    uids = [derive_uid(f"u{i}", "t") for i in range(100)]
    expected = sorted_uid_array(uids)
    assert (ascending_uid_array(sorted(uids)) == expected).all()
    assert (ascending_uid_array(uids) == expected).all()  # unsorted: sorted for you
    assert (ascending_uid_array(uids + uids[:5]) == expected).all()  # repeats: once each
    assert len(ascending_uid_array([])) == 0


def test_duplicate_positions_groups_repeats():
    uids = ["a" * 32, "b" * 32, "a" * 32, "c" * 32, "b" * 32, "a" * 32]
    groups = sorted(sorted(g.tolist()) for g in duplicate_positions(uids_to_pairs(uids)))
    assert groups == [[0, 2, 5], [1, 4]]
    assert duplicate_positions(uids_to_pairs(["a" * 32, "b" * 32])) == []


def test_repeats_pair_each_later_occurrence_with_the_first():
    uids = ["a" * 32, "b" * 32, "a" * 32, "c" * 32, "b" * 32, "a" * 32]
    later, first = repeats(uids_to_pairs(uids))
    assert later.tolist() == [2, 4, 5] and first.tolist() == [0, 1, 0]
    assert [len(x) for x in repeats(uids_to_pairs(["a" * 32, "b" * 32]))] == [0, 0]


def test_a_uid_sample_is_the_first_fraction_of_the_uid_space_exactly():
    """high 64 bits / 2**64 < fraction, decided in integers: the uid at the bound is out."""
    half = 2**63
    uids = [f"{half - 1:016x}" + "f" * 16, f"{half:016x}" + "0" * 16, "0" * 32, "f" * 32]
    assert uid_sample_mask(uids_to_pairs(uids), 0.5).tolist() == [True, False, True, False]
    assert uid_sample_mask(uids_to_pairs(uids), 1.0).all()
    assert uid_sample_mask(uids_to_pairs(uids), 1e-30).tolist() == [False, False, True, False]


def test_arrow_uids_decode_as_python_strings_do():
    import pyarrow as pa

    from capmix.uids import arrow_uids_to_pairs, ascending_pairs

    uids = [f"{i * 0x9e3779b97f4a7c15 % 2**128:032x}" for i in range(1, 200)]
    assert (arrow_uids_to_pairs(pa.array(uids)) == uids_to_pairs(uids)).all()
    # a slice of an array (an offset into its buffers), and a chunked array
    assert (arrow_uids_to_pairs(pa.array(uids).slice(50, 20)) == uids_to_pairs(uids[50:70])).all()
    chunked = pa.chunked_array([uids[:10], uids[10:]])
    assert (arrow_uids_to_pairs(chunked) == uids_to_pairs(uids)).all()
    assert len(arrow_uids_to_pairs(pa.array([], type=pa.string()))) == 0
    assert (ascending_pairs(uids_to_pairs(uids)) == sorted_uid_array(uids)).all()
    for bad in ("A" * 32, "0" * 31, None):
        with pytest.raises(ValueError, match="row 1"):
            arrow_uids_to_pairs(pa.array(["0" * 32, bad]))
