"""Checks the compiled inner loops of an instruction-set variant: the multiply-adds one register tile
needs, and no accumulator spilled to the stack.

    python check_inner_loops.py <isa> <object file of isa_kernels.cpp>

For the forward/input-gradient kernel (view_rows, whose register tile is view_tile) and the
weight-gradient kernel (sdd_rows, through tile_accumulate) at block sizes 16, 32, 64 and 128, it
disassembles the object, finds the innermost loop holding vector multiply-adds, and checks that the
loop holds exactly MR x NV of them (the tile of kernels.h's Tile<B>) and no vector load or store
addressed off the stack; and that the fp32 packing copies no block row with a copy of run-time length
(rep movs or a call of memcpy).  Prints one line per kernel.
"""

import re
import subprocess
import sys

ISAS = {"avx512": (16, 32, True), "avx2": (8, 16, True), "baseline": (4, 16, False)}  # lanes, registers, FMA


def tile(isa: str, b: int) -> tuple[int, int]:
    """(MR, NV) of kernels.h's Tile<B> for this instruction set."""
    max_lanes, registers, fma = ISAS[isa]
    lanes = b if b < max_lanes else (b // 2 if registers >= 32 and b == max_lanes and b >= 16 else max_lanes)
    nv = min(b // lanes, 4 if registers >= 32 else 2)
    if registers >= 32:
        return {1: 16, 2: 12, 4: 6}[nv], nv
    return ({1: 12, 2: 6} if fma else {1: 8, 2: 4})[nv], nv


def functions(obj: str) -> dict[str, list[tuple[int, str]]]:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", obj], capture_output=True, text=True,
                         check=True).stdout
    funcs, name = {}, None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            name = head.group(1)
            funcs[name] = []
            continue
        ins = re.match(r"^\s*([0-9a-f]+):\s*(.*)$", line)
        if ins and name:
            funcs[name].append((int(ins.group(1), 16), ins.group(2)))
    return funcs


def loops(body: list[tuple[int, str]]):
    """(start, end) address ranges of the loops: a jump back to an earlier address."""
    for address, text in body:
        jump = re.match(r"^j\w+\s+([0-9a-f]+)\b", text)
        if jump and int(jump.group(1), 16) <= address:
            yield int(jump.group(1), 16), address


def multiply_loops(bodies, multiply: str):
    """(count of multiplies, stack accesses) of each innermost loop that multiplies (the register tiles)."""
    found = []
    for body in bodies:
        # %rbp addresses the stack only where the function made it its frame pointer.
        frame = r"%rsp|%rbp" if any(re.match(r"mov\s+%rsp,%rbp", t) for _, t in body) else r"%rsp"
        spans = [(start, end) for start, end in loops(body)
                 if any(start <= a <= end and t.startswith(multiply) for a, t in body)]
        for start, end in spans:
            if any(s != start or e != end for s, e in spans if start <= s and e <= end):
                continue  # holds another multiplying loop: not innermost
            inside = [text for address, text in body if start <= address <= end]
            spills = [t for t in inside if re.search(rf"\(({frame})", t) and re.search(r"%[xyz]mm", t)]
            found.append((sum(t.startswith(multiply) for t in inside), spills))
    return found


def main(isa: str, obj: str) -> int:
    funcs = functions(obj)
    multiply = "vfmadd" if ISAS[isa][2] else "mulps"
    failures = 0
    for b in (16, 32, 64, 128):
        mr, nv = tile(isa, b)
        for kernel, pattern, rows in (("view_rows", rf"::(view_rows<float, {b}>\(|view_tile<float, {b}, {mr}>)", mr),
                                      ("sdd_rows", rf"::(sdd_rows<float, {b}>|accumulate_rows<{b}, |micro_kernel<{b}, {b}>)",
                                       mr)):
            bodies = [body for name, body in funcs.items() if re.search(pattern, name)]
            found = multiply_loops(bodies, multiply)
            expected = rows * nv
            if not found:
                print(f"FAIL {isa} {kernel} b={b}: no loop of {multiply} found")
                failures += 1
                continue
            count = max(c for c, _ in found)  # the full tile; smaller ones are the remainder rows
            spills = [t for _, sp in found for t in sp]
            ok = count == expected and not spills
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {isa} {kernel:13s} b={b:<3d}: tile {rows}x{nv} vectors, inner loop "
                  f"{count} {multiply} (expected {expected}), {len(spills)} vector stack accesses in its loops"
                  + (f": {spills[:3]}" if spills else ""))
    # The packing copies a block row at a time: a copy of run-time length there (rep movs, or a call of
    # memcpy) costs more to start than the copy itself (widen in kernels.h).
    for name, body in funcs.items():
        if re.search(r"::(pack_block_columns<float>|view_rows<float, \d+>|sdd_rows<float, \d+>)\(", name):
            copies = [t for _, t in body if re.match(r"rep movs|call\s.*<(memcpy|memmove)", t)]
            if copies:
                print(f"FAIL {isa} {name.split('(')[0]}: copies of run-time length {copies[:3]}")
                failures += 1
    print(f"{isa}: checked the packing for copies of run-time length")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
