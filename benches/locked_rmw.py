#!/usr/bin/env python3
"""Locked read-modify-writes per operation, counted from a callgrind profile.

Counts the executions of every lock-prefixed instruction (and `xchg` with memory, which
locks without the prefix) in the measured part of a profile written with
`--dump-instr=yes`, found by `objdump -d` of each object the profile names (the bench
binary, libc). Run, from the repository root:

    cargo bench --bench instructions --no-run
    BIN=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
    valgrind --tool=callgrind --dump-instr=yes --toggle-collect='*callgrind_measured*' \
        --callgrind-out-file=/tmp/rc.out $BIN --workload pessimistic/reserve_commit_warm --ops 100000
    python3 benches/locked_rmw.py /tmp/rc.out 100000

What it gave (`reserve_commit_warm`, per reserve + commit): the pessimistic and monitor
stores 4 (a lock and an unlock of the SKU at each end; the hold lives in the SKU's slot),
`mutex_hashmap_holds` 4, the optimistic store 5 and the adaptive store 5.03 (at the
reserve, a compare-and-swap of the SKU's counts and one of its hold word; at the commit,
the hold's shard lock, the counts' compare-and-swap and the unlock; the adaptive store's
window ends add the rest). Its controls: the monitor store before its holds moved into the
slot gave 8, the optimistic store 6 with its holds in the registry.
"""
import re, subprocess, sys
profile, ops = sys.argv[1], int(sys.argv[2])
locked = {}
def locked_addrs(path):
    if path not in locked:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
        addrs = set()
        for line in out.splitlines():
            m = re.match(r"\s+([0-9a-f]+):\s+(lock |xchg\s)(.*)", line)
            if m and (m.group(2).startswith("lock") or "(" in m.group(3)):
                addrs.add(int(m.group(1), 16))
        locked[path] = addrs
    return locked[path]
obs = {}
ob = None; addr = 0; skip = False; total = 0
def pos(tok, cur):
    if tok == "*": return cur
    if tok.startswith("+"): return cur + int(tok[1:], 0)
    if tok.startswith("-"): return cur - int(tok[1:], 0)
    return int(tok, 0)
for line in open(profile):
    m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
    if m:
        if m.group(2): obs[m.group(1)] = m.group(2)
        if line.startswith("ob="): ob = obs[m.group(1)]
        continue
    if line.startswith("calls="):
        skip = True; continue
    if not line or not (line[0] in "+-*0123456789"):
        continue
    toks = line.split()
    addr = pos(toks[0], addr)
    if skip:
        skip = False; continue
    if len(toks) >= 3 and ob and addr in locked_addrs(ob):
        total += int(toks[2])
print(f"{profile}: {total/ops:.2f} locked read-modify-writes per op")
