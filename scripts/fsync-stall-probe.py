#!/usr/bin/env python3
# How a big file's fsync holds up a small log's fdatasync on this filesystem (the journal):
#   python3 scripts/fsync-stall-probe.py once|chunked   (run in the data dir's filesystem)
# "once" writes 150 MiB and syncs at the end; "chunked" syncs every 4 MiB, as the log store's
# compaction does. Prints the log's fdatasync latency meanwhile.
import os, time, threading, sys
chunked = sys.argv[1] == 'chunked'
stop = False
lat = []
def logger():
    fd = os.open('stall-probe-A', os.O_RDWR|os.O_CREAT|os.O_TRUNC)
    i = 0
    while not stop:
        t = time.perf_counter(); os.pwrite(fd, b'x'*2000, i*2000); os.fdatasync(fd); lat.append((time.perf_counter()-t)*1000); i += 1
    os.close(fd)
th = threading.Thread(target=logger); th.start()
time.sleep(0.3)
fd = os.open('stall-probe-B', os.O_RDWR|os.O_CREAT|os.O_TRUNC)
buf = b'y' * (1<<20)
t0 = time.perf_counter()
for i in range(150):
    os.write(fd, buf)
    if chunked and i % 4 == 3: os.fdatasync(fd)
os.fsync(fd)
total = time.perf_counter() - t0
time.sleep(0.3)
stop = True; th.join()
os.close(fd); os.unlink('stall-probe-A'); os.unlink('stall-probe-B')
lat.sort()
print(sys.argv[1], 'snapshot write %.0f ms' % (total*1000), 'log fdatasync: n', len(lat), 'p50 %.2f p99 %.2f max %.1f ms' % (lat[len(lat)//2], lat[int(len(lat)*0.99)], lat[-1]))
