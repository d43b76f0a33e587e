"""Read the profiles ddtrace writes and pyroscope-io uploads: pprof ``Profile`` messages (and Pyroscope's
``PushRequest`` wrapping them), decoded with the protobuf library from a descriptor declared here.

``top_frames(raw)`` answers what an operator's profile view would show first: for each sample type, the
leaf frames carrying the most of it.
"""

from __future__ import annotations

import gzip

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {  # name: [(field, number, type, repeated, message type)]
    "ValueType": [("type", 1, _F.TYPE_INT64, False, None), ("unit", 2, _F.TYPE_INT64, False, None)],
    "Sample": [("location_id", 1, _F.TYPE_UINT64, True, None), ("value", 2, _F.TYPE_INT64, True, None)],
    "Line": [("function_id", 1, _F.TYPE_UINT64, False, None), ("line", 2, _F.TYPE_INT64, False, None)],
    "Location": [("id", 1, _F.TYPE_UINT64, False, None), ("line", 4, _F.TYPE_MESSAGE, True, "Line")],
    "Function": [("id", 1, _F.TYPE_UINT64, False, None), ("name", 2, _F.TYPE_INT64, False, None),
                 ("filename", 4, _F.TYPE_INT64, False, None)],
    "Profile": [("sample_type", 1, _F.TYPE_MESSAGE, True, "ValueType"), ("sample", 2, _F.TYPE_MESSAGE, True, "Sample"),
                ("location", 4, _F.TYPE_MESSAGE, True, "Location"), ("function", 5, _F.TYPE_MESSAGE, True, "Function"),
                ("string_table", 6, _F.TYPE_STRING, True, None)],
    "LabelPair": [("name", 1, _F.TYPE_STRING, False, None), ("value", 2, _F.TYPE_STRING, False, None)],
    "RawSample": [("raw_profile", 1, _F.TYPE_BYTES, False, None)],
    "RawProfileSeries": [("labels", 1, _F.TYPE_MESSAGE, True, "LabelPair"),
                         ("samples", 2, _F.TYPE_MESSAGE, True, "RawSample")],
    "PushRequest": [("series", 1, _F.TYPE_MESSAGE, True, "RawProfileSeries")],
}


def _classes():
    fd = descriptor_pb2.FileDescriptorProto(name="peers_pprof.proto", package="peers", syntax="proto3")
    for name, fields in _MESSAGES.items():
        m = fd.message_type.add(name=name)
        for fname, num, typ, rep, sub in fields:
            f = m.field.add(name=fname, number=num, type=typ,
                            label=_F.LABEL_REPEATED if rep else _F.LABEL_OPTIONAL)
            if sub:
                f.type_name = ".peers." + sub
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName("peers." + n)) for n in _MESSAGES}


_C = _classes()


def _unzip(raw: bytes) -> bytes:
    if raw[:4] == b"\x28\xb5\x2f\xfd":  # ddtrace writes zstd
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw).read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def top_frames(raw: bytes, n: int = 3) -> dict:
    """``{sample type: [(value, "function file:line"), ...]}``, largest first, by leaf frame."""
    p = _C["Profile"]()
    p.ParseFromString(_unzip(raw))
    s = p.string_table
    funcs = {f.id: f for f in p.function}
    leaf = {}
    for loc in p.location:
        if loc.line:
            ln = loc.line[0]
            f = funcs.get(ln.function_id)
            leaf[loc.id] = f"{s[f.name]} {s[f.filename]}:{ln.line}" if f else f"?:{ln.line}"
    out = {}
    for i, vt in enumerate(p.sample_type):
        by: dict[str, int] = {}
        for smp in p.sample:
            if smp.location_id and i < len(smp.value) and smp.value[i]:
                k = leaf.get(smp.location_id[0], "?")
                by[k] = by.get(k, 0) + smp.value[i]
        out[f"{s[vt.type]}/{s[vt.unit]}"] = sorted(((v, k) for k, v in by.items()), reverse=True)[:n]
    return out


def push_profiles(body: bytes) -> list[tuple[dict, bytes]]:
    """The (labels, pprof bytes) pairs of one Pyroscope push."""
    req = _C["PushRequest"]()
    req.ParseFromString(_unzip(body))
    return [({lp.name: lp.value for lp in ser.labels}, smp.raw_profile) for ser in req.series for smp in ser.samples]
