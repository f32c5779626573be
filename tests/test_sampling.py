"""The training stream: data-parallel shards partition it exactly."""

from itertools import islice

import pytest

from spin_ray.errors import DataError
from spin_ray.train.sampling import StreamSampler


@pytest.mark.parametrize("world,start", [(2, 0), (2, 5), (3, 11)])
def test_shards_interleave_to_the_single_stream(world, start):
    single = list(islice(StreamSampler(7, 3, start), 12 * world))
    shards = [list(islice(StreamSampler(7, 3, start, rank, world), 12)) for rank in range(world)]
    assert [item for step in zip(*shards) for item in step] == single  # across epoch boundaries too


def test_bad_rank_is_refused():
    with pytest.raises(DataError, match="rank 2 of 2"):
        StreamSampler(7, 3, 0, rank=2, world=2)
