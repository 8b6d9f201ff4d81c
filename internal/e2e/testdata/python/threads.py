# Two threading threads, each burning a function of its own.
import sys, threading, time


def fid_alpha(end):
    x = 0
    while time.time() < end:
        for i in range(10000):
            x = (x * 31 + i) % 1000003


def fid_beta(end):
    y = 1
    while time.time() < end:
        for i in range(10000):
            y = (y * 17 + i) % 999983


end = time.time() + float(sys.argv[1])
threads = [threading.Thread(target=fid_alpha, args=(end,)), threading.Thread(target=fid_beta, args=(end,))]
for t in threads:
    t.start()
for t in threads:
    t.join()
