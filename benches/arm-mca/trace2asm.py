#!/usr/bin/env python3
"""Turns a qemu-aarch64 execution log (`-singlestep -d exec,nochain`, filtered to one
function with `-dfilter`) and the binary's disassembly (`objdump -d --no-show-raw-insn`)
into the instructions the function executed, in order, as assembly llvm-mca reads: each
executed instruction once per execution. Branch and address targets become one label
(llvm-mca does not follow branches; it counts them as instructions like any other).
qemu's own disassembler is not used: it does not know `sdot`.

    trace2asm.py LOG DISASSEMBLY > trace.s      # prints the instruction count on stderr
"""
import re
import sys

log, disassembly = sys.argv[1], sys.argv[2]
text = {}
insn = re.compile(r"^\s*([0-9a-f]+):\s+(\S.*)$")
for line in open(disassembly):
    m = insn.match(line)
    if m:
        text[int(m.group(1), 16)] = m.group(2).strip()

trace = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
TARGETED = ("b", "bl", "cbz", "cbnz", "tbz", "tbnz", "adr", "adrp")
print("target:")
count = 0
for line in open(log, errors="replace"):
    m = trace.match(line)
    if not m:
        continue
    pc = int(m.group(1), 16)
    t = text.get(pc)
    if t is None:
        sys.exit(f"trace2asm: no disassembly for pc {pc:#x}")
    t = re.sub(r"\s*//.*$", "", t)  # objdump's comments
    mnemonic = t.split()[0]
    if mnemonic in TARGETED or mnemonic.startswith("b."):
        t = re.sub(r"[0-9a-f]+ <[^>]*>$|#-?0x[0-9a-f]+$", "target", t)
    print("    " + t)
    count += 1
print(f"{count} instructions", file=sys.stderr)
