# A Python function calling C: zlib.compress on a large buffer spends its
# time in libz, below the Python caller.
import os, sys, time, zlib

data = os.urandom(1 << 16) * 32


def fid_compress(d):
    return zlib.compress(d, 9)


end = time.time() + float(sys.argv[1])
while time.time() < end:
    fid_compress(data)
