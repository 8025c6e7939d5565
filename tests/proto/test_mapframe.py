"""Map-stream framing: u32 LE length + zstd frame (or plain JSON)."""

import json
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.shared.proto import mapframe

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def test_layout_plain():
    frame = mapframe.encode_message({"KeepAlive": True}, None)
    assert frame == struct.pack("<I", 18) + b'{"KeepAlive":true}'


def test_layout_zstd_little_endian_prefix():
    frame = mapframe.encode_frame(b'{"KeepAlive":true}', "zstd")
    (n,) = struct.unpack("<I", frame[:4])
    assert n == len(frame) - 4
    assert frame[4:8] == b"\x28\xb5\x2f\xfd"  # zstd magic
    assert zstandard.ZstdDecompressor().decompress(frame[4:]) == b'{"KeepAlive":true}'


def test_keepalive_is_stable():
    assert mapframe.keepalive("zstd") is mapframe.keepalive("zstd")
    assert mapframe.keepalive(None)[4:] == mapframe.KEEPALIVE_JSON
    assert mapframe.MapStreamDecoder("zstd").receive_data(mapframe.keepalive("zstd")) == [mapframe.KEEPALIVE_JSON]


def test_unknown_compression_is_local_error():
    with pytest.raises(mapframe.LocalProtocolError):
        mapframe.encode_frame(b"{}", "gzip")
    with pytest.raises(mapframe.LocalProtocolError):
        mapframe.MapStreamDecoder("br")


@pytest.mark.parametrize("compress", [None, "zstd"])
@given(
    messages=st.lists(json_values, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=10),
)
@settings(max_examples=60, deadline=None)
def test_round_trip_arbitrary_splits(compress, messages, cuts):
    wire = b"".join(mapframe.encode_message(m, compress) for m in messages)
    dec = mapframe.MapStreamDecoder(compress)
    points = sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]
    got, prev = [], 0
    for p in points:
        got.extend(dec.receive_messages(wire[prev:p]))
        prev = p
    assert got == messages
    assert dec.buffered == 0


def test_big_message_round_trip():
    msg = {"Peers": [{"ID": i, "Name": f"node{i}.example.com."} for i in range(5000)]}
    frame = mapframe.encode_message(msg, "zstd")
    assert mapframe.MapStreamDecoder("zstd").receive_messages(frame) == [msg]


def test_frame_size_bound_on_prefix():
    dec = mapframe.MapStreamDecoder(None, max_frame_size=100)
    with pytest.raises(mapframe.FrameTooLarge, match="limit"):
        dec.receive_data(struct.pack("<I", 101))
    assert isinstance(mapframe.FrameTooLarge("x"), mapframe.RemoteProtocolError)
    assert mapframe.MAX_FRAME_SIZE == 16 << 20


def test_decompressed_size_bound():
    small_bomb = mapframe.encode_frame(b" " * 5000, "zstd")  # compresses to a few bytes
    with pytest.raises(mapframe.FrameTooLarge):
        mapframe.MapStreamDecoder("zstd", max_frame_size=1000).receive_data(small_bomb)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b" " * 5000)
    with pytest.raises(mapframe.RemoteProtocolError):
        mapframe.MapStreamDecoder("zstd", max_frame_size=1000).receive_data(struct.pack("<I", len(no_size)) + no_size)


def test_plain_json_is_not_zstd():
    frame = mapframe.encode_message({"KeepAlive": True}, None)
    with pytest.raises(mapframe.RemoteProtocolError, match="zstd"):
        mapframe.MapStreamDecoder("zstd").receive_data(frame)


def test_invalid_json():
    with pytest.raises(mapframe.RemoteProtocolError, match="JSON"):
        mapframe.MapStreamDecoder(None).receive_messages(struct.pack("<I", 3) + b"{x}")


@pytest.mark.parametrize("compress", [None, "zstd"])
@given(st.binary(max_size=200))
@settings(max_examples=150)
def test_garbage_only_remote_error(compress, data):
    dec = mapframe.MapStreamDecoder(compress, max_frame_size=1 << 16)
    try:
        dec.receive_messages(data)
    except mapframe.RemoteProtocolError:
        pass


def test_compact_encoding():
    assert json.loads(mapframe.encode_message({"a": [1, 2]}, None)[4:]) == {"a": [1, 2]}
    assert b" " not in mapframe.encode_message({"a": [1, 2]}, None)[4:]


# -- a message of several zstd frames (a first map assembled from kept pieces) -----------------
def test_a_message_of_several_zstd_frames_decodes_whole_and_stays_bounded():
    parts = [mapframe.compress_part(b'{"Peers":['), mapframe.compress_part(b'{"ID":1}'),
             mapframe.compress_part(b'],"KeepAlive":false}')]
    assert mapframe.MapStreamDecoder("zstd").receive_messages(mapframe.frame_compressed(parts)) == [
        {"Peers": [{"ID": 1}], "KeepAlive": False}]
    big = [mapframe.compress_part(b"[" + b" " * 600), mapframe.compress_part(b" " * 600 + b"]")]
    with pytest.raises(mapframe.FrameTooLarge):  # two frames over the bound together
        mapframe.MapStreamDecoder("zstd", max_frame_size=1000).receive_data(mapframe.frame_compressed(big))


def test_frames_without_a_content_size_are_read_up_to_the_bound():
    unsized = zstandard.ZstdCompressor(level=1, write_content_size=False)
    body = mapframe.frame_compressed([mapframe.compress_part(b'{"Peers":['), unsized.compress(b'{"ID":1}]}')])
    assert mapframe.MapStreamDecoder("zstd").receive_messages(body) == [{"Peers": [{"ID": 1}]}]
    big = mapframe.frame_compressed([mapframe.compress_part(b"["), unsized.compress(b" " * 2000 + b"]")])
    with pytest.raises(mapframe.FrameTooLarge):  # an unsized frame past the bound
        mapframe.MapStreamDecoder("zstd", max_frame_size=1000).receive_data(big)


@pytest.mark.parametrize("sized", [True, False])
def test_a_truncated_later_frame_is_refused(sized):
    second = zstandard.ZstdCompressor(level=1, write_content_size=sized).compress(b'{"ID":1}' * 50 + b"]}")
    body = mapframe.compress_part(b'{"Peers":[') + second[:-3]
    with pytest.raises(mapframe.RemoteProtocolError, match="truncated|zstd"):
        mapframe.MapStreamDecoder("zstd").receive_data(struct.pack("<I", len(body)) + body)
