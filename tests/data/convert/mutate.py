#!/usr/bin/python3
"""mutate.py CMD IN OUT [ARGS] -- derives broken or unusual checkpoints from a good one, for
tests/test_convert.sh. Python stdlib only.

  drop IN OUT NAME          the checkpoint without tensor NAME (safetensors or pytorch_model.bin;
                            in a .bin the key is renamed in data.pkl, same length)
  reshape IN OUT NAME D,D   safetensors: NAME's shape set to D,D (same element count)
  dtype IN OUT NAME DT      safetensors: NAME's dtype string set to DT (same element size)
  bf16 IN OUT               safetensors: every F32 tensor stored as BF16 (rounded to nearest even)
  special IN OUT NAME       safetensors: NAME filled with f16 edge cases (subnormals, ties,
                            overflow, inf, NaN, signed zeros)
  deflate IN OUT            pytorch_model.bin with every entry deflated
  zip64 IN OUT              pytorch_model.bin rewritten with zip64 records throughout (sizes and
                            offsets saturated in the classic fields, real values in zip64 extras,
                            zip64 end record and locator)
  cutpickle IN OUT          pytorch_model.bin whose data.pkl is cut in half
"""
import json
import struct
import sys
import zipfile
import zlib


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    hdr = json.loads(b[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    out = {}
    for k, v in hdr.items():
        s, e = v["data_offsets"]
        out[k] = [v["dtype"], v["shape"], b[8 + n + s:8 + n + e]]
    return meta, out


def write_st(path, meta, tensors):
    hdr, data, at = {}, b"", 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for k, (dt, shape, raw) in tensors.items():
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def to_bf16(raw):
    out = bytearray()
    for (u,) in struct.iter_unpack("<I", raw):
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        out += struct.pack("<H", u)
    return bytes(out)


SPECIAL = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e30, float("inf"),
           float("-inf"), float("nan"), 6.1035156e-05, 6.097555e-05, 5.9604645e-08, 2.9802322e-08,
           2.9802326e-08, 8.940697e-08, 1.4901161e-08, 1e-40, -1e-45, 1.00048828125,
           1.00146484375, 1.0004883, 0.33333334, 3.1415927, 2049.0, 2051.0, 4097.0, -3.0517578e-05]


def rezip(src, dst, method, pkl_edit=None):
    zin = zipfile.ZipFile(src)
    with zipfile.ZipFile(dst, "w", method) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if pkl_edit and info.filename.endswith("/data.pkl"):
                data = pkl_edit(data)
            zout.writestr(info.filename, data, compress_type=method)


def zip64(src, dst):
    zin = zipfile.ZipFile(src)
    out, central = bytearray(), bytearray()
    ff = 0xFFFFFFFF
    for info in zin.infolist():
        data = zin.read(info.filename)
        name = info.filename.encode()
        crc = zlib.crc32(data)
        off = len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, ff, ff, len(name), len(extra))
        out += name + extra + data
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, ff, ff,
                               len(name), len(cextra), 0, 0, 0, 0, ff)
        central += name + cextra
    cd_off, n = len(out), len(zin.infolist())
    out += central
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, ff, ff, 0)
    open(dst, "wb").write(out)


def main():
    cmd, src, dst = sys.argv[1:4]
    args = sys.argv[4:]
    if cmd == "drop" and src.endswith(".bin"):
        name = args[0].encode()
        rezip(src, dst, zipfile.ZIP_STORED, lambda d: d.replace(name, name[:-1] + b"_"))
    elif cmd in ("drop", "reshape", "dtype", "bf16", "special"):
        meta, t = read_st(src)
        if cmd == "drop":
            del t[args[0]]
        elif cmd == "reshape":
            t[args[0]][1] = [int(x) for x in args[1].split(",")]
        elif cmd == "dtype":
            t[args[0]][0] = args[1]
        elif cmd == "bf16":
            for v in t.values():
                if v[0] == "F32":
                    v[0], v[2] = "BF16", to_bf16(v[2])
        else:
            v = t[args[0]]
            n = len(v[2]) // 4
            vals = [SPECIAL[i % len(SPECIAL)] * (1 + (i // len(SPECIAL)) * 2.0 ** -20) for i in range(n)]
            v[2] = struct.pack("<%df" % n, *vals)
        write_st(dst, meta, t)
    elif cmd == "deflate":
        rezip(src, dst, zipfile.ZIP_DEFLATED)
    elif cmd == "zip64":
        zip64(src, dst)
    elif cmd == "cutpickle":
        rezip(src, dst, zipfile.ZIP_STORED, lambda d: d[:len(d) // 2])
    else:
        sys.exit(f"mutate.py: unknown command {cmd}")


main()
