"""OpenVINO's CPU plugin leaves the thread with an unmapped signal stack when two Cores die in creation order.

Run: ``python docs/repro/openvino_altstack.py [lifo]``. Each ``ov.Core`` that loads the CPU plugin maps a
new alternate signal stack for the calling thread and keeps the previous one; when the plugin goes, it puts
the previous one back (only if its own is still current) and unmaps its own. With cores A then B, dropping
A first unmaps A's stack, which B still holds as "previous"; dropping B then installs that unmapped stack.
Every Python signal handler runs on the alternate stack (SA_ONSTACK), so the next handled signal on this
thread (SIGTERM here; also SIGINT, or SIGCHLD once a handler is set) kills the process with SIGSEGV
(exit 139). With ``lifo`` (B dropped first) it survives and prints "handled".
"""

import os
import signal
import sys

import numpy as np
import openvino as ov
import openvino.opset13 as ops


def compiled_on_own_core() -> ov.CompiledModel:
    """A one-op model compiled for CPU on a fresh Core (the compiled model keeps the plugin alive)."""
    x = ops.parameter([1, 4], np.float32)
    return ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")


def main() -> None:
    a, b = compiled_on_own_core(), compiled_on_own_core()
    if sys.argv[1:] == ["lifo"]:
        del b, a
    else:
        del a, b  # the order a garbage collector, a test suite or an app's cache may well use
    signal.signal(signal.SIGTERM, lambda signum, frame: print("handled", flush=True))
    os.kill(os.getpid(), signal.SIGTERM)
    print("survived")


if __name__ == "__main__":
    main()
