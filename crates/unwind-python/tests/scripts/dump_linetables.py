# Regenerates tests/data/linetables-3.X.json: real line tables with CPython's own answers.
# Usage: python3.X dump_linetables.py > ../data/linetables-3.X.json
import dis
import json
import sys

SOURCE = '''
def sample(xs):
    total = 0
    for x in xs:
        if x > 1:
            total += x
        else:
            total -= (
                x
                * 2
            )
    while total > 100:
        total //= 2
    return total
'''

# A function whose lines jump by more than 127 and whose bytecode exceeds 255 bytes.
BIG = "def big(a):\n    b = a\n" + "\n" * 300 + "    c = b + 1\n" + "".join(
    "    c = c * %d + a\n" % i for i in range(120)) + "\n" * 200 + "    return c\n"

def lines_of(code):
    size = len(code.co_code)
    if hasattr(code, "co_lines"):
        out = {}
        for start, end, line in code.co_lines():
            for off in range(start, end, 2):
                out[off] = line
        return [[off, out.get(off)] for off in range(0, size, 2)]
    starts = list(dis.findlinestarts(code))
    result = []
    for off in range(0, size, 2):
        line = None
        for start, start_line in starts:
            if start <= off:
                line = start_line
        result.append([off, line])
    return result

def table(code):
    if sys.version_info >= (3, 10):
        return code.co_linetable
    return code.co_lnotab

out = []
for src, name in ((SOURCE, "sample"), (BIG, "big")):
    ns = {}
    exec(compile(src, "<fixture>", "exec"), ns)
    code = ns[name].__code__
    out.append({
        "function": name,
        "first_line": code.co_firstlineno,
        "table": table(code).hex(),
        "lines": lines_of(code),
    })
json.dump({"version": list(sys.version_info[:2]), "codes": out}, sys.stdout)
