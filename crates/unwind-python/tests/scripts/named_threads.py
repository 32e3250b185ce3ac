"""Ten named threading.Threads (worker-0 .. worker-9: one whose __dict__ was asked for, one
of a class with many attributes), one thread started with _thread (no
threading.Thread), and the main thread, all parked until stdin closes. Prints one JSON line:
{"names": {"<native id>": "<name>", ...}, "bare": <native id of the _thread one or null>}."""
import _thread
import json
import sys
import threading

ready = threading.Barrier(12)
done = threading.Event()
ids = {}


def native_id():
    """The OS thread ID: threading.get_native_id() (3.8+), else gettid (x86-64 syscall 186)."""
    if hasattr(threading, "get_native_id"):
        return threading.get_native_id()
    import ctypes

    return ctypes.CDLL(None).syscall(186)


def park():
    ids[threading.current_thread().name] = native_id()
    ready.wait()
    done.wait()


bare = {}


def bare_thread():
    bare["id"] = native_id()
    ready.wait()
    done.wait()


class Wide(threading.Thread):
    """Forty attributes set before Thread's own: more than a class's shared keys hold, so its
    instances have a plain (combined) dict."""

    def __init__(self, **kw):
        for i in range(40):
            setattr(self, "extra_%d" % i, i)
        threading.Thread.__init__(self, **kw)


threads = [threading.Thread(target=park, name="worker-%d" % i) for i in range(9)]
threads.append(Wide(target=park, name="worker-9"))
# worker-0's attributes as a dict object (3.11+: the managed dict made real).
vars(threads[0])["touched"] = True
for t in threads:
    t.start()
_thread.start_new_thread(bare_thread, ())
ids["MainThread"] = native_id()
ready.wait()
names = {str(tid): name for name, tid in ids.items()}
print(json.dumps({"names": names, "bare": bare.get("id")}), flush=True)
sys.stdin.read()
done.set()
