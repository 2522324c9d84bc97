"""Seeded noise for Piper's VITS voices: a protobuf-level rewrite of the ONNX graph (no onnx package)."""

from __future__ import annotations

import struct

# --------------------------------------------------------------------------------------
# Piper


# Seeded noise for Piper. A VITS voice draws its noise inside the ONNX graph
# (RandomNormalLike, an RNG seeded once per session), so outputs depend on call order.
# ``seed_noise_inputs`` rewrites each RandomNormalLike node into "the first Size(like)
# values of a new graph input, reshaped to Shape(like)", and PiperTTS feeds those inputs
# standard-normal noise drawn from (seed, id): the voice's own noise, reproducible per item.
# The rewrite edits the protobuf wire format directly (ModelProto.graph = field 7,
# GraphProto.node = 1 / initializer = 5 / input = 11; NodeProto input = 1, output = 2,
# name = 3, op_type = 4, attribute = 5), so it needs no ``onnx`` package.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        c = buf[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def _pb_fields(buf: bytes):
    """(field number, wire type, value, raw bytes of the whole field) for each field."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value, buf[start:i]


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _enc_varint(field << 3) + _enc_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _enc_varint(field << 3 | 2) + _enc_varint(len(data)) + data


def _node(op: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    return b"".join([*(_pb(1, x) for x in inputs), *(_pb(2, x) for x in outputs), _pb(3, name), _pb(4, op)])


def seed_noise_inputs(model: bytes) -> tuple[bytes, list[str]]:
    """The ONNX ``model`` with every ``RandomNormalLike`` (float, mean 0, scale 1) replaced by
    a slice of a new 1-D float graph input, and the names of those inputs. Raises ValueError
    for a RandomNormalLike it cannot replace (another dtype, mean or scale)."""
    parts, graph = [], None
    for field, _, value, raw in _pb_fields(model):
        if field == 7 and graph is None:
            graph = value
            parts.append(None)
        else:
            parts.append(raw)
    if graph is None:
        raise ValueError("no graph in the ONNX model")
    new_graph, inputs, consts = [], [], []
    for field, _, value, raw in _pb_fields(graph):
        if field != 1:
            new_graph.append(raw)
            continue
        op = ins = outs = None
        ins, outs, attrs = [], [], {}
        for f, _, v, _ in _pb_fields(value):
            if f == 1:
                ins.append(v.decode())
            elif f == 2:
                outs.append(v.decode())
            elif f == 4:
                op = v.decode()
            elif f == 5:
                a = {af: av for af, _, av, _ in _pb_fields(v)}
                attrs[a.get(1, b"").decode()] = a
        if op != "RandomNormalLike":
            new_graph.append(raw)
            continue
        if attrs.get("dtype", {}).get(3, 1) != 1 or any(
                k in attrs and struct.unpack("<f", attrs[k].get(2, b"\0\0\0\0"))[0] != default
                for k, default in (("mean", 0.0), ("scale", 1.0))) or len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"unsupported RandomNormalLike node (attributes {sorted(attrs)})")
        k = len(inputs)
        noise, like, out = f"cord_noise_{k}", ins[0], outs[0]
        inputs.append(noise)
        t = f"cord_noise_{k}_"
        new_graph += [_pb(1, _node("Size", [like], [t + "n"], t + "size")),
                      _pb(1, _node("Reshape", [t + "n", "cord_noise_shape1"], [t + "n1"], t + "n1")),
                      _pb(1, _node("Slice", [noise, "cord_noise_zero", t + "n1"], [t + "flat"], t + "slice")),
                      _pb(1, _node("Shape", [like], [t + "shape"], t + "shape")),
                      _pb(1, _node("Reshape", [t + "flat", t + "shape"], [out], t + "reshape"))]
    if inputs:
        for name, val in (("cord_noise_shape1", 1), ("cord_noise_zero", 0)):  # int64 tensors of shape [1]
            consts.append(_pb(5, _pb(1, 1) + _pb(2, 7) + _pb(8, name) + _pb(9, struct.pack("<q", val))))
        for name in inputs:  # float tensor of shape [n]
            shape = _pb(2, _pb(1, _pb(2, f"{name}_len")))
            new_graph.append(_pb(11, _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + shape))))
    graph_bytes = b"".join(new_graph + consts)
    return b"".join(p if p is not None else _pb(7, graph_bytes) for p in parts), inputs
