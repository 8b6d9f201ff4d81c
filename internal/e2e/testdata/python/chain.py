# cgscope's Python tests look for this chain: fid_leaf, called by
# fid_middle, called by Outer.fid_outer. Their lines are checked: keep them.
import sys, time


def fid_leaf(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def fid_middle(n):
    return fid_leaf(n)


class Outer:
    def fid_outer(self, n):
        return fid_middle(n)


end = time.time() + float(sys.argv[1])
o = Outer()
while time.time() < end:
    o.fid_outer(20000)
