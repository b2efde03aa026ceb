"""The stream can read what the producers write: the kit's producers compress with lz4."""

from __future__ import annotations

from aiokafka.codec import has_lz4, lz4_decode, lz4_encode
from tributary_kit.producer import DURABLE_DEFAULTS


def test_the_stream_reads_the_compression_the_producers_use() -> None:
    # Without the lz4 library aiokafka's fetcher crashes on the first compressed batch
    # (UnsupportedCodecError) and the stream stops consuming.
    assert DURABLE_DEFAULTS["compression.type"] == "lz4"
    assert has_lz4()
    assert lz4_decode(lz4_encode(b"feature event")) == b"feature event"
