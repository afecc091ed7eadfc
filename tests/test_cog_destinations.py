"""Where GeoTIFFs go (m3rcr_xr.cog.destinations): decloud_std's path beside the COG."""

import pytest

import m3rcr_xr
from m3rcr_xr.cog import destinations


@pytest.mark.parametrize("collection", [True, False])
@pytest.mark.parametrize("root", ["s3://bucket/", "s3://bucket", "gs://b/", "/"])
def test_std_cog_path_refuses_a_root_with_nothing_beside_it(root, collection):
    # s3://bucket_std would be another bucket (names are global); "/" has no parent
    where = "the filesystem root" if root == "/" else "a bucket root"
    with pytest.raises(
        m3rcr_xr.UsageError, match=f"{where} has no folder beside it for decloud_std"
    ):
        destinations.std_cog_path(root, collection=collection)


@pytest.mark.parametrize(
    ("path", "collection", "expected"),
    [
        ("s3://bucket/cogs/", True, "s3://bucket/cogs_std"),
        ("s3://bucket/d.tif", False, "s3://bucket/d_std.tif"),  # a file beside, as locally
        ("/d.tif", False, "/d_std.tif"),
        ("/cogs", True, "/cogs_std"),
    ],
)
def test_std_cog_path_is_beside_the_cog(path, collection, expected):
    assert destinations.std_cog_path(path, collection=collection) == expected
