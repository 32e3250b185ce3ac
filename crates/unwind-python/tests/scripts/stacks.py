# Known Python stacks for tests/live.rs (runs on CPython 3.6+).
#
# A worker thread sleeps in Worker.run.<locals>.inner, the main thread blocks in select()
# inside block_main; the script prints, as one JSON line, the id() (address) of every code
# object on those stacks, Python's own line for every instruction offset of each, and the
# thread idents. It exits when its stdin closes. Lines marked "# @name" are found by the test.
import dis
import json
import select
import sys
import threading
import time


class Worker:
    def run(self, ready):
        def inner(n):
            ready.set()
            while True:
                time.sleep(100 * n)  # @sleep

        inner(1)  # @call_inner


def block_main():
    select.select([sys.stdin], [], [], 3600)  # @select


def lines_of(code):
    """Python's own (byte offset, line) for every code unit of `code`."""
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


def describe(code, qualname):
    return {
        "id": id(code),
        "name": code.co_name,
        "qualname": getattr(code, "co_qualname", qualname),
        "filename": code.co_filename,
        "firstlineno": code.co_firstlineno,
        "lines": lines_of(code),
    }


def main(module_code):
    ready = threading.Event()
    worker = Worker()
    thread = threading.Thread(target=worker.run, args=(ready,))
    thread.daemon = True
    thread.start()
    ready.wait()
    run_code = Worker.run.__code__
    inner_code = [c for c in run_code.co_consts if hasattr(c, "co_name") and c.co_name == "inner"][0]
    info = {
        "version": list(sys.version_info[:3]),
        "main_ident": threading.get_ident(),
        "worker_ident": thread.ident,
        "worker_native_id": getattr(thread, "native_id", None),
        "main_native_id": getattr(threading, "get_native_id", lambda: None)(),
        "codes": {
            "inner": describe(inner_code, "Worker.run.<locals>.inner"),
            "run": describe(run_code, "Worker.run"),
            "block_main": describe(block_main.__code__, "block_main"),
            "main": describe(main.__code__, "main"),
            "module": describe(module_code, "<module>"),
        },
    }
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    block_main()  # @call_block


main(sys._getframe().f_code)  # @call_main
