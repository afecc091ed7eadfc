"""odc-geo's graph of one GeoTIFF (m3rcr_xr.cog.graph)."""

import cloudpickle

from m3rcr_xr.cog.graph import cog_graph
from m3rcr_xr.testing import raise_if_dask_computes
from tests.test_cog import _scene


def test_building_the_graph_computes_nothing(tmp_path):
    with raise_if_dask_computes():
        graph = cog_graph(_scene(64), tmp_path / "x.tif", "deflate", 32)
    assert hasattr(graph, "compute")


def test_a_write_leaves_its_graph_as_it_was(tmp_path):
    """The graph keeps no tile it wrote (odc-geo's writer appends the tiles of a part
    to the part's seed, a value of the graph; they stayed until the write was done)."""
    graph = cog_graph(_scene(128, 16), tmp_path / "g.tif", "deflate", 16)
    size = len(cloudpickle.dumps(graph))
    graph.compute(scheduler="synchronous")
    assert len(cloudpickle.dumps(graph)) == size
