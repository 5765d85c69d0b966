import platform
import resource

import numpy as np
import pytest

from server.memory import keep_freed_memory

BLOCK = 40 << 20  # above glibc's default 32 MB mmap ceiling, like a ResNet-50 download


def faults_while_building_a_payload(source: np.ndarray) -> int:
    """Minor page faults while a payload is built (and freed), as a download is."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b"".join((b"header", source.data))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_freed_payload_block_is_reused_without_faulting_its_pages_in_again():
    source = np.ones(BLOCK, np.uint8)
    assert keep_freed_memory() is True
    faults_while_building_a_payload(source)  # the heap grows once; the block is freed
    pages = BLOCK // resource.getpagesize()
    # glibc's default serves it from fresh mmap pages every time: one fault per page (10,240).
    assert faults_while_building_a_payload(source) < pages // 10
