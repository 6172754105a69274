"""common/distributed.py in one process: leaving a process group (the collectives themselves are tested on two
gloo ranks in tests/train/test_distributed.py)."""

import datetime

import pytest
import torch.distributed as dist

from common import distributed


@pytest.mark.parametrize("wait_for_others", [True, False])
def test_shutdown_leaves_the_process_group(wait_for_others: bool):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    distributed.shutdown(wait_for_others=wait_for_others)
    assert not dist.is_initialized()
    assert not distributed.current().enabled


def test_shutdown_without_a_group_does_nothing():
    distributed.shutdown(wait_for_others=True)
    assert not dist.is_initialized()
